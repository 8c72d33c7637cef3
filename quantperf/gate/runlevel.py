"""Run-level statistics for the regression gate (pure: numpy and scipy only).

Rounds of one run share the machine's state: they estimate the run's median, they are not
independent samples. So the unit here is the run (its median, on the log scale), and the
session it ran in (a sitting of one machine):

    log y[c, r] = mu_c + a_s(r) + e[c, r]

mu_c is configuration c's level, a_s the common shift of session s (the whole machine faster or
slower: clocks, neighbours, thermal state), e the run-to-run noise left (including any
configuration-specific session effect). From a baseline holding runs of many configurations,
`fit_noise` estimates the session shifts and pools the residual variance over every
configuration (many degrees of freedom instead of the two a three-run baseline of one
configuration has). `session_shift` estimates the current run's shift as the median over
configurations, and `gate` judges each configuration on its residual with a Student-t interval
at a Bonferroni-corrected level:

- regressed: the interval lies wholly beyond the tolerance on the worse side;
- ok: its worse end is within the tolerance (a regression of tolerance size would have shown);
- improved: it lies wholly beyond the tolerance on the better side (a stale baseline);
- inconclusive: otherwise; the verdict states its noise floor, the smallest worsening this
  rule flags with 80% power.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime

from ..errors import ConfigError
from ..status import Status

# Asymptotic standard error of a median relative to a mean, for normal data: sqrt(pi/2).
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
MIN_SHIFT_CONFIGS = 3  # fewer configurations cannot separate a session shift from a real change


@dataclass(frozen=True)
class RunRecord:
    """One recorded run of one configuration: the median of its rounds, who measured it when."""

    config_id: str
    metric: str
    value: float
    session_id: str
    run_id: str
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise ConfigError(f"run {self.run_id} of {self.config_id}: field 'value' ({self.metric}) must be a "
                              "positive "
                              f"finite number, got {self.value!r}")


@dataclass
class NoiseModel:
    """Pooled run-to-run noise (log scale, ~ relative) of one profile, mode and metric."""

    sigma: float | None  # sd of a run's log value around its configuration's level, session shift removed
    df: float
    session_shifts: dict[str, float]
    sigma_session: float | None  # sd of the sessions' common shifts
    sigma_within_session: float | None  # sd between runs of one configuration in one session
    n_records: int
    n_configs: int
    n_sessions: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_noise(records: list[RunRecord]) -> NoiseModel:
    """Estimate session shifts and the pooled residual noise from baseline runs."""
    if not records:
        raise ConfigError("fit_noise needs at least one recorded run")
    logs: dict[str, list[tuple[str, float]]] = {}
    for r in records:
        logs.setdefault(r.config_id, []).append((r.session_id, math.log(r.value)))
    mu = {c: statistics.fmean(v for _, v in runs) for c, runs in logs.items()}
    sessions = sorted({s for runs in logs.values() for s, _ in runs})
    notes = []
    shifts = {s: 0.0 for s in sessions}
    separable = len(logs) >= 2 and len(sessions) >= 2
    if separable:
        for s in sessions:
            per_config = [statistics.fmean(v - mu[c] for ss, v in runs if ss == s) for c, runs in logs.items()
                          if any(ss == s for ss, _ in runs)]
            shifts[s] = statistics.median(per_config)
    elif len(sessions) >= 2:
        notes.append("one configuration: session shifts cannot be told from its own changes; folded into the noise")
    residuals = [v - mu[c] - shifts[s] for c, runs in logs.items() for s, v in runs]
    df = len(records) - len(logs) - (len(sessions) - 1 if separable else 0)
    if df < 1:
        notes.append("one run per configuration: the run-to-run noise is unknown; record more runs")
        sigma = None
        df = 0
    else:
        sigma = math.sqrt(sum(u * u for u in residuals) / df)
    within = []
    for c, runs in logs.items():
        for s in sessions:
            vals = [v for ss, v in runs if ss == s]
            if len(vals) >= 2:
                m = statistics.fmean(vals)
                within.append((sum((v - m) ** 2 for v in vals), len(vals) - 1))
    sigma_within = math.sqrt(sum(a for a, _ in within) / sum(b for _, b in within)) if within else None
    sigma_session = statistics.stdev(shifts.values()) if separable and len(sessions) >= 2 else None
    return NoiseModel(sigma, float(df), shifts, sigma_session, sigma_within, len(records), len(logs), len(sessions),
                      notes)


@dataclass
class Shift:
    """The current run's common shift against the baseline (log scale), over configurations."""

    log_shift: float
    se: float
    n_configs: int
    notes: list[str] = field(default_factory=list)

    @property
    def factor(self) -> float:
        return math.exp(self.log_shift)

    def line(self, higher_is_better: bool = True) -> str:
        if self.n_configs < MIN_SHIFT_CONFIGS:
            return "; ".join(self.notes) or "no session shift removed"
        pct = abs(self.factor - 1) * 100
        if higher_is_better:
            word = "faster" if self.factor > 1 else "slower"
        else:
            word = "slower" if self.factor > 1 else "faster"
        return (f"this machine runs {pct:.0f}% {word} than when the baseline was recorded (x{self.factor:.3f}, median "
                f"over {self.n_configs} configurations, removed before gating)")

    def to_dict(self) -> dict:
        return asdict(self) | {"factor": self.factor}


