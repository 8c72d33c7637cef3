"""Change points in a metric's history: E-divisive means, and what changed in the environment there.

The method is E-divisive (Matteson and James, "A Nonparametric Approach for Multiple Change Point
Analysis of Multivariate Data", JASA 109(505), 2014) as MongoDB runs it on its CI performance
history (Daly, Brown, Ingo, O'Leary, Bradford, "The Use of Change Point Detection to Identify
Software Performance Regressions in a Continuous Integration System", ICPE 2020): with alpha = 1
the divergence of the two sides of a split tau of a segment x[0:n] is

    Q(tau) = m k / (m + k) * (2/(m k) sum|x_i - y_j| - 1/C(m,2) sum|x_i - x_l| - 1/C(k,2) sum|y_j - y_l|)

(m = tau points on the left, k = n - tau on the right; the right side reaches the segment's end,
as MongoDB's implementation does). The best split over every current segment is a change point
if a permutation test says so: the points of each segment are shuffled (seeded RNG), the best Q
recomputed, and p = (1 + #{Q_perm >= Q}) / (1 + permutations) must be below `p_value`. Accepted
points split their segment and the search repeats (recursive bisection) until a test fails.
Segments are never shorter than `min_size` sittings.

MongoDB's own package (`signal-processing-algorithms`) is not used: its only distribution is a
source archive pinned to Python ~3.11 and numpy < 2. This is a numpy implementation of the
same statistic, O(n^2) per segment through prefix sums of the distance matrix.

Only the statistics are here; whether a change point is a regression is decided in
`quantperf.gate.history`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_P_VALUE = 0.01
DEFAULT_PERMUTATIONS = 199
DEFAULT_MIN_SIZE = 3


@dataclass(frozen=True)
class ChangePoint:
    """A level shift that begins at `index` (the first point of the new level)."""

    index: int
    q: float  # the E-divisive divergence of the split
    p_value: float  # of the permutation test
    before: float  # median of the segment before it (up to the previous change point)
    after: float  # median of the segment after it (up to the next change point)

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 and self.after > 0 else math.nan

    def to_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}


def _q_all(x: np.ndarray, min_size: int) -> np.ndarray:
    """Q(tau) for tau = min_size .. n - min_size (other entries -inf), alpha = 1."""
    n = len(x)
    q = np.full(n + 1, -np.inf)
    if n < 2 * min_size:
        return q
    d = np.abs(x[:, None] - x[None, :])
    upper = np.triu(d, 1)
    a = upper.sum(axis=0)  # a[k] = sum_{i<k} d[i, k]
    b = upper.sum(axis=1)  # b[k] = sum_{j>k} d[k, j]
    total = upper.sum()
    w_left = np.concatenate([[0.0], np.cumsum(a)])  # w_left[tau] = within-left sum for the first tau points
    cross = np.concatenate([[0.0], np.cumsum(b - a)])  # cross[tau] = sum_{i<tau<=j} d[i, j]
    taus = np.arange(min_size, n - min_size + 1)
    m = taus.astype(float)
    k = n - m
    wl, cr = w_left[taus], cross[taus]
    wr = total - wl - cr
    within_l = np.where(m > 1, wl / np.maximum(m * (m - 1) / 2, 1), 0.0)
    within_r = np.where(k > 1, wr / np.maximum(k * (k - 1) / 2, 1), 0.0)
    e = 2 * cr / (m * k) - within_l - within_r
    q[taus] = m * k / (m + k) * e
    return q


def _best(x: np.ndarray, bounds: list[int], min_size: int) -> tuple[float, int]:
    """The best split over every segment [bounds[i], bounds[i+1]): (Q, absolute index)."""
    best_q, best_at = -np.inf, -1
    for lo, hi in zip(bounds, bounds[1:]):
        q = _q_all(x[lo:hi], min_size)
        tau = int(np.argmax(q))
        if q[tau] > best_q:
            best_q, best_at = float(q[tau]), lo + tau
    return best_q, best_at


def e_divisive(values, p_value: float = DEFAULT_P_VALUE, permutations: int = DEFAULT_PERMUTATIONS,
               min_size: int = DEFAULT_MIN_SIZE, seed: int = 0) -> list[ChangePoint]:
    """Change points of a series (oldest first), sorted by index; see the module docstring."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("e_divisive needs a one-dimensional series of finite numbers")
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2, got {min_size}")
    rng = np.random.default_rng(seed)
    bounds = [0, len(x)]
    found: dict[int, tuple[float, float]] = {}
    while True:
        q, at = _best(x, bounds, min_size)
        if at < 0 or not np.isfinite(q) or q <= 0:
            break
        exceed = 0
        for _ in range(permutations):
            shuffled = x.copy()
            for lo, hi in zip(bounds, bounds[1:]):
                shuffled[lo:hi] = rng.permutation(shuffled[lo:hi])
            if _best(shuffled, bounds, min_size)[0] >= q:
                exceed += 1
        p = (1 + exceed) / (1 + permutations)
        if p >= p_value:
            break
        found[at] = (q, p)
        bounds = sorted(bounds + [at])
    points = []
    for i, at in enumerate(sorted(found)):
        edges = sorted(found)
        lo = edges[i - 1] if i else 0
        hi = edges[i + 1] if i + 1 < len(edges) else len(x)
        points.append(ChangePoint(at, found[at][0], found[at][1], float(np.median(x[lo:at])),
                                  float(np.median(x[at:hi]))))
    return points


