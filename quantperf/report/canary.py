"""The canary's issue: one markdown page with a row per library, from the files each library's job
of the canary workflow left (`quantperf canary-report DIR`).

Each library's job writes DIR/canary-LIBRARY/ (its artifact): `canary.txt` (`library=`, `pinned=`,
`newest=`, `newer=` lines of `quantperf newest --lock`, then `exit_code=` of upgrade-check),
`report.json` and `report.md` (`quantperf upgrade-check --json/--markdown`) and `upgrade-check.log`
(its output). A job that stopped early leaves some of them out; its row says which file is missing
and quotes the log's last `quantperf:` line. Verdicts are read from the reports as written (the
gate decided them), only counted here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..status import Status, from_word
from .table import markdown_table

# the libraries the lock pins and the canary compares, in the workflow's matrix order
LIBRARIES = ("torch", "transformers", "bitsandbytes", "onnxruntime-gpu", "torchao")
ARTIFACT_PREFIX = "canary-"  # the per-library artifact (and folder) is canary-LIBRARY
META = "canary.txt"
REPORT = "report.json"
LOG = "upgrade-check.log"
NEWEST_LOG = "newest.log"
# upgrade-check's exit status, as its help states it
EXIT_MEANING = {0: "no regression", 1: "**regression or flipped claim**", 2: "**could not compare**"}
MAX_ITEMS = 12  # regressions or failures listed per library; the artifact has them all


@dataclass
class LibraryRow:
    """What the issue says about one library."""

    library: str
    folder: str
    pinned: str | None = None
    newest: str | None = None
    newer: bool | None = None
    exit_code: int | None = None
    problem: str | None = None  # a missing or unreadable file, named
    speed: dict = field(default_factory=dict)  # verdict word -> configurations
    quality: dict = field(default_factory=dict)  # verdict word -> quality configurations
    flipped: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # a side failed: not compared
    skipped: int = 0


def _key_values(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _last_said(path: Path, limit: int = 300) -> str:
    """The last `quantperf:` line of a log (the one-line error of a command that stopped), else
    its last non-empty line, as inline code; empty without a log."""
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("quantperf:")] or lines
    line = said[-1] if said else ""
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    # quoted as code: a log line's markdown, links or @mentions never act in the issue
    return f"`{line.replace('`', chr(39))}`" if line else ""


def _counts(words) -> dict:
    out: dict = {}
    for word in words:
        word = from_word(word)
        if word is not None:
            out[word] = out.get(word, 0) + 1
    return out


def _read_report(row: LibraryRow, path: Path, name: str) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        row.problem = f"`{name}` unreadable: not an upgrade-check report ({type(exc).__name__})"
        return
    if not isinstance(data, dict) or not isinstance(data.get("configs", []), list):
        row.problem = f"`{name}` unreadable: not an upgrade-check report (no configs list)"
        return
    configs = [c for c in data.get("configs", []) if isinstance(c, dict)]
    quality = [q for q in data.get("quality", []) or [] if isinstance(q, dict)]
    row.speed = _counts(c.get("verdict") for c in configs if from_word(c.get("status")) == Status.OK)
    row.skipped = sum(from_word(c.get("status")) == Status.SKIPPED for c in configs)
    row.quality = _counts(q.get("verdict") for q in quality if from_word(q.get("status")) == Status.OK)
    row.flipped = [str(t.get("id")) for t in data.get("takeaways", []) or []
                   if isinstance(t, dict) and from_word(t.get("status")) == Status.FLIPPED]
    row.regressions = [str(r) for r in data.get("regressions", []) or []]
    row.failures = [str(e) for e in data.get("errors", []) or []]
    if isinstance(data.get("exit_code"), int):
        row.exit_code = data["exit_code"]


def read_library(directory: str | Path, library: str) -> LibraryRow:
    """One library's row from DIR/canary-LIBRARY/; a missing or corrupt file is named in `problem`."""
    folder = f"{ARTIFACT_PREFIX}{library}"
    d = Path(directory) / folder
    row = LibraryRow(library, folder)
    meta_path = d / META
    if not meta_path.is_file():
        row.problem = (f"no `{folder}/{META}`: the job stopped before it looked up the newest release"
                       if not d.is_dir() else f"no `{folder}/{META}`: the job stopped early")
        return row
    meta = _key_values(meta_path)
    row.pinned, row.newest = meta.get("pinned") or None, meta.get("newest") or None
    row.newer = {"true": True, "false": False}.get(meta.get("newer", ""))
    if meta.get("exit_code", "").lstrip("-").isdigit():
        row.exit_code = int(meta["exit_code"])
    if row.newest is None or row.newer is None:
        said = _last_said(d / NEWEST_LOG)
        row.problem = f"`{folder}/{META}` names no newest release: `quantperf newest` failed" + (
            f" ({said})" if said else "")
        return row
    if not row.newer:
        return row
    report = d / REPORT
    if not report.is_file():
        said = _last_said(d / LOG)
        code = "" if row.exit_code is None else f"upgrade-check exit {row.exit_code}"
        why = "; ".join(x for x in (code, said) if x)
        row.problem = f"no `{folder}/{REPORT}`" + (f" ({why})" if why else ": the job stopped before upgrade-check")
        return row
    _read_report(row, report, f"{folder}/{REPORT}")
    return row