def session_shift(current: dict[str, float], baseline_means: dict[str, float], sigma: float | None = None,
                  baseline_runs: float = 1.0) -> Shift:
    """Median over configurations of log(current) - the baseline's mean log value; its standard
    error sqrt(pi/2) * sigma * sqrt(1 + 1/runs) / sqrt(n). Fewer than MIN_SHIFT_CONFIGS
    configurations: no shift is removed (a single configuration's change cannot be told apart
    from the machine's)."""
    for cid, v in current.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"current value of {cid} must be a positive finite number, got {v!r}")
    diffs = [math.log(current[c]) - baseline_means[c] for c in current if c in baseline_means]
    if len(diffs) < MIN_SHIFT_CONFIGS:
        return Shift(0.0, 0.0, len(diffs), [f"no session shift removed: {len(diffs)} configuration(s) with a baseline, "
                                             f"{MIN_SHIFT_CONFIGS} needed to tell the machine's shift from a change"])
    se = 0.0 if sigma is None else MEDIAN_SE_FACTOR * sigma * math.sqrt(1 + 1 / baseline_runs) / math.sqrt(len(diffs))
    return Shift(statistics.median(diffs), se, len(diffs))


@dataclass
class GateVerdict:
    metric: str
    status: str  # regressed | ok | improved | inconclusive
    current: float
    baseline: float  # the baseline's level (geometric mean of its recorded runs)
    raw_ratio: float  # current / baseline, before the session shift
    ratio: float  # current / (baseline x shift): what the gate judges
    ci: tuple[float, float]  # interval of `ratio` (each side at alpha / family)
    shift: float
    noise_floor: float | None  # smallest worsening flagged with 80% power (fraction)
    tolerance: float
    level: float  # alpha / family, each side
    runs: int
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == Status.REGRESSED

    def line(self) -> str:
        floor = "unknown" if self.noise_floor is None else f"{self.noise_floor * 100:.0f}%"
        return (f"{self.metric}: {self.current:.4g} vs {self.baseline:.4g} (raw x{self.raw_ratio:.3f}; "
                f"x{self.ratio:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}] after the session shift x{self.shift:.3f}; "
                f"tolerance {self.tolerance * 100:g}%, noise floor {floor}, {self.runs} baseline runs) "
                f"-> {self.status}")

    def to_dict(self) -> dict:
        return asdict(self)


def noise_floor(se: float, df: float, tolerance: float, alpha: float, family_size: int = 1,
                power: float = 0.8) -> float:
    """The smallest true worsening (fraction) the gate flags as regressed with `power`:
    exp(log(1 + tol) + (t_{1-alpha/m, df} + t_{power, df}) * se) - 1."""
    from scipy.stats import t as student_t

    if se < 0 or df <= 0:
        raise ValueError(f"noise_floor needs se >= 0 and df > 0, got se={se}, df={df}")
    a = alpha / max(family_size, 1)
    return math.exp(math.log1p(tolerance) + (student_t.ppf(1 - a, df) + student_t.ppf(power, df)) * se) - 1


def gate(current_value: float, baseline: list[RunRecord], model: NoiseModel, shift: Shift, tolerance: float,
         alpha: float, family_size: int, higher_is_better: bool) -> GateVerdict:
    """Judge one configuration's run against its recorded runs (see the module docstring)."""
    from scipy.stats import t as student_t

    if not baseline:
        raise ConfigError("gate needs at least one recorded run of the configuration")
    if not (math.isfinite(current_value) and current_value > 0):
        raise ConfigError(f"current value of {baseline[0].config_id} must be a positive finite number, got "
                          f"{current_value!r}")
    metric = baseline[0].metric
    mu = statistics.fmean(math.log(r.value) for r in baseline)
    d = math.log(current_value) - mu - shift.log_shift
    worse = -d if higher_is_better else d
    level = alpha / max(family_size, 1)
    tol = math.log1p(tolerance)
    notes = list(model.notes) + list(shift.notes)
    base = dict(metric=metric, current=current_value, baseline=math.exp(mu), raw_ratio=math.exp(d + shift.log_shift),
                ratio=math.exp(d), shift=shift.factor, tolerance=tolerance, level=level, runs=len(baseline))
    if model.sigma is None:
        return GateVerdict(status=Status.INCONCLUSIVE, ci=(float("nan"), float("nan")), noise_floor=None, notes=notes,
                           **base)
    se = math.sqrt(model.sigma ** 2 * (1 + 1 / len(baseline)) + shift.se ** 2)
    half = student_t.ppf(1 - level, model.df) * se
    lo, hi = worse - half, worse + half
    if lo > tol:
        status = Status.REGRESSED
    elif hi < -tol:
        status = Status.IMPROVED
    elif hi <= tol:
        status = Status.OK
    else:
        status = Status.INCONCLUSIVE
    ci = (math.exp(d - half), math.exp(d + half))
    return GateVerdict(status=status, ci=ci, noise_floor=noise_floor(se, model.df, tolerance, alpha, family_size),
                       notes=notes, **base)


