"""Reports people open: one self-contained HTML file (plots embedded as PNG data URIs, nothing
fetched at view time) and a markdown report, from stored results files (results.jsonl), session
summaries (summary.json), the baselines' recorded takeaway verdicts and upgrade-check reports.

`quantperf report RUN...` renders one or more runs; `quantperf merge RUN...` is the same report
over runs of several profiles, led by the cross-hardware matrix (configuration x profile) and the
takeaway matrix (claim x profile). Plots need matplotlib (the `[report]` extra); without it the
HTML keeps every table and says how to get the plots."""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..results import RunResult, atomic_write_text
from ..status import Status, from_word
from ..summary import SessionSummary
from .plots import _plt, plot_kernel, plot_memory, plot_quality, plot_speed, plot_tradeoff, plot_upgrade
from .table import fmt as _fmt
from .table import markdown_table as _md_table

VERDICT_COLOURS = {Status.HOLDS: "#c8e6c9", Status.FLIPPED: "#ffcdd2", Status.INCONCLUSIVE: "#ffe0b2",
                   "not measured": "#eeeeee"}
SECTIONS = ("Summary", "Cross-hardware matrix", "Decode speed", "Kernel time", "Memory", "Speed against memory",
            "Quality against bits", "Takeaways", "Upgrade check", "Noise")


@dataclass
class ReportData:
    results: list[RunResult] = field(default_factory=list)
    summaries: list[SessionSummary] = field(default_factory=list)
    summary_sources: list[str] = field(default_factory=list)  # the file of each summary, in order
    takeaways: dict[str, dict] = field(default_factory=dict)  # profile -> claim id -> recorded verdict entry
    upgrades: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    history: list = field(default_factory=list)  # history.store.Sitting: the trend charts' sittings
    history_skipped: list[str] = field(default_factory=list)  # store files that could not be read

    @property
    def profiles(self) -> list[str]:
        seen = [r.profile for r in self.results if r.profile]
        if not seen:  # a summary names every device of its machine; with results, only those measured
            seen += [p for s in self.summaries for p in s.profiles.values()]
        seen += list(self.takeaways)
        return list(dict.fromkeys(p for p in seen if p))


