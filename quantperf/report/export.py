"""Results in other tools' formats: github-action-benchmark's custom JSON and Bencher's BMF.

- github-action-benchmark (`tool: customBiggerIsBetter` / `customSmallerIsBetter`): a JSON list of
  {name, unit, value, range, extra}; `range` and `extra` are free text shown in the chart's tooltip.
  The tool takes one direction per file, so the export is two lists: metrics where bigger is better
  (tokens/s, top-1 agreement) and where smaller is better (ms, MiB, us, KL divergence).
- Bencher Metric Format: {benchmark name: {measure slug: {value, lower_value, upper_value}}}.

From a results.jsonl each figure is a configuration's median over its rounds, with the 95%
order-statistics interval of that median. From a summary.json each figure is the gated current
value with the gate's interval turned into the current level's units (the interval of the ratio
times the session-adjusted baseline).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..results import METRICS


@dataclass(frozen=True)
class Figure:
    """One exported number: a configuration's metric, its interval and direction."""

    benchmark: str  # "<profile>/<config id>" (or the config id when no profile is known)
    metric: str
    unit: str
    value: float
    lower: float | None
    upper: float | None
    higher_is_better: bool
    extra: str = ""


def measure_slug(metric: str) -> str:
    """A Bencher measure slug: kebab case, at most 64 characters (decode_tokens_per_s -> decode-tokens-per-s)."""
    return re.sub(r"[^a-z0-9]+", "-", metric.lower()).strip("-")[:64]


def figures_from_results(results: list[dict]) -> list[Figure]:
    from ..history.store import config_key, median_interval

    latest = {}
    for d in results:  # a confirmation re-run replaces the first, as the gate reads it
        if d.get("status") == "ok":
            latest[(d.get("profile"), config_key(d))] = d
    out = []
    for (profile, key), d in latest.items():
        run = (d.get("environment") or {}).get("run") or {}
        for name, m in sorted((d.get("metrics") or {}).items()):
            s = m.get("summary") or {}
            lo, hi = median_interval(m["samples"])
            extra = (f"rounds: {s.get('n', len(m['samples']))}\ncv: {100 * s.get('cv', 0):.2f}%\n"
                     f"run: {run.get('run_id')} host: {run.get('host')} at {run.get('started_at')}")
            out.append(Figure(f"{profile}/{key}" if profile else key, name, m.get("unit", ""), float(s["median"]),
                              float(lo), float(hi), bool(m.get("higher_is_better", True)), extra))
    return out


def figures_from_summary(summary: dict) -> list[Figure]:
    from ..history.store import summary_configs

    profiles = sorted(set((summary.get("profiles") or {}).values()))
    prefix = f"{profiles[0]}/" if len(profiles) == 1 else ""
    out = []
    for c in summary_configs(summary):
        key = c["config_id"]
        for v in c.get("verdicts", []):
            fact = METRICS.get(v["metric"])
            if fact is None:
                continue
            lo = hi = None
            if v.get("ci") and v.get("ratio") and all(x is not None and x == x for x in v["ci"]):
                lo, hi = (float(x) * v["current"] / v["ratio"] for x in v["ci"])
            extra = f"gate: {v['status']}" + (f"\nratio: {v['ratio']:.4f}" if v.get("ratio") else "") + \
                (f"\nnoise floor: {100 * v['noise_floor']:.1f}%" if v.get("noise_floor") else "")
            out.append(Figure(prefix + key, v["metric"], fact[0], float(v["current"]), lo, hi, fact[1], extra))
    return out


def load_figures(path: str | Path) -> list[Figure]:
    """The figures of a results.jsonl (one result per line) or a summary.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (give a results.jsonl or a summary.json)")
    if path.suffix == ".jsonl":
        from ..results import ResultLog

        return figures_from_results([r.to_dict() for r in ResultLog(path).read()])
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not JSON ({exc}); give a results.jsonl or a summary.json") from None
    if not (isinstance(doc, dict) and "configs" in doc and "profiles" in doc):
        raise ConfigError(f"{path}: not a session summary (fields 'profiles', 'configs'); give a results.jsonl or "
                          "a summary.json")
    try:
        return figures_from_summary(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: a session summary this quantperf cannot export ({type(exc).__name__}: {exc})"
                          ) from None


def to_github_action_benchmark(figures: list[Figure], bigger_is_better: bool) -> list[dict]:
    """github-action-benchmark's custom JSON of the figures of one direction
    (customBiggerIsBetter when `bigger_is_better`, else customSmallerIsBetter)."""
    out = []
    for f in figures:
        if f.higher_is_better != bigger_is_better:
            continue
        entry = {"name": f"{f.benchmark} {f.metric}", "unit": f.unit, "value": f.value}
        if f.lower is not None and f.upper is not None:
            entry["range"] = f"95% CI {f.lower:.6g} to {f.upper:.6g}"
        if f.extra:
            entry["extra"] = f.extra
        out.append(entry)
    return out


def to_bencher(figures: list[Figure]) -> dict:
    """Bencher Metric Format: {benchmark: {measure slug: {value, lower_value, upper_value}}}."""
    out: dict[str, dict] = {}
    for f in figures:
        metric = {"value": f.value}
        if f.lower is not None and f.upper is not None:
            metric |= {"lower_value": f.lower, "upper_value": f.upper}
        out.setdefault(f.benchmark, {})[measure_slug(f.metric)] = metric
    return out
