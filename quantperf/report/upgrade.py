"""Rendering of the upgrade check's report and of `compare`'s result: terminal text or markdown,
through the one table writer."""

from __future__ import annotations

import math

from ..experiments.upgrade import CALIBRATION_K, UpgradeReport, ci_text
from ..phases import HEADER, table_rows
from ..phases import line as phase_line
from ..status import Status
from .table import format_table


def upgrade_sections(rep: UpgradeReport, markdown: bool = False) -> list[tuple[str, str]]:
    sections = []
    rows = []
    for c in rep.configs:
        blocks = sum(len(p.blocks) for p in c.pairs)
        tol = "-" if c.tolerance is None else f"{c.tolerance * 100:.1f}%" + (
            " (A/A)" if c.tolerance_source == "calibration" else "")
        tokens = {True: "same", False: "DIFFER", None: "-"}[c.tokens_match]
        # as the other gates print theirs: a decided change in capitals, ok and inconclusive as they are
        verdict = c.status.upper() if c.status != Status.OK else c.verdict.upper() \
            if c.verdict in (Status.REGRESSED, Status.IMPROVED) else c.verdict
        conf = "-" if c.confidence is None else f"{c.confidence * 100:.1f}%"
        rows.append([c.config_id, ci_text(c.ratio, c.low, c.high), conf, tol, verdict,
                     f"{len(c.pairs)}x{blocks // max(len(c.pairs), 1)}", tokens, c.message])
    if rows:
        sections.append(("speed: per-token decode time B/A [interval over process pairs]",
                         format_table(["config", "time B/A [CI]", "conf.", "tolerance", "verdict", "pairs x blocks",
                              "greedy tokens", "note"], rows, markdown)))
    if runtime := runtime_rows(rep.configs):
        sections.append(("runtime: what each side ran (read back from the loaded model)", format_table(
            ["config", "attention A", "attention B", "KV cache A", "KV cache B", "Hub kernels A", "Hub kernels B"],
            runtime, markdown)))
    if rep.quality:
        qrows = []
        for q in rep.quality:
            s = q.get("stats") or {}
            qrows.append([q["config_id"], "-" if not s else f"{s['mean_kld']:.3g}",
                          "-" if not s else f"{s['top1_agreement']:.4f}",
                          "-" if not s else f"{math.exp(s['ln_ppl_ratio']):.4f}",
                          (q.get("verdict") or q["status"]).upper() if q.get("verdict") != Status.IDENTICAL
                          else Status.IDENTICAL,
                          "; ".join(q.get("violations") or []) or q.get("message", "")])
        sections.append(("quality: B against A on the corpus", format_table(
            ["config", "mean KLD", "top-1 agree", "PPL B/A", "verdict", "note"], qrows, markdown)))
    if rep.memory:
        mrows = [[m["config_id"], m["metric"], _median(m["a"]), _median(m["b"]),
                  ci_text(m["ratio"], m["low"], m["high"]), f"{m['tolerance'] * 100:.1f}%", _word(m["verdict"])]
                 for m in rep.memory]
        sections.append(("memory: B/A per figure [interval over process pairs]", format_table(
            ["config", "figure", "A (MiB)", "B (MiB)", "B/A [CI]", "tolerance", "verdict"], mrows, markdown)))
    if (rep.phases or {}).get("configs"):
        sections.append(("where the time went (seconds, per configuration; start and imports of pairs started "
                         "ahead are off the wall)", format_table(HEADER, table_rows(rep.phases["configs"]), markdown)))
    if rep.takeaways:
        trows = [[t["id"], t["claimed"],
                  f"{t['A']['verdict']} {ci_text(t['A']['ratio'], t['A']['low'], t['A']['high'])}",
                  f"{t['B']['verdict']} {ci_text(t['B']['ratio'], t['B']['low'], t['B']['high'])}",
                  t["status"].upper() if t["status"] != Status.OK else Status.OK] for t in rep.takeaways]
        sections.append(("takeaways: verdict in A and in B",
                         format_table(["claim", "claimed", "A", "B", "status"], trows, markdown)))
    return sections


RUNTIME_COLUMNS = ("attn_implementation", "cache_implementation", "hub_kernels")


def _setting(runtime: dict | None, name: str) -> str:
    settings = (runtime or {}).get("settings") or {}
    value = settings.get(name)
    if name == "hub_kernels" and value == "hub":  # which repositories the loaded model used
        used = settings.get("kernelized") or {}
        value += f" ({', '.join(used)})" if used else " (none kernelized)"
    return "-" if value is None else str(value)


