"""`compare(OLD, NEW)`: stored results against stored results. A results file against a results
file, or a baseline profile against a results file: per configuration and metric the ratio
NEW/OLD with an interval over run medians (or, with one run per side, a bootstrap over rounds
that ignores run-to-run noise, said so in the report), decided by quantperf.gate.ab."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..fidelity import changes_text
from ..gate.ab import compare_verdict, equality_status, look_confidence
from ..gate.runtime import check_runtime
from ..status import Status
from .upgrade import DEFAULT_ALPHA, REPORT_SCHEMA, identity_core


@dataclass
class StoredConfig:
    key: str
    mode: str
    identity: dict
    packages: dict
    metrics: dict  # name -> {"runs": [medians], "samples": [last run], "higher_is_better", "kind", "unit"}
    runtime: dict = field(default_factory=dict)  # what really ran (quantperf.fidelity); {} in older files


def _mode_of(key: str, spec: dict | None) -> str:
    from ..spec import MODES

    if spec and spec.get("mode") in MODES:
        return spec["mode"]
    return next((m for m in MODES if key.endswith("-" + m)), "eager")


def load_stored(arg: str, baselines_dir: str | Path = "baselines") -> tuple[str, dict[str, StoredConfig]]:
    """A results file (JSON lines) or a baseline profile (a baselines/<profile>.json path or a bare
    profile name under `baselines_dir`): (label, {config key: StoredConfig})."""
    from ..baselines import BaselineStore
    from ..results import ResultLog

    path = Path(arg)
    if not path.is_file():
        candidate = Path(baselines_dir) / f"{arg}.json"
        if candidate.is_file():
            path = candidate
        else:
            raise ConfigError(f"{arg}: no such results file, and no baseline profile {candidate}")
    head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    is_baseline = False
    if path.suffix == ".json" and head == "{":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            is_baseline = isinstance(data, dict) and "configs" in data and "profile" in data
        except ValueError:
            is_baseline = False
    out: dict[str, StoredConfig] = {}
    if is_baseline:
        store = BaselineStore(path.parent, path.stem)
        for key, e in store.data["configs"].items():
            metrics = {}
            for name, m in e.get("metrics", {}).items():
                runs = [r["value"] for r in m.get("runs", [])] or [m["median"]]
                metrics[name] = {"runs": runs, "samples": list(m.get("samples", [])),
                                 "higher_is_better": m.get("higher_is_better", True), "kind": m.get("kind", "speed"),
                                 "unit": m.get("unit", "")}
            out[key] = StoredConfig(key, _mode_of(key, e.get("spec")), e.get("backend_identity") or {},
                                    dict(e.get("packages") or {}), metrics, dict(e.get("runtime") or {}))
        return f"baseline {store.profile} ({path})", out
    results = ResultLog(path).read()
    if not results:
        raise ConfigError(f"{path}: holds no results (nothing to compare)")
    for r in results:
        if not r.ok:
            continue
        key = ("quality-" if r.quality else "") + r.spec.id
        cfg = out.get(key)
        if cfg is None:
            cfg = out[key] = StoredConfig(key, r.spec.mode, r.backend_identity, {}, {})
        cfg.identity = r.backend_identity
        cfg.runtime = dict(r.runtime or {})
        cfg.packages = {k: v for k, v in (r.environment or {}).get("packages", {}).items() if v}
        for name, m in r.metrics.items():
            slot = cfg.metrics.setdefault(name, {"runs": [], "samples": [], "higher_is_better": m.higher_is_better,
                                                 "kind": m.kind, "unit": m.unit})
            slot["runs"].append(m.value)
            slot["samples"] = list(m.samples)
    return f"results {path}", out


def ratio_interval(old_runs: Sequence[float], new_runs: Sequence[float], old_samples: Sequence[float],
                   new_samples: Sequence[float], confidence: float = 0.95) -> dict:
    """NEW/OLD with an interval. Run medians are the unit: both sides >= 2 runs: Welch t on the
    log run medians; one side a single run: t with the other side's run-to-run sd (df n-1); one
    run per side: a percentile bootstrap over rounds (stats.ratio_of_medians), which ignores
    run-to-run noise (noted); single figures: the plain ratio."""
    from scipy.stats import t

    from ..stats import ratio_of_medians

    old_runs, new_runs = [float(x) for x in old_runs], [float(x) for x in new_runs]
    if not old_runs or not new_runs or min(old_runs + new_runs) <= 0:
        raise ValueError("ratio_interval needs positive run medians on both sides")
    lo_, ln_ = [math.log(x) for x in old_runs], [math.log(x) for x in new_runs]
    no, nn = len(lo_), len(ln_)
    diff = statistics.fmean(ln_) - statistics.fmean(lo_)
    if no >= 2 or nn >= 2:
        vo = statistics.variance(lo_) if no >= 2 else None
        vn = statistics.variance(ln_) if nn >= 2 else None
        if vo is not None and vn is not None:
            se2 = vo / no + vn / nn
            denom = (vo / no) ** 2 / (no - 1) + (vn / nn) ** 2 / (nn - 1)
            df = se2 ** 2 / denom if denom > 0 else no + nn - 2
            method = f"Welch t over run medians ({no} old, {nn} new runs)"
        else:
            v, n_multi = (vo, no) if vo is not None else (vn, nn)
            se2 = v * (1 / no + 1 / nn)
            df = n_multi - 1
            method = f"t over run medians ({no} old, {nn} new runs; run-to-run sd from the side with {n_multi})"
        half = float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2) if se2 > 0 else 0.0
        return {"ratio": math.exp(diff), "low": math.exp(diff - half), "high": math.exp(diff + half),
                "method": method, "note": ""}
    if len(old_samples) >= 2 and len(new_samples) >= 2:
        est = ratio_of_medians(old_samples, new_samples, confidence=confidence)
        return {"ratio": est.ratio, "low": est.low, "high": est.high, "method": "bootstrap over rounds",
                "note": "one run per side: the interval covers round-to-round noise only, not run-to-run "
                        "noise (sessions can differ 5-45%)"}
    r = new_runs[0] / old_runs[0]
    return {"ratio": r, "low": r, "high": r, "method": "single figures", "note": ""}


def compare(old: str, new: str, *, baselines_dir: str | Path = "baselines", tolerances: list[dict] | None = None,
            alpha: float = DEFAULT_ALPHA) -> dict:
    """Stored OLD against stored NEW: per configuration and metric NEW/OLD, interval, verdict."""
    from ..gate import DEFAULT_TOLERANCES, resolve_tolerance

    look_confidence(alpha, 1)
    old_label, olds = load_stored(old, baselines_dir)
    new_label, news = load_stored(new, baselines_dir)
    layers = [DEFAULT_TOLERANCES] + list(tolerances or [])
    rows, notes, versions, runtime = [], [], {}, {}
    common = [k for k in news if k in olds]
    if not common:
        raise ConfigError(f"{old} and {new} have no configuration in common (old: "
                          f"{', '.join(list(olds)[:5]) or 'none'}; "
                          f"new: {', '.join(list(news)[:5]) or 'none'})")
    for key in common:
        o, n = olds[key], news[key]
        for name in sorted(set(o.packages) | set(n.packages)):
            if o.packages.get(name) != n.packages.get(name):
                versions[name] = [o.packages.get(name), n.packages.get(name)]
        if identity_core(o.identity) != identity_core(n.identity):
            rows.append({"config": key, "metric": "-", "status": Status.INCOMPARABLE,
                         "note": f"backend identity differs: {o.identity} vs {n.identity}"})
            continue
        if o.runtime or n.runtime:
            runtime[key] = {"old": o.runtime, "new": n.runtime}
        checked = check_runtime(o.runtime or None, n.runtime)
        notes += [f"{key}: {note}" for note in checked.notes]
        if checked.status is not None:  # other code ran on one side: not the same configuration
            rows.append({"config": key, "metric": "-", "status": checked.status,
                         "note": "runtime settings differ: " + changes_text(checked.settings)})
            continue
        for metric in sorted(set(o.metrics) & set(n.metrics)):
            mo, mn = o.metrics[metric], n.metrics[metric]
            tol = resolve_tolerance(layers, mo["kind"], o.mode)
            row = {"config": key, "metric": metric, "unit": mo["unit"], "old": statistics.median(mo["runs"]),
                   "new": statistics.median(mn["runs"]), "runs_old": len(mo["runs"]), "runs_new": len(mn["runs"]),
                   "tolerance": tol}
            if min(mo["runs"] + mn["runs"]) <= 0:
                same = mo["runs"] == mn["runs"]
                rows.append(row | {"status": equality_status(same), "ratio": None, "low": None, "high": None,
                                   "note": "a zero figure: compared for equality"})
                continue
            est = ratio_interval(mo["runs"], mn["runs"], mo["samples"], mn["samples"], 1 - alpha)
            row |= est | {"status": compare_verdict(est["low"], est["high"], mo["higher_is_better"], tol)}
            if est["note"]:
                notes.append(est["note"])
            rows.append(row)
    return {"kind": "compare", "schema": REPORT_SCHEMA, "old": old_label, "new": new_label, "alpha": alpha,
            "rows": rows, "versions": versions, "notes": list(dict.fromkeys(notes)), "runtime": runtime,
            "only_old": [k for k in olds if k not in news], "only_new": [k for k in news if k not in olds],
            "regressions": [f"{r['config']} {r['metric']}" for r in rows if r["status"] == Status.REGRESSED]}


def compare_exit_code(result: dict) -> int:
    """1: a metric regressed; 2: nothing could be compared (every configuration incomparable); else 0."""
    if result["regressions"]:
        return 1
    if not any(r["status"] != Status.INCOMPARABLE for r in result["rows"]):
        return 2
    return 0
