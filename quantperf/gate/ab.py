"""The A/B decisions of the upgrade check and of `compare`: the interval over process pairs,
the verdict of an interval of a ratio against a tolerance, the planned looks and their
confidence, the A/A-calibrated tolerance, B's quality against A's, and a claim's verdicts in
A and in B. Pure functions; the measuring lives in quantperf.experiments."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..status import Status

# a machine whose A/A pairs wander by s cannot certify differences smaller than a few s
CALIBRATION_K = 3.0


def block_log_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """One ABBA block: log((B1 + B2) / (A1 + A2)) of per-token times."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a block needs the same number of rounds per side, got {len(a)} and {len(b)}")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("per-token times must be positive")
    return math.log(sum(b) / sum(a))


def pair_mean(block_logs: Sequence[float]) -> float:
    if not block_logs:
        raise ValueError("a pair needs at least one block")
    return float(sum(block_logs) / len(block_logs))


@dataclass(frozen=True)
class Interval:
    """Ratio B/A (geometric mean over pairs) with a Student-t interval over pairs."""

    ratio: float
    low: float
    high: float
    confidence: float
    pairs: int
    df: int
    log_mean: float
    log_sd: float

    def to_dict(self) -> dict:
        return asdict(self)


def pair_interval(pair_means: Sequence[float], confidence: float) -> Interval:
    """mean of the pair means (log scale) +- t_{P-1} * sd / sqrt(P), back on the ratio scale."""
    from scipy.stats import t

    n = len(pair_means)
    if n < 2:
        raise ValueError(f"an interval over pairs needs >= 2 pairs, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = float(statistics.fmean(pair_means))
    sd = float(statistics.stdev(pair_means))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(math.exp(m), math.exp(m - half), math.exp(m + half), confidence, n, n - 1, m, sd)


def decide(low: float, high: float, tolerance: float) -> Status:
    """The verdict of an interval [low, high] of the time ratio B/A against a tolerance tau:
    REGRESSED (slower: all above 1+tau), IMPROVED (faster: all below 1/(1+tau)), OK (all inside:
    the same within tolerance, equivalence shown), else INCONCLUSIVE."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    up, down = 1 + tolerance, 1 / (1 + tolerance)
    if low > up:
        return Status.REGRESSED
    if high < down:
        return Status.IMPROVED
    if low >= down and high <= up:
        return Status.OK
    return Status.INCONCLUSIVE


def planned_looks(pairs: int, blocks: int, max_blocks: int | None) -> int:
    """Looks planned before measuring: the first after `pairs` x `blocks`, then one after each
    extra pair of `blocks` blocks that fits in `max_blocks` (None: no extra look)."""
    if pairs < 3:
        raise ConfigError(f"--pairs must be >= 3 (an interval over pairs needs a spread), got {pairs}")
    if blocks < 1:
        raise ConfigError(f"--blocks must be >= 1, got {blocks}")
    if max_blocks is None:
        return 1
    if max_blocks < pairs * blocks:
        raise ConfigError(f"--max-blocks {max_blocks} is below the planned {pairs} pairs x {blocks} blocks "
                          f"= {pairs * blocks}")
    return 1 + (max_blocks - pairs * blocks) // blocks


def look_confidence(alpha: float, looks: int) -> float:
    """Bonferroni over the planned looks: each look at alpha / looks."""
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
    return 1 - alpha / looks


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled standard deviation of several samples (each about its own mean) and its df."""
    ss = df = 0
    for g in groups:
        if len(g) >= 2:
            m = statistics.fmean(g)
            ss += sum((x - m) ** 2 for x in g)
            df += len(g) - 1
    return (math.sqrt(ss / df) if df else math.nan), df


def calibrated_tolerance(configured: float, spread: float | None, k: float = CALIBRATION_K) -> float:
    """max(configured, exp(k * spread) - 1): the tolerance a run uses given an A/A spread."""
    if spread is None or not math.isfinite(spread):
        return configured
    return max(configured, math.exp(k * spread) - 1)


# The reference pass stores float32 log-probabilities and the compare pass works in float64, so
# the same model in the same environment shows a mean KLD of ~1e-8 (measured: 2e-8 on the fixture
# model, torch-fp32 and bnb-int8 on CPU). Below these, outputs are reported as identical.
IDENTICAL_BELOW = {"mean_kld": 1e-6, "ln_ppl_ratio": 1e-6}


def quality_verdict(stats: dict, quality_class: str) -> tuple[Status, list[str]]:
    """B's figures against A's reference: `beyond-limits` (the backend class's quality limits,
    quantperf.divergence), `changed` (any change above float32 rounding), or `identical`."""
    from ..divergence import limit_violations

    violations = limit_violations(quality_class, stats)
    if violations:
        return Status.BEYOND_LIMITS, violations
    identical = (stats["mean_kld"] < IDENTICAL_BELOW["mean_kld"] and stats["top1_agreement"] == 1
                 and abs(stats["ln_ppl_ratio"]) < IDENTICAL_BELOW["ln_ppl_ratio"])
    return (Status.IDENTICAL if identical else Status.CHANGED), []


def compare_verdict(low: float, high: float, higher_is_better: bool, tolerance: float) -> Status:
    """REGRESSED / IMPROVED / OK / INCONCLUSIVE of an interval of NEW/OLD (oriented so that
    worse is above 1, then decided as the upgrade check decides a time ratio)."""
    worse_low, worse_high = (1 / high, 1 / low) if higher_is_better else (low, high)
    return decide(worse_low, worse_high, tolerance)


def equality_status(same: bool) -> Status:
    """A figure that is zero on a side has no ratio: only equality can be said."""
    return Status.OK if same else Status.CHANGED


def takeaway_status(verdict_a: str, verdict_b: str) -> Status:
    """A claim evaluated in A and in B: OK when both verdicts agree, INCONCLUSIVE when they differ
    and one is inconclusive, FLIPPED when both are conclusive and differ."""
    if verdict_a == verdict_b:
        return Status.OK
    return Status.INCONCLUSIVE if Status.INCONCLUSIVE in (verdict_a, verdict_b) else Status.FLIPPED


def memory_verdict(a: Sequence[float | None], b: Sequence[float | None], tolerance: float,
                   confidence: float) -> tuple[Status, float | None, float | None, float | None]:
    """One memory figure of a configuration in A and in B, one value per process pair: the ratio
    B/A with a Student-t interval over the pairs, decided as a time ratio is (more memory is
    worse). A figure that does not vary between pairs (the weights) is a point: any change
    beyond the tolerance is decided. Zero on a side: only equality (no ratio). Returns
    (verdict, ratio, low, high)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return Status.INCONCLUSIVE, None, None, None
    if any(x <= 0 or y <= 0 for x, y in pairs):
        return equality_status(all(x == y for x, y in pairs)), None, None, None
    logs = [math.log(y / x) for x, y in pairs]
    if len(logs) < 2 or max(logs) - min(logs) < 1e-12:
        r = math.exp(statistics.fmean(logs))
        return decide(r, r, tolerance), r, r, r
    est = pair_interval(logs, confidence)
    return decide(est.low, est.high, tolerance), est.ratio, est.low, est.high


def ab_test_status(verdict: str | None) -> Status | str | None:
    """The test outcome of an A/B verdict under `pytest --qp-against`: quality beyond the class
    limits fails as a regression; outputs identical or changed within limits, a figure only
    compared for equality, and a claim that holds in both pass; every other verdict is its own
    outcome (regressed, flipped and error fail; inconclusive warns)."""
    if verdict == Status.BEYOND_LIMITS:
        return Status.REGRESSED
    if verdict in (Status.IDENTICAL, Status.CHANGED, Status.HOLDS):
        return Status.OK
    return verdict
