"""A configuration's outcome from its gated metrics: the one status a run earns when it was not
measured, when its metrics were gated one by one, when the run-level speed gate judged it, or
when its figures were timed otherwise than its baseline's; and which statuses fail a run."""

from __future__ import annotations

from collections.abc import Iterable

from ..status import Status

# outcomes that fail a gate run, and outcomes that were not gated at all (they count neither way)
FAILING = frozenset({Status.REGRESSED, Status.ERROR})
NOT_GATED = frozenset({Status.NO_BASELINE, Status.SKIPPED, Status.INCOMPARABLE})
# outcomes with nothing to gate against: a test fails under --qp-strict and is skipped otherwise
# (no baseline; a baseline of other runtime settings, quantperf.gate.runtime)
SKIPPED_UNLESS_STRICT = frozenset({Status.NO_BASELINE, Status.INCOMPARABLE})


def run_failure(run_status: str) -> Status | None:
    """A result that holds no figures: SKIPPED when the configuration cannot run here (its
    backend or mode is unavailable), ERROR when it failed; None for a measured result."""
    if run_status in (Status.UNAVAILABLE, Status.MODE_UNSUPPORTED):
        return Status.SKIPPED
    if run_status != Status.OK:
        return Status.ERROR
    return None


def metrics_status(verdicts: Iterable) -> Status:
    """A configuration gated metric by metric (gate.metric.Verdict): REGRESSED when any metric
    regressed, else IMPROVED when any improved, else OK."""
    statuses = [v.status for v in verdicts]
    if Status.REGRESSED in statuses:
        return Status.REGRESSED
    return Status.IMPROVED if Status.IMPROVED in statuses else Status.OK


def speed_status(statuses: Iterable[str]) -> Status:
    """A configuration judged by the run-level speed gate on each gated metric: the worst of
    REGRESSED, INCONCLUSIVE, IMPROVED, in that order, else OK."""
    present = set(statuses)
    return next((s for s in (Status.REGRESSED, Status.INCONCLUSIVE, Status.IMPROVED) if s in present), Status.OK)


def incomparable() -> Status:
    """A run whose runtime settings differ from its baseline's (quantperf.gate.runtime): other code
    ran, so no verdict either way."""
    return Status.INCOMPARABLE


def timed_otherwise() -> Status:
    """Figures timed otherwise than the baseline's (another kernel timing method) are not
    comparable: no verdict either way."""
    return Status.INCONCLUSIVE


def label(status: str) -> str:
    """The word a gate run prints for an outcome: FAILED, SKIPPED or the status in capitals."""
    if status in FAILING:
        return "FAILED"
    if status in NOT_GATED:
        return "SKIPPED"
    return status.upper()
