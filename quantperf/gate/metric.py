"""The per-metric gate (pure): a metric regresses only when it is worse than its baseline
beyond tolerance AND the difference is statistically significant.

Tolerances (quantperf.gate.tolerances) are fractions per metric kind, with defaults,
overridable per test and per profile. Speed samples are per-round values compared with
Mann-Whitney U (scipy); memory and quality figures are deterministic single values, so for them
the tolerance alone decides. The run-level speed gate over a session's configurations
(`gate_runs`) is here too; its statistics are quantperf.gate.runlevel's.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from ..stats import ratio_of_medians
from ..status import Status

DEFAULT_ALPHA = 0.01
# One-sided level for the run-to-run test. With a handful of recorded runs the t prediction
# interval is wide (3 runs: 2 degrees of freedom); 0.05 keeps a gross regression detectable.
BETWEEN_RUN_ALPHA = 0.05


@dataclass
class Verdict:
    metric: str
    status: str  # ok | regressed | improved | changed-insignificant | new
    baseline: float | None
    current: float
    ratio: float | None  # current/baseline (direction-free)
    worse_by: float | None  # fraction, positive = worse
    tolerance: float
    p_value: float | None
    ci: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == Status.REGRESSED

    def line(self) -> str:
        if self.baseline is None:
            return f"{self.metric}: {self.current:.4g} (no baseline value)"
        p = "" if self.p_value is None else f", p={self.p_value:.3g}"
        ci = "" if self.ci is None else f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"
        return (f"{self.metric}: {self.current:.4g} vs {self.baseline:.4g} (x{self.ratio:.3f}{ci}, "
                f"{'worse' if (self.worse_by or 0) > 0 else 'better'} by {abs(self.worse_by or 0) * 100:.1f}%, "
                f"tol {self.tolerance * 100:.0f}%{p}) -> {self.status}")

    def to_dict(self) -> dict:
        return asdict(self)


MIN_BASELINE_RUNS = 3
# Quality figures near zero (a divergence, a log ratio) make relative changes meaningless:
# a change smaller than this absolute amount is never a regression.
ABSOLUTE_FLOOR = {"ln_ppl_ratio": 0.002, "mean_kld": 2e-4, "rms_dp": 1e-3, "top1_agreement": 0.005}


def between_run_p(run_medians: list[float], current: float, higher_is_better: bool) -> float:
    """One-sided p-value that `current` is worse than the recorded runs' medians, from the t
    prediction interval of a new observation: t = (current - mean) / (sd * sqrt(1 + 1/n)), n-1 df.

    Round-to-round noise within one run understates how far whole runs wander (host phases,
    clocks, placement): this term carries the run-to-run variance the within-run test lacks."""
    from scipy.stats import t as student_t

    n = len(run_medians)
    mean = statistics.fmean(run_medians)
    sd = statistics.stdev(run_medians)
    if sd == 0:
        return 0.0 if (current < mean if higher_is_better else current > mean) else 1.0
    score = (current - mean) / (sd * (1 + 1 / n) ** 0.5)
    if not higher_is_better:
        score = -score
    return float(student_t.cdf(score, df=n - 1))


def compare_metric(name: str, baseline_samples: list[float], current_samples: list[float], higher_is_better: bool,
                   tolerance: float, alpha: float = DEFAULT_ALPHA,
                   baseline_run_medians: list[float] | None = None) -> Verdict:
    """Gate one metric. With >= 3 recorded baseline runs, a change must also stand out from the
    run-to-run spread (between_run_p < BETWEEN_RUN_ALPHA); with fewer, only the within-run test applies and
    the verdict says so."""
    if not baseline_samples:
        return Verdict(name, Status.NEW, None, float(current_samples[0]), None, None, tolerance, None)
    deterministic = len(baseline_samples) < 2 or len(current_samples) < 2
    if deterministic:
        base, cur = float(baseline_samples[0]), float(current_samples[0])
        ratio = cur / base if base else float("inf")
        p, ci, significant = None, None, True
    else:
        est = ratio_of_medians(baseline_samples, current_samples, confidence=1 - alpha)
        base = statistics.median(baseline_samples)
        ratio, p, ci = est.ratio, est.p_value, (est.low, est.high)
        cur = base * ratio
        significant = p < alpha
    notes: list[str] = []
    runs = list(baseline_run_medians or [])
    if not deterministic:
        if len(runs) >= MIN_BASELINE_RUNS:
            base = statistics.fmean(runs)
            ratio = cur / base
            p_between = between_run_p(runs, cur, higher_is_better)
            p_better = between_run_p(runs, cur, not higher_is_better)
            notes.append(f"{len(runs)} baseline runs: between-run p={min(p_between, p_better):.3g}")
            significant = significant and min(p_between, p_better) < BETWEEN_RUN_ALPHA
        else:
            notes.append(f"{len(runs) or 1} baseline run(s): run-to-run spread unknown, record >= {MIN_BASELINE_RUNS}")
    worse_by = (1 - ratio) if higher_is_better else (ratio - 1)
    floor = ABSOLUTE_FLOOR.get(name)
    if floor is not None and abs(cur - base) <= floor:
        worse_by = 0.0
        notes.append(f"within the absolute floor {floor:g}")
    if worse_by > tolerance:
        status = Status.REGRESSED if significant else Status.CHANGED_INSIGNIFICANT
    elif -worse_by > tolerance:
        status = Status.IMPROVED if significant else Status.CHANGED_INSIGNIFICANT
    else:
        status = Status.OK
    return Verdict(name, status, base, cur, ratio, worse_by, tolerance, p, ci, notes)


def gate_metrics(metrics: dict, entry: dict, tolerance_for, alpha: float = DEFAULT_ALPHA) -> list[Verdict]:
    """Gate a result's metrics (name -> results.Metric) against a baseline entry; `tolerance_for(kind)`
    gives the tolerance of a metric kind. Metrics the baseline does not hold are not gated."""
    verdicts = []
    for name, m in metrics.items():
        base = entry["metrics"].get(name)
        if base is None:
            continue
        verdicts.append(compare_metric(name, base["samples"], m.samples, m.higher_is_better, tolerance_for(m.kind),
                                       alpha, base.get("run_medians")))
    return verdicts


# -- the run-level gate (speed) ------------------------------------------------------------
# Rounds of one run share the machine's state: they estimate the run's median, they are not
# independent samples. The gate therefore works on run medians (log scale): the noise of a run
# is pooled over every configuration of the profile, mode and metric (quantperf.gate.runlevel), the
# common shift of this session against the baseline is estimated over configurations and
# removed, and each configuration is gated on its residual with a Bonferroni correction over
# the configurations and metrics gated in the session.
SESSION_GAP_MINUTES = 30  # runs of one host and boot further apart than this are separate sessions


def session_ids(runs: list[dict]) -> list[str]:
    """A session id for each recorded run (the dicts baselines keep): runs of one host and boot
    that started less than SESSION_GAP_MINUTES apart are one sitting."""
    from .runlevel import assign_sessions

    return assign_sessions(runs, SESSION_GAP_MINUTES)


def gate_runs(current: dict[str, float], baselines: dict[str, list[dict]], metric: str, higher_is_better: bool,
              tolerance: float, alpha: float, family_size: int, current_run: dict | None = None):
    """Gate the current run's value of `metric` for each configuration (config id -> median of
    its rounds) against the recorded runs of every configuration of the same profile and mode.

    Returns (verdicts by config id, the session shift, the noise model). Configurations without
    recorded runs get no verdict."""
    import math

    from .runlevel import RunRecord, fit_noise, gate, session_shift

    flat = [(cid, run) for cid, runs in baselines.items() for run in runs]
    sessions = session_ids([run for _, run in flat])
    records = [RunRecord(config_id=cid, metric=metric, value=float(run["value"]), session_id=sid,
                         run_id=str(run.get("run_id")), higher_is_better=higher_is_better)
               for (cid, run), sid in zip(flat, sessions)]
    gated = {cid: v for cid, v in current.items() if baselines.get(cid)}
    if not gated:
        return {}, None, None
    model = fit_noise(records)
    means = {cid: sum(math.log(r["value"]) for r in runs) / len(runs) for cid, runs in baselines.items() if runs}
    mean_runs = sum(len(baselines[c]) for c in gated) / len(gated)
    shift = session_shift(gated, means, model.sigma, mean_runs)
    verdicts = {}
    for cid, value in gated.items():
        base = [r for r in records if r.config_id == cid]
        verdicts[cid] = gate(value, base, model, shift, tolerance, alpha, family_size, higher_is_better)
    return verdicts, shift, model