def runtime_rows(configs) -> list[list[str]]:
    """Per configuration, side A's and side B's attention implementation, KV-cache class and Hub-kernels
    setting (ConfigCheck.runtime); none for checks that recorded no runtime."""
    rows = []
    for c in configs:
        if not any((c.runtime or {}).values()):
            continue
        row = [c.config_id]
        for name in RUNTIME_COLUMNS:
            row += [_setting(c.runtime.get("A"), name), _setting(c.runtime.get("B"), name)]
        rows.append(row)
    return rows


def _median(values) -> str:
    values = sorted(v for v in values if v is not None)
    return f"{values[len(values) // 2]:.4g}" if values else "-"


def _word(verdict) -> str:
    """A decided change in capitals, ok and inconclusive as they are."""
    return str(verdict).upper() if verdict in (Status.REGRESSED, Status.IMPROVED, Status.CHANGED) else str(verdict)


def _calibration_line(rep: UpgradeReport) -> str:
    cal = rep.calibration
    if not cal:
        return "A/A calibration: none (tolerances as configured)"
    parts = [f"{mode} spread {m['spread'] * 100:.2f}% -> tolerance floor {m['tolerance_floor'] * 100:.1f}%"
             for mode, m in cal.get("modes", {}).items() if m.get("spread") is not None and math.isfinite(m["spread"])]
    head = "A/A calibration measured" if rep.kind == "aa" else f"A/A calibration used ({cal.get('created', '?')})"
    return f"{head}, k = {cal.get('k', CALIBRATION_K):g}: " + ("; ".join(parts) or "no spread")


def summary_line(rep: UpgradeReport, strict: bool = False) -> str:
    code = rep.exit_code(strict)
    if code == 1:
        undecided = [f"{c}: inconclusive" for c in rep.inconclusive] if strict else []
        return "REGRESSED: " + "; ".join(rep.regressions + undecided)
    if code == 2:
        return "COULD NOT RUN: " + ("; ".join(rep.errors) or "nothing was compared")
    # what a reviewer needs in one line: faster and inconclusive configurations, changed outputs
    parts = [f"{len(rep.improvements)} FASTER: {'; '.join(rep.improvements)}"] if rep.improvements else []
    parts += [f"outputs changed within limits: {', '.join(rep.changed_outputs)}"] if rep.changed_outputs else []
    parts += [f"{len(rep.inconclusive)} inconclusive: {', '.join(rep.inconclusive)}"] if rep.inconclusive else []
    skipped = [c.config_id for c in rep.configs if c.status == Status.SKIPPED]
    parts += [f"{len(skipped)} skipped: {', '.join(skipped)}"] if skipped else []
    if not parts:
        return "no change beyond tolerance"
    head = "no regression; " if rep.improvements or rep.changed_outputs else "no change beyond tolerance; "
    return head + "; ".join(parts)


def render_upgrade(rep: UpgradeReport, markdown: bool = False, strict: bool = False) -> str:
    title = {"aa": "A/A calibration", "against": "A/B (pytest --qp-against)"}.get(rep.kind, "upgrade check")
    if markdown:
        lines = [f"# quantperf {title}", "", (f"Profile `{rep.profile}` ({rep.device}); "
                 f"{rep.settings['pairs']} process pairs x {rep.settings['blocks']} ABBA blocks per configuration, "
                 f"alpha {rep.settings['alpha']:g}."), "", "**Versions**", "", "```", rep.describe, "```", "",
                 _calibration_line(rep), "", f"**{summary_line(rep, strict)}**", ""]
        for head, body in upgrade_sections(rep, markdown=True):
            lines += [f"## {head}", "", body, ""]
        lines += [f"- {n}" for n in rep.notes + [t for t in [shared_line(rep)] if t]]
        if time := time_line(rep):
            lines += ["", time]
        return "\n".join(lines).rstrip() + "\n"
    out = [f"quantperf {title} on {rep.profile}", rep.describe, _calibration_line(rep)]
    out += [f"{head}:\n{body}" for head, body in upgrade_sections(rep)]
    out += rep.notes + [t for t in [shared_line(rep), time_line(rep)] if t] + [summary_line(rep, strict)]
    return "\n\n".join(out)


