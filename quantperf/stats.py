"""Pure statistics on samples: summaries, significance, power. No torch, no GPU."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median and spread of a sample set; `cv` is stdev/mean (noise as a first-class result)."""

    n: int
    median: float
    mean: float
    stdev: float
    cv: float
    q1: float
    q3: float
    min: float
    max: float

    @classmethod
    def from_values(cls, values: Sequence[float]) -> "Summary":
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            raise ValueError("Summary.from_values needs at least one value")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite sample in {list(values)!r}")
        mean = float(arr.mean())
        stdev = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        return cls(
            n=int(arr.size),
            median=float(np.median(arr)),
            mean=mean,
            stdev=stdev,
            cv=stdev / abs(mean) if mean else 0.0,
            q1=float(np.percentile(arr, 25)),
            q3=float(np.percentile(arr, 75)),
            min=float(arr.min()),
            max=float(arr.max()),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RatioEstimate:
    """Ratio of medians B/A with a bootstrap confidence interval and a Mann-Whitney p-value."""

    ratio: float
    low: float
    high: float
    confidence: float
    p_value: float
    n_a: int
    n_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def ratio_of_medians(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioEstimate:
    """median(b)/median(a), a percentile bootstrap CI (scipy.stats.bootstrap), and the
    two-sided Mann-Whitney U p-value of the difference between the two sample sets."""
    from scipy import stats

    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.size < 2 or b_arr.size < 2:
        raise ValueError(f"need >= 2 samples per side, got {a_arr.size} and {b_arr.size}")
    point = float(np.median(b_arr) / np.median(a_arr))

    def stat(x, y, axis=-1):
        return np.median(y, axis=axis) / np.median(x, axis=axis)

    if np.ptp(a_arr) == 0 and np.ptp(b_arr) == 0:
        low = high = point
    else:
        res = stats.bootstrap(
            (a_arr, b_arr), stat, n_resamples=resamples, confidence_level=confidence,
            method="percentile", vectorized=True, paired=False, random_state=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = float(stats.mannwhitneyu(a_arr, b_arr, alternative="two-sided").pvalue)
    return RatioEstimate(point, low, high, confidence, p, int(a_arr.size), int(b_arr.size))


def paired_ratio(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> RatioEstimate:
    """Ratio of interleaved rounds: median of b_i/a_i with a bootstrap CI, and the two-sided
    Wilcoxon signed-rank p-value of log(b_i/a_i) against 0.

    Round i of each side ran back to back (ABBA order), so a slow phase of the host hits both
    and cancels in the ratio: on an H100 VM whose eager rounds wandered by 30%, the paired
    ratio varied by 5%."""
    from scipy import stats

    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.size != b_arr.size or a_arr.size < 2:
        raise ValueError(f"paired samples need equal sizes >= 2, got {a_arr.size} and {b_arr.size}")
    r = b_arr / a_arr
    point = float(np.median(r))
    if np.ptp(r) == 0:
        low = high = point
        p = 1.0 if point == 1 else 0.0
    else:
        res = stats.bootstrap((r,), np.median, n_resamples=resamples, confidence_level=confidence,
                              method="percentile", random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        p = float(stats.wilcoxon(np.log(r)).pvalue)
    return RatioEstimate(point, low, high, confidence, p, int(a_arr.size), int(b_arr.size))


def min_detectable_change(cv: float, n_a: int, n_b: int | None = None, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """Smallest relative shift of the mean detectable at (alpha two-sided, power) by a
    two-sample test with n_a and n_b samples of coefficient of variation `cv`.

    Normal approximation: delta = (z_{1-alpha/2} + z_{power}) * cv * sqrt(1/n_a + 1/n_b),
    inflated by 1/sqrt(0.955), the asymptotic relative efficiency of Mann-Whitney
    against the t-test on normal data (the rank test is what the gate uses).
    """
    from scipy.stats import norm

    n_b = n_a if n_b is None else n_b
    if n_a < 2 or n_b < 2:
        return math.inf
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(z * cv * math.sqrt(1 / n_a + 1 / n_b) / math.sqrt(3 / math.pi))


def interleaved_order(sides: Sequence[str], rounds: int) -> list[str]:
    """ABBA order (A B B A A B B A ...) for two sides; round-robin, alternating direction, for more.

    Alternating the direction cancels linear drift (thermal, clocks) between sides, which
    a plain ABAB order would book against B.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    order: list[str] = []
    for r in range(rounds):
        block = list(sides) if r % 2 == 0 else list(reversed(sides))
        order.extend(block)
    return order
