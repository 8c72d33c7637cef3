"""Plain-text tables for results (terminal summaries, README tables)."""

from __future__ import annotations

from .results import RunResult


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def results_table(results: list[RunResult], markdown: bool = False) -> str:
    """One row per configuration: decode tok/s (median, CV), prefill ms, weight/peak MiB, roofline %."""
    header = ["config", "status", "decode tok/s", "CV %", "prefill ms", "e2e tok/s", "weight MiB", "peak MiB", "roofline %"]
    rows = []
    for r in results:
        if not r.ok:
            rows.append([r.spec.id, r.status, (r.reason or "")[:90], "", "", "", "", "", ""])
            continue
        m = r.metrics
        dec = m["decode_tokens_per_s"].summary
        peak = m.get("peak_allocated_mib") or m.get("host_peak_rss_mib")
        frac = r.roofline.get("fraction_of_peak")
        rows.append([
            r.spec.id, "ok" if r.validity.get("valid", True) else "ok (throttled)",
            _fmt(dec.median), _fmt(dec.cv * 100), _fmt(m["prefill_ms"].summary.median, 2),
            _fmt(m["e2e_tokens_per_s"].summary.median), _fmt(m["weight_mib"].value),
            _fmt(peak.value if peak else None), _fmt(None if frac is None else frac * 100, 2),
        ])
    return format_table(header, rows, markdown)


def noise_table(rows: list[dict], markdown: bool = False) -> str:
    """Rows of quantperf.noise.noise_rows (optionally with a `target` CV) as a table."""
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}%"

    header = ["config", "metric", "runs", "rounds", "CV within", "CV between", "min detectable"]
    with_target = any("target" in r for r in rows)
    body = [[r["config"], r["metric"], r["runs"], r["rounds"], pct(r["cv_within"]), pct(r["cv_between"]),
             pct(r["min_detectable"])] + ([pct(r.get("target"))] if with_target else []) for r in rows]
    return format_table(header + (["target CV within"] if with_target else []), body, markdown)


def format_table(header: list[str], rows: list[list], markdown: bool = False) -> str:
    rows = [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])