def _shown(path: Path) -> str:
    """How a source file is named in a report: relative to the working directory when it lies
    below it, else its folder and name (a report names the run, not the machine it was made on)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(path.resolve().parent.name) / path.name)


def load(paths: list[str | Path], baselines: str | Path | None = None) -> ReportData:
    """Read results files (.jsonl), summaries and upgrade-check reports (.json, told apart by
    their fields) and, from `baselines`, each profile's recorded takeaway verdicts."""
    data = ReportData()
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file (give results.jsonl, summary.json or an upgrade-check JSON)")
        text = path.read_text(encoding="utf-8")
        data.sources.append(_shown(path))
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    data.results.append(RunResult.from_dict(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ConfigError(f"{path}:{n}: not a quantperf result ({type(exc).__name__}: {exc}); "
                                      "give a results.jsonl written by quantperf") from None
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON ({exc})") from None
        if isinstance(doc, dict) and "configs" in doc and "profiles" in doc:
            try:
                data.summaries.append(SessionSummary.from_dict(doc))
                data.summary_sources.append(_shown(path))
            except (TypeError, KeyError, ValueError) as exc:
                raise ConfigError(f"{path}: a session summary this quantperf cannot read (schema "
                                  f"{doc.get('schema', 1)}, {type(exc).__name__}: {exc}); give its results.jsonl "
                                  "instead") from None
        elif isinstance(doc, dict) and doc.get("kind") in ("upgrade", "aa", "compare", "against"):
            data.upgrades.append({"kind": doc["kind"], "rows": upgrade_rows(doc), "profile": doc.get("profile"),
                                  "versions": _upgrade_versions(doc), "source": _shown(path)})
        else:
            raise ConfigError(f"{path}: neither a session summary (fields 'profiles', 'configs') nor an "
                              "upgrade-check report")
    if baselines is not None:
        for f in sorted(Path(baselines).glob("*.json")):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{f}: not JSON ({exc})") from None
            if isinstance(doc, dict) and doc.get("takeaways"):
                data.takeaways[doc.get("profile") or f.stem] = doc["takeaways"]
    return data


def _upgrade_versions(doc: dict) -> str:
    """What changed between the two sides: 'bitsandbytes 0.49.2 -> 0.50.2' (an upgrade check,
    from its overlay), the library versions that differ (compare), or 'A/A'."""
    if doc["kind"] == "aa":
        return "A/A calibration (the same environment on both sides)"
    if doc["kind"] == "against":  # pytest --qp-against: A is the SPEC, B the environment that ran
        return (doc.get("describe") or "").split("\n")[0]
    if doc["kind"] == "compare":
        versions = (doc.get("versions") or {}).items()
        return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in versions) or "no library version differs"
    overlay = doc.get("overlay") or {}
    a, b = overlay.get("versions_a") or {}, overlay.get("versions_b") or {}
    return (", ".join(f"{k} {a.get(k, 'absent')} -> {v}" for k, v in b.items() if a.get(k) != v)
            or (doc.get("describe") or "").split("\n")[0])


def upgrade_rows(doc: dict) -> list[dict]:
    """Rows of an upgrade-check report (configurations: time ratio new/old) or of a `compare`
    report (metrics: new/old), as {config, mode, metric, ratio, ci, decision, tolerance}."""
    rows = []
    if doc["kind"] == "compare":
        for r in doc.get("rows", []):
            rows.append({"config": r.get("config"), "mode": "-", "metric": r.get("metric"), "ratio": r.get("ratio"),
                         "ci": [r["low"], r["high"]] if r.get("low") is not None else None,
                         "decision": from_word(r.get("status")), "tolerance": r.get("tolerance")})
        return rows
    for c in doc.get("configs", []):
        rows.append({"config": c.get("config_id"), "mode": (c.get("spec") or {}).get("mode", "-"),
                     "metric": "time per token" if (c.get("spec") or {}).get("mode") != "kernel" else "us per layer",
                     "ratio": c.get("ratio"), "ci": [c["low"], c["high"]] if c.get("low") is not None else None,
                     "decision": from_word(c.get("verdict") or c.get("status")), "tolerance": c.get("tolerance")})
    return rows


# -- figures (pure: lists of rows the tables and plots share) --------------------------------

def _q(samples: list[float], q: float) -> float:
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _model(spec) -> str:
    """A configuration's model label in report rows; a batch other than 1 is part of it
    (`llama-8b bs8`): other work, another row."""
    batch = spec.workload.batch_size
    return spec.model_label + (f" bs{batch}" if batch != 1 else "")


def _backend(result: RunResult) -> str:
    """A result's backend label in report rows. ONNX Runtime's kernel figures name how they were
    measured, from their identity: on CUDA the timing (wall, host-bound on a fast GPU, or
    gpu-queued; wall before it was named), and the per-layer weight walk where there was one.
    Differently measured figures are other rows, never one row's runs (a result without figures,
    an unavailable one, says nothing of how it would have been measured)."""
    spec = result.spec
    if spec.mode != "kernel" or not spec.backend.startswith("ort-") or not result.ok:
        return spec.backend
    ident = result.backend_identity or {}
    how = ([ident.get("kernel_timing",
                      "wall")] if spec.device == "cuda" else []) + (["walk"] if ident.get("kernel_walk") else [])
    return f"{spec.backend} ({', '.join(how)})" if how else spec.backend


def _by_config(results: list[RunResult], ok) -> dict[tuple, list[RunResult]]:
    """The results `ok` accepts, grouped by (profile, model, backend, mode): several runs of one
    configuration (a merge, a recording session) become one row, not one row per run. A batch
    other than 1 is part of the model's label (`llama-8b bs8`): other work, another row."""
    out: dict[tuple, list[RunResult]] = {}
    for r in results:
        if ok(r):
            out.setdefault((r.profile or "?", _model(r.spec), _backend(r), r.spec.mode), []).append(r)
    return out


def speed_rows(results: list[RunResult]) -> list[dict]:
    """Decode tok/s per (profile, model, backend, mode). One run: its median and the IQR of its
    rounds. Several runs: the median of the run medians and their range (the run is the unit)."""
    rows = []
    ok = lambda r: r.ok and "decode_tokens_per_s" in r.metrics and not r.injected_delay_ms  # noqa: E731
    for (profile, model, backend, mode), runs in _by_config(results, ok).items():
        meds = [r.metrics["decode_tokens_per_s"].value for r in runs]
        prefill = [r.metrics["prefill_ms"].value for r in runs if "prefill_ms" in r.metrics]
        if len(runs) == 1:
            m = runs[0].metrics["decode_tokens_per_s"]
            lo, hi, cv = _q(m.samples, 0.25), _q(m.samples, 0.75), m.summary.cv
        else:
            lo, hi = min(meds), max(meds)
            cv = statistics.stdev(meds) / statistics.mean(meds)
        rows.append({"profile": profile, "model": model, "backend": backend, "mode": mode, "runs": len(runs),
                     "median": statistics.median(meds), "q1": lo, "q3": hi, "cv": cv,
                     "prefill_ms": statistics.median(prefill) if prefill else None})
    return rows


def kernel_rows(results: list[RunResult]) -> list[dict]:
    """Kernel-mode time per layer per configuration; several runs: the run nearest the median of
    the run medians stands for them (its per-module bandwidth), the CV is between runs."""
    rows = []
    ok = lambda r: r.ok and "kernel_decode_us_per_layer" in r.metrics  # noqa: E731
    for (profile, model, backend, _mode), runs in _by_config(results, ok).items():
        meds = [r.metrics["kernel_decode_us_per_layer"].value for r in runs]
        mid = statistics.median(meds)
        r = min(runs, key=lambda x: abs(x.metrics["kernel_decode_us_per_layer"].value - mid))
        fig = (r.figures or {}).get("kernel") or {}
        types = fig.get("types") or {}
        pct = {k.split(":", 1)[1]: v.get("pct_copy") for k, v in types.items() if k.startswith("decode:")}
        cv = (statistics.stdev(meds) / statistics.mean(meds) if len(runs) > 1
              else r.metrics["kernel_decode_us_per_layer"].summary.cv)
        rows.append({"profile": profile, "model": model, "backend": backend, "runs": len(runs),
                     "decode_us": mid, "decode_cv": cv,
                     "prefill_us": statistics.median(x.metrics["kernel_prefill_us_per_layer"].value for x in runs),
                     "methods": sorted({_kernel_method(r, t.get("method", "?")) for t in types.values()}),
                     "pct_copy": pct})
    return rows


def _kernel_method(result: RunResult, method: str) -> str:
    """A kernel row's method. ONNX Runtime's CUDA figures name their timing (wall: host-bound on a
    fast GPU; gpu-queued); results from before the timing was named were all wall-timed."""
    if result.spec.device == "cuda" and result.spec.backend.startswith("ort-") and ", " not in method:
        return f"{method}, wall"
    return method


def memory_rows(results: list[RunResult]) -> list[dict]:
    rows, seen = [], set()
    for r in results:
        if not r.ok or "weight_mib" not in r.metrics or r.spec.model_label == "fixture":
            continue
        key = (r.profile, _model(r.spec), r.spec.backend, r.spec.mode)
        if key in seen:
            continue
        seen.add(key)
        get = lambda k: r.metrics[k].value if k in r.metrics else None  # noqa: E731
        rows.append({"profile": r.profile or "?", "model": _model(r.spec), "backend": r.spec.backend,
                     "mode": r.spec.mode,
                     "weight_mib": get("weight_mib"), "peak_mib": get("peak_allocated_mib") or get("host_peak_rss_mib"),
                     "peak_kind": "allocator peak" if "peak_allocated_mib" in r.metrics else "host RSS peak",
                     "nvml_mib": get("nvml_process_mib")})
    return rows


def quality_rows(results: list[RunResult]) -> list[dict]:
    from ..backends import BACKENDS

    def med(runs: list[RunResult], name: str) -> float | None:
        vals = [r.metrics[name].value for r in runs if name in r.metrics]
        return statistics.median(vals) if vals else None

    rows = []
    for (profile, _model, backend, _mode), runs in _by_config(results,
                                                              lambda r: r.ok and "mean_kld" in r.metrics).items():
        bits = BACKENDS[backend].bits if backend in BACKENDS else None
        rows.append({"profile": profile, "backend": backend, "bits": bits, "runs": len(runs),
                     "mean_kld": med(runs, "mean_kld"), "top1": med(runs, "top1_agreement"), "ppl": med(runs, "ppl"),
                     "reference": (runs[-1].quality or {}).get("reference_backend")})
    return rows


def takeaway_matrix(data: ReportData) -> tuple[list[str], list[str], dict]:
    """(claim ids, profiles, {(claim, profile): cell}) from the summaries' claims (measured in
    those runs) and the baselines' recorded verdicts (where no run of the profile measured it)."""
    cells: dict[tuple[str, str], dict] = {}
    for s in data.summaries:
        for c in s.claims:
            cells[(c.id, c.profile)] = {"verdict": c.verdict, "ratio": c.ratio, "ci": c.ci, "expected": c.expected,
                                        "source": "this run"}
    for profile, claims in data.takeaways.items():
        for cid, entry in claims.items():
            published = bool(entry.get("published")) and not entry.get("recorded_at")
            cells.setdefault((cid, profile), {"verdict": entry.get("verdict"), "ratio": entry.get("ratio"),
                                              "ci": entry.get("ci"), "expected": None,
                                              "source": "published" if published else "recorded baseline"})
    claims = list(dict.fromkeys(c for c, _ in cells))
    profiles = list(dict.fromkeys(p for _, p in cells))
    return claims, profiles, cells


def cross_matrix(results: list[RunResult]) -> tuple[list[str], list[str], dict]:
    """(configurations, profiles, {(config, profile): text}): decode tok/s (generate modes) or
    decode us per layer (kernel mode) of each configuration on each profile."""
    values: dict[tuple[str, str], list] = {}
    status: dict[tuple[str, str], str] = {}
    for r in results:
        if r.injected_delay_ms or r.spec.model_label == "fixture":
            continue
        key = (f"{_model(r.spec)} {_backend(r)} {r.spec.mode}", r.profile or "?")
        if not r.ok:
            status.setdefault(key, r.status)
        elif "decode_tokens_per_s" in r.metrics:
            values.setdefault(key, []).append((r.metrics["decode_tokens_per_s"].value, "tok/s", 1))
        elif "kernel_decode_us_per_layer" in r.metrics:
            values.setdefault(key, []).append((r.metrics["kernel_decode_us_per_layer"].value, "us/layer", 2))
    cells: dict[tuple[str, str], str] = dict(status)
    for key, vals in values.items():  # several runs of one configuration: the median of their medians
        med = statistics.median(v for v, _, _ in vals)
        unit, digits = vals[0][1], vals[0][2]
        cells[key] = f"{med:.{digits}f} {unit}" + (f" (median of {len(vals)} runs)" if len(vals) > 1 else "")
    configs = sorted({c for c, _ in cells})
    profiles = list(dict.fromkeys(p for _, p in cells))
    return configs, profiles, cells


# -- plots ---------------------------------------------------------------------------------


# -- rendering -------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list], cell_styles: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, c in enumerate(row):
            style = cell_styles[i][j] if cell_styles else ""
            cells.append(f"<td{f' style={chr(34)}{style}{chr(34)}' if style else ''}>{html.escape(str(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(c: dict | None) -> str:
    if not c:
        return "not measured"
    ratio = "" if c.get("ratio") is None else f" {c['ratio']:.3g}"
    ci = c.get("ci") or []
    ci_s = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if len(ci) == 2 and None not in ci and ci[0] != ci[1] else ""
    return f"{c.get('verdict')}{ratio}{ci_s}" + (" (published)" if c.get("source") == "published" else "")


def sections(data: ReportData) -> dict[str, dict]:
    """Each section's tables (header, rows) and plots (title, data URI), shared by both renderers."""
    speed, kern, mem, qual = (speed_rows(data.results), kernel_rows(data.results), memory_rows(data.results),
                              quality_rows(data.results))
    out: dict[str, dict] = {}
    summary_rows = []
    measured = {r.profile for r in data.results if r.profile}  # a device the session ran nothing on is left out
    for i, s in enumerate(data.summaries):
        regs = len(s.regressions)
        flips = len(s.flips)
        inconc = sum(1 for c in s.configs if c.status == Status.INCONCLUSIVE)
        inconc += sum(1 for c in s.claims if c.verdict == Status.INCONCLUSIVE)
        shown = sorted(p for p in set(s.profiles.values()) if not measured or p in measured)
        source = data.summary_sources[i] if i < len(data.summary_sources) else "-"
        summary_rows.append([source, ", ".join(shown), len(s.configs), regs, len(s.claims), flips, inconc,
                             "; ".join(n for n in s.notes if n.startswith("this machine") or "runs" in n)[:300]])
    out["Summary"] = {"text": [f"Sources: {', '.join(data.sources)}" if data.sources else "",
                               f"Profiles: {', '.join(data.profiles) or '-'}"],
                      "tables": [(["session summary", "profiles", "configurations", "regressed", "claims",
                                   "flipped claims", "inconclusive", "notes"],
                                  summary_rows)] if summary_rows else []}
    configs, profiles, cells = cross_matrix(data.results)
    if len(profiles) > 1 or configs:
        out["Cross-hardware matrix"] = {"tables": [(["configuration", *profiles],
                                                    [[c,
                                                      *[cells.get((c, p), "-") for p in profiles]] for c in configs])]}
    out["Decode speed"] = {
        "text": ["One run: its median and the interquartile range and CV of its rounds. Several runs of a "
                 "configuration: the median of the run medians, their range and the CV between runs."],
        "tables": [(["profile", "model", "backend", "mode", "runs", "decode tok/s", "IQR / range", "CV %",
                     "prefill ms"],
                    [[r["profile"], r["model"], r["backend"], r["mode"], r["runs"], _fmt(r["median"]),
                      f"{r['q1']:.1f}-{r['q3']:.1f}", _fmt(r["cv"] * 100, 2), _fmt(r["prefill_ms"], 2)]
                     for r in speed])],
        "plots": plot_speed(speed)}
    out["Kernel time"] = {
        "tables": [(["profile", "model", "backend", "runs", "decode us/layer", "CV %", "prefill us/layer", "method"],
                    [[r["profile"], r["model"], r["backend"], r["runs"], _fmt(r["decode_us"], 2),
                      _fmt(r["decode_cv"] * 100, 2),
                      _fmt(r["prefill_us"], 2), ", ".join(r["methods"])] for r in kern])],
        "plots": plot_kernel(kern)}
    out["Memory"] = {
        "tables": [(["profile", "model", "backend", "mode", "weights MiB", "peak MiB", "peak kind", "NVML MiB"],
                    [[r["profile"], r["model"], r["backend"], r["mode"], _fmt(r["weight_mib"]), _fmt(r["peak_mib"]),
                      r["peak_kind"], _fmt(r["nvml_mib"])] for r in mem])],
        "plots": plot_memory(mem)}
    out["Speed against memory"] = {"plots": plot_tradeoff(speed, mem), "tables": []}
    out["Quality against bits"] = {
        "tables": [(["profile", "backend", "bits", "mean KLD", "top-1 agreement", "PPL", "reference", "runs"],
                    [[r["profile"], r["backend"], r["bits"], f"{r['mean_kld']:.2e}", _fmt(r["top1"], 3),
                      _fmt(r["ppl"], 2),
                      r["reference"] or "-", r["runs"]] for r in qual])],
        "plots": plot_quality(qual)}
    claims, tprofiles, tcells = takeaway_matrix(data)
    out["Takeaways"] = {"tables": [(["claim", *tprofiles], [[c, *[_cell(tcells.get((c, p))) for p in tprofiles]]
                                                           for c in claims])],
                        "verdict_cells": {(c, p): (tcells.get((c, p)) or {}).get("verdict") or "not measured"
                                          for c in claims for p in tprofiles},
                        "text": ["Verdicts measured in these runs, else as recorded in the profile's baseline "
                                 "('published': taken from published figures, not measured by quantperf); "
                                 "ratio B/A with its interval."]}
    urows = []
    for u in data.upgrades:
        for r in u.get("rows", []):
            tol = r.get("tolerance")
            urows.append([u.get("versions") or "-", r["config"], r["mode"], r["metric"], _fmt(r.get("ratio"), 4),
                          "-" if not r.get("ci") else f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]",
                          "-" if tol is None else f"+/-{tol * 100:.1f}%", r.get("decision") or "-"])
    if data.upgrades:
        out["Upgrade check"] = {
            "tables": [(["change", "configuration", "mode", "metric", "new/old", "interval", "tolerance", "decision"],
                        urows)],
            "plots": plot_upgrade(data.upgrades),
            "text": [f"{u.get('versions') or u['kind']} on {u.get('profile') or '?'} ({u.get('source') or '-'})"
                     for u in data.upgrades]}
    noise = [[n.config_id, _fmt(n.median), _fmt(n.cv * 100, 2), n.rounds, _fmt(n.min_detectable * 100, 1)]
             for s in data.summaries for n in s.noise]
    if noise:
        out["Noise"] = {"tables": [(["configuration", "median", "CV %", "rounds", "min detectable %"], noise)]}
    return out


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h2{border-bottom:1px solid #ddd;
padding-bottom:3px}
.note{color:#666;font-size:0.9em}"""


def render_html(data: ReportData, title: str = "quantperf report") -> str:
    secs = sections(data)
    plots_possible = _plt() is not None
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if not plots_possible:
        parts.append("<p class=\"note\">Plots need matplotlib: <code>pip install 'quantperf[report]'</code>.</p>")
    for name, sec in secs.items():
        parts.append(f"<section id=\"{name.lower().replace(' ', '-')}\"><h2>{html.escape(name)}</h2>")
        for t in sec.get("text", []):
            if t:
                parts.append(f"<p class=\"note\">{html.escape(t)}</p>")
        for header, rows in sec.get("tables", []):
            if not rows:
                parts.append("<p class=\"note\">nothing measured</p>")
                continue
            styles = None
            if name == "Takeaways":
                cells = sec["verdict_cells"]
                styles = [[""] + [f"background:{VERDICT_COLOURS.get(cells[(row[0], p)], '#fff')}" for p in header[1:]]
                          for row in rows]
            parts.append(_table(header, rows, styles))
        for caption, uri in sec.get("plots", []):
            parts.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"{uri}\"><figcaption class=\"note\">"
                         f"{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    if data.history:
        from .trends import trends_section

        parts.append(trends_section(data.history, data.history_skipped))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(data: ReportData, title: str = "quantperf report") -> str:
    secs = sections(data)
    out = [f"# {title}", ""]
    for name, sec in secs.items():
        tables = [(h, r) for h, r in sec.get("tables", []) if r]
        if not tables and not any(sec.get("text", [])):
            continue
        out += [f"## {name}", ""]
        out += [t for t in sec.get("text", []) if t]
        for header, rows in tables:
            out += ["", _md_table(header, rows), ""]
    return "\n".join(out).rstrip() + "\n"


def write(data: ReportData, html_path: str | Path | None = None, md_path: str | Path | None = None,
          title: str = "quantperf report") -> list[str]:
    written = []
    if html_path:
        atomic_write_text(html_path, render_html(data, title))
        written.append(str(html_path))
    if md_path:
        atomic_write_text(md_path, render_markdown(data, title))
        written.append(str(md_path))
    return written