def read_canary(directory: str | Path, libraries=LIBRARIES) -> list[LibraryRow]:
    """A row per library named, then one per other canary-* folder found in DIR."""
    names = list(dict.fromkeys(libraries))
    d = Path(directory)
    if d.is_dir():
        names += sorted(p.name.removeprefix(ARTIFACT_PREFIX) for p in d.iterdir()
                        if p.is_dir() and p.name.startswith(ARTIFACT_PREFIX)
                        and p.name.removeprefix(ARTIFACT_PREFIX) not in names)
    return [read_library(d, name) for name in names]


def _outcome(row: LibraryRow) -> str:
    if row.problem:
        return row.problem
    if not row.newer:
        return "the lock pins the newest release: nothing to compare"
    if row.exit_code is None:
        return "compared (no exit status recorded)"
    return f"exit {row.exit_code}: {EXIT_MEANING.get(row.exit_code, 'unknown status')}"


def _speed_cell(row: LibraryRow) -> str:
    if not row.speed and not row.skipped:
        return "-"
    order = {Status.REGRESSED: 0, Status.IMPROVED: 1, Status.OK: 2, Status.INCONCLUSIVE: 3}
    cell = " / ".join(str(row.speed.get(word, 0)) for word in sorted(order, key=order.get))
    others = [f"{n} {w}" for w, n in row.speed.items() if w not in order]
    others += [f"{row.skipped} skipped"] if row.skipped else []
    return cell + (f" ({', '.join(others)})" if others else "")


def _quality_cell(row: LibraryRow) -> str:
    return ", ".join(f"{n} {w}" for w, n in sorted(row.quality.items(), key=lambda kv: str(kv[0]))) or "-"


def _list(items: list[str]) -> list[str]:
    out = [f"  - {item}" for item in items[:MAX_ITEMS]]
    return out + ([f"  - ... and {len(items) - MAX_ITEMS} more (in the artifact)"] if len(items) > MAX_ITEMS else [])


def headline(rows: list[LibraryRow]) -> str:
    """One sentence: how many libraries have a newer release, and how their checks came out."""
    newer = [r for r in rows if r.newer]
    failing = [r.library for r in newer if r.exit_code == 1 and not r.problem]
    uncompared = [r.library for r in newer if r.problem or r.exit_code not in (0, 1)]
    unknown = [r.library for r in rows if r.newer is None]
    parts = [f"{len(newer)} of {len(rows)} libraries have a release newer than the lock"]
    parts += [f"regression or flipped claim: {', '.join(failing)}"] if failing else []
    parts += [f"could not compare: {', '.join(uncompared)}"] if uncompared else []
    parts += [f"newest release unknown: {', '.join(unknown)}"] if unknown else []
    return "; ".join(parts) + "."


def render_canary(rows: list[LibraryRow], *, run_url: str | None = None, updated: str | None = None) -> str:
    """The issue body: the headline, a row per library, then what each check found."""
    run = f"[this run]({run_url})" if run_url else "this run"
    lines = ["# quantperf canary: the newest releases against the lock", "",
             (f"Updated {updated} by {run}. " if updated else f"Written by {run}. ")
             + "For each library that has a release newer than `constraints-gpu.txt` pins, the lock "
               "(environment A) is measured against the same environment with only that library at "
               "its newest release (B): `quantperf upgrade-check LIBRARY==NEWEST --allow-changes "
               "--device cuda --quality --mode kernel graph eager`.", "",
             f"**{headline(rows)}**", ""]
    header = ["library", "pinned", "newest", "outcome", "speed: regressed / improved / ok / inconclusive",
              "quality", "flipped claims", "side failures", "artifact"]
    table = [[r.library, r.pinned or "-", r.newest or "-", _outcome(r), _speed_cell(r), _quality_cell(r),
              ", ".join(r.flipped) or "-", str(len(r.failures)) if r.newer and not r.problem else "-",
              f"[{r.folder}]({run_url})" if run_url else f"`{r.folder}`"] for r in rows]
    lines += [markdown_table(header, table), ""]
    details = [r for r in rows if r.regressions or r.failures]
    for r in details:
        lines += [f"## {r.library} {r.pinned or '?'} -> {r.newest or '?'}", ""]
        if r.regressions:
            lines += ["- regressions and flipped claims:"] + _list(r.regressions)
        if r.failures:
            lines += ["- not compared (a side failed):"] + _list(r.failures)
        lines += [f"- the full report: `{r.folder}/report.md` in the artifact `{r.folder}` of {run}", ""]
    lines += ["A library's job that failed before writing its report says so in its row, naming the missing "
              "file; its log is in the run."]
    return "\n".join(lines).rstrip() + "\n"
