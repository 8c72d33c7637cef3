"""Where a run's time went: the wall seconds of each phase of measuring a configuration (process
start, imports, prepare, load/quantize, warm-up/capture, measurement, read-back, quality), kept
in `RunResult.timings["phases"]`, summed per session and per upgrade check, and written as one
line. A suite that takes half an hour of a GPU runner is run weekly: its own cost is a figure.

The clock here is the host's wall clock around whole process-lifecycle steps (seconds, not the
microseconds of a measurement): quantperf.trackers still owns every clock around GPU work."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# in the order a configuration goes through them
PHASES = ("start", "imports", "prepare", "load", "warmup", "measure", "readback", "quality")
LABELS = {"start": "start", "imports": "imports", "prepare": "prepare", "load": "load", "warmup": "warm-up",
          "measure": "measure", "readback": "read-back", "quality": "quality"}


def clock() -> float:
    """Seconds on a monotonic wall clock (differences only)."""
    return time.monotonic()


def add(phases: dict, name: str, seconds: float | None) -> dict:
    """Add `seconds` to phase `name` of `phases` (None or negative: nothing)."""
    if name not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
    if seconds is not None and seconds > 0:
        phases[name] = phases.get(name, 0.0) + seconds
    return phases


def merge_into(phases: dict, more: dict) -> dict:
    """Add every phase of `more` to `phases`."""
    for p in PHASES:
        add(phases, p, (more or {}).get(p))
    return phases


@contextmanager
def timed(phases: dict, name: str) -> Iterator[None]:
    """Add the wall time of the block to phase `name` (also when it raises)."""
    t0 = clock()
    try:
        yield
    finally:
        add(phases, name, clock() - t0)


def rounded(phases: dict, digits: int = 3) -> dict:
    """Every phase, in order, in seconds (0.0 for a phase that did not happen)."""
    return {p: round(float(phases.get(p) or 0.0), digits) for p in PHASES}


def total(many: Iterable[dict]) -> dict:
    """The phase-by-phase sum of several breakdowns."""
    out: dict = {}
    for phases in many:
        for p in PHASES:
            add(out, p, (phases or {}).get(p))
    return rounded(out)


def session_phases(results: Iterable, wall_s: float | None) -> dict:
    """A session's breakdown from its results (RunResults, whose timings may hold "phases"):
    the total per phase, the session's wall seconds and `other` = wall minus the phases' sum
    (negative when phases overlapped: shown as it is, never hidden), and one row per
    configuration."""
    rows = []
    for r in results:
        ph = (getattr(r, "timings", None) or {}).get("phases")
        if ph:
            rows.append({"config_id": r.spec.id, **rounded(ph)})
    totals = total(rows)
    return {"total": totals, "wall_s": None if wall_s is None else round(wall_s, 3),
            "other_s": None if wall_s is None else round(wall_s - sum(totals.values()), 3), "configs": rows}


def merge(parts: Iterable[dict]) -> dict:
    """One breakdown from several sessions' (xdist shards run side by side: the wall is the longest)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    walls = [p["wall_s"] for p in parts if p.get("wall_s") is not None]
    totals = total(p.get("total") for p in parts)
    wall = max(walls) if walls else None
    return {"total": totals, "wall_s": wall, "other_s": None if wall is None else round(wall - sum(totals.values()), 3),
            "configs": [row for p in parts for row in p.get("configs", [])]}


def check_phases(configs: list[dict], quality: list[dict], wall_s: float | None) -> dict:
    """Where an upgrade check's (or an A/B's) time went, from its configurations' and quality
    checks' dicts ("phases", "overlapped"): per row, the total, the wall, `other` (the wall minus
    the phases) and `overlapped`, the start and imports of pairs started ahead (off the wall)."""
    rows = [{"config_id": c.get("config_id", "?"), **rounded(c["phases"])} for c in list(configs) + list(quality)
            if c.get("phases")]
    totals = total(rows)
    return {"total": totals, "wall_s": None if wall_s is None else round(wall_s, 3),
            "other_s": None if wall_s is None else round(wall_s - sum(totals.values()), 3), "configs": rows,
            "overlapped": total(c.get("overlapped") for c in configs)}


def line(totals: dict, wall_s: float | None) -> str:
    """`time: 212 s - start 9 s, imports 21 s, ..., other 0 s` (other: the wall minus the phases)."""
    def s(v: float) -> str:
        return f"{v:.0f} s" if abs(v) >= 10 else f"{v:.1f} s"

    parts = [f"{LABELS[p]} {s(totals.get(p) or 0.0)}" for p in PHASES]
    if wall_s is None:
        return f"time: {s(sum((totals.get(p) or 0.0) for p in PHASES))} in phases - " + ", ".join(parts)
    other = wall_s - sum((totals.get(p) or 0.0) for p in PHASES)
    return f"time: {s(wall_s)} - " + ", ".join(parts + [f"other {s(other)}"])


def table_rows(configs: list[dict]) -> list[list[str]]:
    """Table rows (config, then each phase in seconds) for quantperf.report.table."""
    return [[c["config_id"]] + [f"{c.get(p) or 0.0:.1f}" for p in PHASES] for c in configs]


HEADER = ["config"] + [LABELS[p] + " s" for p in PHASES]