def shared_line(rep: UpgradeReport) -> str:
    """Which configurations shared their process pairs (quantperf.experiments.shared), or ""."""
    shared = [c for c in rep.configs if (c.shared or 1) > 1]
    if not shared:
        return ""
    return (f"shared process pairs: {len(shared)} configuration(s) measured {max(c.shared for c in shared)} to a pair "
            "of fresh processes (each pair hosts them in turn; kernel mode times the decode projections there); "
            "QUANTPERF_AB_SHARE=off gives each configuration pairs of its own")


def time_line(rep: UpgradeReport) -> str:
    """`time: 499 s - start .., imports .., ..., other .. s (overlapped: start .. s, imports .. s)`, or ""."""
    ph = rep.phases or {}
    if not ph.get("total"):
        return ""
    hidden = ph.get("overlapped") or {}
    extra = (f" (overlapped with measurement: start {hidden.get('start', 0):.1f} s, imports "
             f"{hidden.get('imports', 0):.1f} s)") if any(hidden.values()) else ""
    return phase_line(ph["total"], ph.get("wall_s")) + extra


def render_compare(result: dict, markdown: bool = False) -> str:
    rows = []
    for r in result["rows"]:
        if r.get("ratio") is None:
            rows.append([r["config"], r["metric"], "-", "-", "-", r["status"], r.get("note", "")])
            continue
        rows.append([r["config"], r["metric"], f"{r['old']:.4g}", f"{r['new']:.4g}",
                     ci_text(r["ratio"], r["low"], r["high"]),
                     r["status"].upper() if r["status"] in (Status.REGRESSED, Status.IMPROVED) else r["status"],
                     f"{r['method']}, tol {r['tolerance'] * 100:g}%"])
    versions = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["versions"].items()) or "none differ"
    verdict = (f"REGRESSED: {'; '.join(result['regressions'])}" if result["regressions"]
               else "no change beyond tolerance")
    table = format_table(["config", "metric", "old", "new", "new/old [CI]", "verdict", "how"], rows, markdown)
    ran = [[key, *(_setting(sides.get(s), n) for n in RUNTIME_COLUMNS for s in ("old", "new"))]
           for key, sides in (result.get("runtime") or {}).items()]
    if ran:
        table += "\n\n" + format_table(["config", "attention old", "attention new", "KV cache old", "KV cache new",
                                         "Hub kernels old", "Hub kernels new"], ran, markdown)
    extra = ([f"only in old: {', '.join(result['only_old'])}"] if result["only_old"] else []) + \
            ([f"only in new: {', '.join(result['only_new'])}"] if result["only_new"] else [])
    if markdown:
        lines = ["# quantperf compare", "", f"- old: {result['old']}", f"- new: {result['new']}",
                 f"- library versions: {versions}", "", f"**{verdict}**", "", table, ""]
        lines += [f"- note: {n}" for n in result["notes"]] + [f"- {e}" for e in extra]
        return "\n".join(lines).rstrip() + "\n"
    return "\n".join([f"old: {result['old']}", f"new: {result['new']}", f"library versions: {versions}", "", table, ""]
                     + [f"note: {n}" for n in result["notes"]] + extra + [verdict])


def against_line(rep: UpgradeReport, counts: dict[str, int]) -> str:
    """The one line of `pytest --qp-against`: what A and B are, and how the comparisons came out."""
    a = rep.describe.split("\n")[0].removeprefix("A: ").split(" (--qp-against)")[0]
    parts = [f"{counts.get('same', 0)} same", f"{counts.get('regressed', 0)} regressed",
             f"{counts.get('improved', 0)} improved", f"{counts.get('inconclusive', 0)} inconclusive",
             f"{counts.get('flipped', 0)} takeaways flipped"]
    parts += [f"{counts[k]} {w}" for k, w in (("error", "not compared (a side failed)"), ("skipped", "skipped"))
              if counts.get(k)]
    return f"quantperf A/B: A = {a} | B = this environment: " + ", ".join(parts)


def write_against(rep: UpgradeReport, directory, data: dict, strict: bool = False) -> list[str]:
    """`--qp-report DIR` of an A/B session: DIR/report.md (as upgrade-check's markdown), DIR/report.json
    (`data`: the report as JSON) and DIR/report.html (the HTML report of that JSON)."""
    from pathlib import Path

    from ..results import atomic_write_text, dump_json
    from .html import load, write

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "report.json", dump_json(data))
    atomic_write_text(d / "report.md", render_upgrade(rep, markdown=True, strict=strict))
    written = write(load([d / "report.json"]), d / "report.html", None, "quantperf A/B (--qp-against)")
    return written + [str(d / "report.md"), str(d / "report.json")]
