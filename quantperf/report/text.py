"""Renderers: plain-text and markdown tables of results and of a session's typed summary
(quantperf.summary.SessionSummary). A new report format is one function here that reads the
summary."""

from __future__ import annotations

from ..phases import HEADER, line, table_rows
from ..results import RunResult
from ..status import Status
from ..summary import SessionSummary
from .table import fmt as _fmt
from .table import format_table


def results_table(results: list[RunResult], markdown: bool = False) -> str:
    """One row per configuration: decode tok/s (median, CV), prefill ms, weight/peak MiB, roofline %.
    Kernel-mode results get their own tables (`kernel_tables`) after it."""
    header = ["config", "status", "decode tok/s", "CV %", "prefill ms", "e2e tok/s", "weight MiB", "peak MiB",
              "roofline %"]
    rows = []
    kernel = [r for r in results if r.ok and "kernel_decode_us_per_layer" in r.metrics]
    for r in results:
        if r in kernel:
            continue
        if not r.ok:
            rows.append([r.spec.id, r.status, (r.reason or "")[:90], "", "", "", "", "", ""])
            continue
        m = r.metrics
        dec = m["decode_tokens_per_s"].summary
        peak = m.get("peak_allocated_mib") or m.get("host_peak_rss_mib")
        frac = r.roofline.get("fraction_of_peak")
        rows.append([
            r.spec.id, Status.OK if r.validity.get("valid", True) else f"{Status.OK} (throttled)",
            _fmt(dec.median), _fmt(dec.cv * 100), _fmt(m["prefill_ms"].summary.median, 2),
            _fmt(m["e2e_tokens_per_s"].summary.median), _fmt(m["weight_mib"].value),
            _fmt(peak.value if peak else None), _fmt(None if frac is None else frac * 100, 2),
        ])
    out = format_table(header, rows, markdown) if rows else ""
    if kernel:
        from ..scenarios.kernel import decomposition_lines

        out = (out + "\n\n" if out else "") + kernel_tables(kernel, markdown)
        lines = decomposition_lines(results)
        if lines:
            out += "\n\n" + "\n".join(lines)
    return out


def kernel_tables(results: list[RunResult], markdown: bool = False) -> str:
    """Kernel mode: per configuration microseconds per decoder layer (decode, prefill) with the CV
    of the rounds and the timing method; then per module type and shape: us per call, CV of the
    samples, GB/s with % of the peak and of the measured copy bandwidth, TFLOP/s at prefill; and
    where ONNX Runtime's calls were GPU-timed, the host's time to queue one (a `host-bound` figure
    is one whose host time the GPU could not be kept ahead of)."""
    header = ["config", "decode us/layer", "CV %", "prefill us/layer", "CV %", "method", "copy GB/s"]
    rows, detail = [], []
    host = any("host_enqueue_us" in t for r in results
               for t in (((r.figures or {}).get("kernel") or {}).get("types") or {}).values())
    for r in results:
        m, fig = r.metrics, (r.figures or {}).get("kernel") or {}
        dec, pre = m["kernel_decode_us_per_layer"].summary, m["kernel_prefill_us_per_layer"].summary
        types = fig.get("types", {})
        methods = sorted({t.get("method", "?") for t in types.values()})
        rows.append([r.spec.id, _fmt(dec.median, 2), _fmt(dec.cv * 100, 2), _fmt(pre.median, 2), _fmt(pre.cv * 100, 2),
                     ",".join(methods), _fmt(fig.get("copy_gbps"))])
        for key, t in types.items():
            shape, name = key.split(":", 1)
            pct = lambda v: "-" if v is None else f"{v * 100:.0f}%"  # noqa: E731
            detail.append([r.spec.backend, r.spec.model_label, shape, name, _fmt(t["us_per_call"], 2),
                           _fmt(t["cv"] * 100, 2), "L2-hot" if t.get("l2_hot") else _fmt(t.get("gbps")),
                           pct(t.get("pct_peak")), pct(t.get("pct_copy")), _fmt(t.get("tflops"), 1),
                           t.get("method", "")]
                          + ([_fmt(t.get("host_enqueue_us"), 2)] if host else []))
    dh = ["backend", "model", "shape", "module", "us/call", "CV %", "GB/s", "% peak", "% copy", "TFLOP/s", "method"]
    dh += ["host us/call"] if host else []
    return format_table(header, rows, markdown) + "\n\n" + format_table(dh, detail, markdown)


def noise_table(rows: list[dict], markdown: bool = False) -> str:
    """Rows of quantperf.experiments.noise.noise_rows (optionally with a `target` CV) as a table."""
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}%"

    header = ["config", "metric", "runs", "rounds", "CV within", "CV between", "min detectable"]
    with_target = any("target" in r for r in rows)
    body = [[r["config"], r["metric"], r["runs"], r["rounds"], pct(r["cv_within"]), pct(r["cv_between"]),
             pct(r["min_detectable"])] + ([pct(r.get("target"))] if with_target else []) for r in rows]
    return format_table(header + (["target CV within"] if with_target else []), body, markdown)


