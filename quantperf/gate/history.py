"""Decisions over the results history: the host-aware run-level gate (a mode gated against this
host's recorded runs, or a 'no runs from this host' outcome) and the direction of a change point
in a metric's history."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..status import Status
from .runlevel import MIN_HOST_SESSIONS, HostScope, host_scope


@dataclass
class HostGate:
    """The run-level gate of one mode and metric on one host: verdicts by config id (empty when
    the scope says 'no runs from this host'), the session shift, the noise model, the scope."""

    verdicts: dict
    shift: object
    model: object
    scope: HostScope
    notes: list[str] = field(default_factory=list)


def gate_runs_on_host(current: dict[str, float], baselines: dict[str, list[dict]], metric: str,
                      higher_is_better: bool, tolerance: float, alpha: float, family_size: int, host: str | None,
                      mode: str, min_sessions: int = MIN_HOST_SESSIONS) -> HostGate:
    """`gate.metric.gate_runs` on the runs `runlevel.host_scope` picks for this host and mode:
    eager and graph against this host's runs when it has `min_sessions` sessions, else no verdict
    and the scope's NO_BASELINE message; kernel mode against every host's runs."""
    from .metric import SESSION_GAP_MINUTES, gate_runs

    scope = host_scope(baselines, host, mode, min_sessions, SESSION_GAP_MINUTES)
    if scope.status is not None:
        return HostGate({}, None, None, scope, [scope.message])
    verdicts, shift, model = gate_runs(current, scope.runs, metric, higher_is_better, tolerance, alpha, family_size)
    where = "every host of the profile" if scope.pooled else f"this host's {scope.sessions_here} sitting(s)"
    return HostGate(verdicts, shift, model, scope, [f"{mode} {metric} gated against {where}"])


def change_status(before: float, after: float, higher_is_better: bool, tolerance: float = 0.0) -> Status:
    """The verdict of a change point (a significant level shift from `before` to `after`):
    regressed when the level moved to the worse side by more than `tolerance` (a fraction of the
    level; an absolute amount for a metric that can be zero or negative), improved when it moved
    to the better side by more, ok within it."""
    if before > 0 and after > 0:
        good = after / before if higher_is_better else before / after  # > 1: the new level is better
        worse, better = 1 / good - 1, good - 1
    else:  # a metric that can be zero or negative (a log ratio): the tolerance is absolute
        worse = (before - after) if higher_is_better else (after - before)
        better = -worse
    if worse > tolerance:
        return Status.REGRESSED
    if better > tolerance:
        return Status.IMPROVED
    return Status.OK