def log_change_points(values, **kwargs) -> list[ChangePoint]:
    """Change points of a positive series, found on its logarithm (a shift is relative), with the
    segment medians reported in the series' own units."""
    v = np.asarray(values, dtype=float)
    if np.any(v <= 0):
        raise ValueError("log_change_points needs positive values")
    return [ChangePoint(c.index, c.q, c.p_value, math.exp(c.before), math.exp(c.after))
            for c in e_divisive(np.log(v), **kwargs)]


@dataclass
class EnvironmentDiff:
    """What differs between two sittings' environments (each changed field: (before, after))."""

    packages: dict[str, tuple] = field(default_factory=dict)
    driver: tuple | None = None
    gpu: dict[str, tuple] = field(default_factory=dict)
    python: tuple | None = None
    git_revision: tuple | None = None
    runtime: dict[str, tuple] = field(default_factory=dict)  # the configuration's runtime identity
    backend_identity: dict[str, tuple] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(asdict(self).values())

    @property
    def environment_changed(self) -> bool:
        """Anything beyond the git revision changed (the suite's own code changes every night)."""
        return any(v for k, v in asdict(self).items() if k != "git_revision")

    def lines(self) -> list[str]:
        """Human lines, one per change: 'torch 2.11.0 -> 2.12.0', 'driver 550.54 -> 560.28'."""
        out = [f"{k} {a or 'absent'} -> {b or 'absent'}" for k, (a, b) in sorted(self.packages.items())]
        for name, change in (("driver", self.driver), ("python", self.python), ("git", self.git_revision)):
            if change:
                out.append(f"{name} {change[0] or '?'} -> {change[1] or '?'}")
        for prefix, d in (("gpu", self.gpu), ("runtime", self.runtime), ("backend", self.backend_identity)):
            out += [f"{prefix} {k} {a} -> {b}" for k, (a, b) in sorted(d.items())]
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _dict_diff(a: dict | None, b: dict | None) -> dict[str, tuple]:
    a, b = a or {}, b or {}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def environment_diff(before, after, config: str | None = None) -> EnvironmentDiff:
    """What changed from sitting `before` to sitting `after` (history.store.Sitting): package
    versions, driver, GPU, Python, git revision and, for `config`, its runtime and backend
    identity."""
    ea, eb = before.environment or {}, after.environment or {}

    def pair(x, y):
        return (x, y) if x != y else None

    out = EnvironmentDiff(
        packages={k: v for k, v in _dict_diff(ea.get("packages"), eb.get("packages")).items()},
        driver=pair(ea.get("driver"), eb.get("driver")), gpu=_dict_diff(ea.get("gpu"), eb.get("gpu")),
        python=pair(ea.get("python"), eb.get("python")), git_revision=pair(before.git_revision, after.git_revision))
    if config is not None:
        ca, cb = before.configs.get(config) or {}, after.configs.get(config) or {}
        out.runtime = _dict_diff(ca.get("runtime"), cb.get("runtime"))
        out.backend_identity = _dict_diff(ca.get("backend_identity"), cb.get("backend_identity"))
    return out


@dataclass
class Located:
    """A change point of one configuration's metric, placed in the history: the sitting where the
    new level begins, the one before it, and what changed between them."""

    config: str
    metric: str
    host: str | None  # None: the series pooled every host
    point: ChangePoint
    sitting: object  # history.store.Sitting where the new level begins
    previous: object  # the sitting before it
    diff: EnvironmentDiff
    # environment changes a few sittings either side (offset, diff): a change point found one
    # sitting late or early in noise still points at the upgrade next to it
    nearby: list[tuple[int, EnvironmentDiff]] = field(default_factory=list)


NEARBY = 2  # sittings either side of a change point searched for an environment change


def series(sittings: list, config: str, metric: str) -> tuple[list, list[float]]:
    """The sittings (oldest first) that measured `metric` of `config`, and its median in each."""
    used, values = [], []
    for s in sittings:
        m = ((s.configs.get(config) or {}).get("metrics") or {}).get(metric)
        if m is not None and math.isfinite(m.get("median", math.nan)):
            used.append(s)
            values.append(float(m["median"]))
    return used, values


def locate(sittings: list, config: str, metric: str, host: str | None = None, **kwargs) -> list[Located]:
    """E-divisive change points of one configuration's metric over `sittings` (one host's, or
    all pooled when host is None), each with the environment diff at its sitting. A positive
    metric is searched on its logarithm (a shift is relative); one that can be zero or negative
    (a log ratio) on its values."""
    chosen = [s for s in sittings if host is None or s.host == host]
    used, values = series(chosen, config, metric)
    if len(values) < 2 * kwargs.get("min_size", DEFAULT_MIN_SIZE) or len(set(values)) == 1:
        return []
    search = log_change_points if min(values) > 0 else e_divisive
    out = []
    for c in search(values, **kwargs):
        near = [(off, d) for off in range(-NEARBY, NEARBY + 1) if off and 1 <= c.index + off < len(used)
                and (d := environment_diff(used[c.index + off - 1], used[c.index + off], config)).environment_changed]
        out.append(Located(config, metric, host, c, used[c.index], used[c.index - 1],
                           environment_diff(used[c.index - 1], used[c.index], config), near))
    return out