def confirm(first: GateVerdict, second: GateVerdict) -> GateVerdict:
    """A configuration flagged regressed is re-measured once in a fresh process: it is regressed
    only if both runs are; otherwise the second verdict stands, noted."""
    if first.status == Status.REGRESSED and second.status != Status.REGRESSED:
        second.notes.append(f"flagged once (x{first.ratio:.3f}), not confirmed by a fresh process")
    return second


def assign_sessions(runs: list[dict], gap_minutes: float = 30) -> list[str]:
    """A session id for each run dict (`host`, `boot_id`, `started_at`): runs of one host and boot
    that started less than `gap_minutes` after the previous one are one sitting."""
    ids = [""] * len(runs)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.get("host"), r.get("boot_id")), []).append(i)
    for (host, boot), idx in groups.items():
        def when(i):
            t = runs[i].get("started_at")
            return datetime.fromisoformat(t) if t else None
        timed = sorted((i for i in idx if when(i)), key=when)
        start, prev, n = None, None, 0
        for i in timed:
            t = when(i)
            if prev is None or (t - prev).total_seconds() > gap_minutes * 60:
                n += 1
                start = t
            prev = t
            ids[i] = f"{host}-{boot}-{start.isoformat(timespec='minutes')}"
        for i in idx:
            if not ids[i]:
                ids[i] = f"{host}-{boot}"
    return ids


# -- host-aware gating ---------------------------------------------------------------------
# Across hosts of one GPU model eager and graph figures shift by a third (x1.307 on the H100),
# and not by the same factor for every configuration, so a baseline pooled over hosts has a
# noise floor no change can pass; within one host the spread is ~2%. Kernel mode's cross-lease
# spread is 0.1-0.3%: it keeps pooling over the hosts of a profile.
HOST_POOLED_MODES = ("kernel",)
MIN_HOST_SESSIONS = 3  # sessions (sittings) from this host before eager and graph are gated on them


@dataclass
class HostScope:
    """Which recorded runs a mode is gated against on this host: `runs` (config id -> run dicts),
    or none, with `status` NO_BASELINE and a message saying what it would take."""

    host: str | None
    mode: str
    pooled: bool  # every host's runs (kernel mode)
    sessions_here: int
    needed: int
    other_hosts: int
    runs: dict[str, list[dict]]
    status: str | None = None  # NO_BASELINE when this host has too few sessions
    message: str = ""


def host_scope(baselines: dict[str, list[dict]], host: str | None, mode: str,
               min_sessions: int = MIN_HOST_SESSIONS, gap_minutes: float = 30) -> HostScope:
    """The runs of `baselines` (config id -> recorded run dicts with host, boot_id, started_at)
    that gate `mode` on `host`: every host's in kernel mode; in other modes this host's, if they
    come from at least `min_sessions` sessions (or if every run is this host's: a baseline of one
    host has no other host to keep out), else none and a 'no runs from this host' outcome."""
    if not any(baselines.values()):  # nothing recorded for this metric: nothing to scope (gate_runs says so)
        return HostScope(host, mode, mode in HOST_POOLED_MODES, 0, 0, 0, {})
    # a run that names no host (recorded from results that did not say) is not known to be another's
    hosts = {r.get("host") for runs in baselines.values() for r in runs} - {None}
    if mode in HOST_POOLED_MODES:
        return HostScope(host, mode, True, 0, 0, len(hosts - {host}), dict(baselines))
    mine = {cid: [r for r in runs if r.get("host") is None or (host is not None and r.get("host") == host)]
            for cid, runs in baselines.items()}
    mine = {cid: runs for cid, runs in mine.items() if runs}
    flat = [r for runs in mine.values() for r in runs]
    sessions = len(set(assign_sessions(flat, gap_minutes))) if flat else 0
    others = len(hosts - {host})
    if flat and not others:  # every run is this host's: nothing from another host to keep out
        return HostScope(host, mode, False, sessions, 0, 0, mine)
    if sessions >= min_sessions:
        return HostScope(host, mode, False, sessions, min_sessions, others, mine)
    message = (f"no runs from this host: {sessions} sitting(s) of host {host or 'unknown'} recorded for {mode} mode, "
               f"{min_sessions} needed to gate {mode} figures on it ({min_sessions - sessions} more sitting(s) "
               f"here; the baseline's runs from {others} other host(s) are not used: hosts of one GPU model differ "
               "by more than a change to be caught)")
    return HostScope(host, mode, False, sessions, min_sessions, others, {}, Status.NO_BASELINE, message)
