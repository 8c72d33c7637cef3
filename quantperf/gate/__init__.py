"""Every decision of quantperf: a measurement (a metric against its baseline, a run against its
recorded runs, a claim, an A/B interval) becomes a `Status` here and nowhere else.

- tolerances: the defaults per metric kind and mode, and how overrides layer
- metric: one metric against its baseline samples; the run-level speed gate over a session
- runlevel: run-level statistics (noise model, session shift, a configuration's verdict)
- outcomes: a configuration's outcome from its gated metrics
- takeaways: claims, their verdicts and the one claim check of the suite and `quantperf gate`
- runtime: whether two runs' runtime identities let one gate the other
- ab: the A/B decisions of the upgrade check and of `compare`
"""

from .ab import (
    CALIBRATION_K,
    Interval,
    ab_test_status,
    block_log_ratio,
    calibrated_tolerance,
    compare_verdict,
    decide,
    equality_status,
    look_confidence,
    memory_verdict,
    pair_interval,
    pair_mean,
    planned_looks,
    pooled_sd,
    quality_verdict,
    takeaway_status,
)
from .metric import (
    ABSOLUTE_FLOOR,
    BETWEEN_RUN_ALPHA,
    DEFAULT_ALPHA,
    MIN_BASELINE_RUNS,
    Verdict,
    between_run_p,
    compare_metric,
    gate_metrics,
    gate_runs,
    session_ids,
)
from .outcomes import (
    FAILING,
    NOT_GATED,
    SKIPPED_UNLESS_STRICT,
    incomparable,
    label,
    metrics_status,
    run_failure,
    speed_status,
    timed_otherwise,
)
from .runtime import NO_RUNTIME_NOTE, RuntimeCheck, check_runtime, sides_note
from .takeaways import Claim, ClaimResult, check_claim, classify, evaluate, is_inconclusive, load_claims
from .tolerances import DEFAULT_TOLERANCES, KINDS, parse_tolerances, resolve_tolerance

__all__ = [
    "ABSOLUTE_FLOOR", "BETWEEN_RUN_ALPHA", "CALIBRATION_K", "DEFAULT_ALPHA", "DEFAULT_TOLERANCES", "FAILING", "KINDS",
    "MIN_BASELINE_RUNS", "NOT_GATED", "NO_RUNTIME_NOTE", "SKIPPED_UNLESS_STRICT", "RuntimeCheck", "check_runtime",
    "sides_note", "incomparable", "Claim", "ClaimResult", "Interval", "Verdict", "ab_test_status",
    "between_run_p",
    "block_log_ratio", "calibrated_tolerance", "check_claim", "classify", "compare_metric", "compare_verdict",
    "decide", "equality_status", "evaluate", "gate_metrics", "gate_runs", "is_inconclusive", "label",
    "load_claims", "look_confidence", "memory_verdict", "metrics_status", "pair_interval", "pair_mean",
    "parse_tolerances",
    "planned_looks", "pooled_sd", "quality_verdict", "resolve_tolerance", "run_failure", "session_ids",
    "speed_status", "takeaway_status", "timed_otherwise",
]