def evaluation_table(ev, markdown: bool = False) -> str:
    """Noise per side and detection rates, as one table."""
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}%"

    header = ["side", "median", "CV within", "CV between", "min detectable", "gate flagged", "paired flagged"]
    rows = []
    for s in ev.noise:
        g, pr = ev.detection(s.side, "gate"), ev.detection(s.side, "paired")
        rows.append([s.side, f"{s.median:.4g}", pct(s.cv_within), pct(s.cv_between), pct(s.min_detectable),
                     f"{g.flagged}/{g.trials}" if g else "-", f"{pr.flagged}/{pr.trials}" if pr else "-"])
    head = (f"{ev.config} ({ev.metric}): {ev.processes} processes x {ev.rounds} rounds per side, tolerance "
            f"{ev.tolerance * 100:g}%, "
            f"alpha {ev.alpha:g} ('flagged' on clean-b = A/A false alarms; on slow-N% = detections)")
    return "\n".join([head, format_table(header, rows, markdown), *ev.notes])


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def summary_sections(summary: SessionSummary, markdown: bool = False) -> list[tuple[str, str]]:
    """(title, table) sections of a session summary, in reading order."""
    sections = []
    if summary.notes:
        sections.append(("session", "\n".join(summary.notes)))
    rows = []
    for o in summary.configs:
        if not o.verdicts:
            head = "-" if o.decode_tokens_per_s is None else f"{o.decode_tokens_per_s:.4g}"
            rows.append([o.key, "-", head, "-", "-", o.status, o.message])
        for v in o.verdicts:
            delta = "-" if v.ratio is None else f"{(v.ratio - 1) * 100:+.1f}%"
            if v.noise_floor is not None:
                note = f"noise floor {v.noise_floor * 100:.0f}%" + (f" [{v.ci[0]:.3f}, {v.ci[1]:.3f}]" if v.ci else "")
            else:
                note = "; ".join(([] if v.p_value is None else [f"p={v.p_value:.3g}"]) + v.notes)
                note = note if len(note) <= 80 else note[:77] + "..."
            rows.append([o.key, v.metric, f"{v.current:.4g}", "-" if v.baseline is None else f"{v.baseline:.4g}", delta,
                         v.status, note])
        if o.version_changes:
            rows.append([o.key, "versions", "", "", "", "",
                         ", ".join(f"{k} {a}->{b}" for k, (a, b) in o.version_changes.items())])
    if rows:
        sections.append(("gate", format_table(["config", "metric", "current", "baseline", "delta", "verdict", "note"],
                                              rows, markdown)))
    if summary.claims:
        crow = [[c.id, c.profile, "-" if c.ratio is None else f"{c.ratio:.3g} [{c.ci[0]:.3g}, {c.ci[1]:.3g}]",
                 c.claimed, c.expected, c.verdict] for c in summary.claims]
        sections.append(("takeaways",
                         format_table(["claim", "profile", "ratio B/A [CI]", "claimed", "expected", "verdict"],
                                                   crow, markdown)))
    if summary.noise:
        nrows = [[n.config_id, f"{n.median:.4g}", _pct(n.cv), n.rounds, _pct(n.min_detectable),
                  n.adaptive_extra_rounds or "", n.validity] for n in summary.noise]
        sections.append(("noise (decode tok/s): within-run CV and the smallest slowdown this many rounds detects "
                         "(alpha 0.05, power 0.8)",
                         format_table(["config", "median", "CV", "rounds", "min detectable", "adaptive +rounds",
                                       "validity"],
                                      nrows, markdown)))
    if summary.repeatability:
        sections.append(("repeatability (fresh process per run)", noise_table(summary.repeatability, markdown)))
    for exp in summary.sensitivity:
        from ..experiments.sensitivity import Evaluation

        sections.append(("noise experiment", evaluation_table(Evaluation.from_dict(exp["evaluation"]), markdown)))
    if (summary.phases or {}).get("total"):
        ph = summary.phases
        body = line(ph["total"], ph.get("wall_s"))
        if markdown and ph.get("configs"):
            body += "\n\n" + format_table(HEADER, table_rows(ph["configs"]), markdown)
        sections.append(("where the time went", body))
    if summary.recorded:
        shown = summary.recorded[:50]
        more = len(summary.recorded) - len(shown)
        sections.append((f"recorded {len(summary.recorded)} baseline figure(s)",
                         "\n".join(f"  {line}" for line in shown) + (f"\n  ... and {more} more" if more else "")))
    return sections


def render_terminal(summary: SessionSummary) -> str:
    head = f"profiles: {', '.join(f'{d}={p}' for d, p in summary.profiles.items())}"
    return "\n\n".join([head] + [f"{title}:\n{body}" for title, body in summary_sections(summary)])


def render_markdown(summary: SessionSummary) -> str:
    """A markdown report (a PR comment, $GITHUB_STEP_SUMMARY)."""
    lines = ["# quantperf", "", "Profiles: " + ", ".join(f"`{d}` = `{p}`" for d, p in summary.profiles.items()), "",
             f"**{len(summary.regressions)} regression(s), {len(summary.flips)} flipped claim(s).**", ""]
    for title, body in summary_sections(summary, markdown=True):
        lines += [f"## {title}", "", body, ""]
    return "\n".join(lines)
