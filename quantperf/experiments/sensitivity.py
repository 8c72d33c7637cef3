"""How sharp is the gate? A/A false alarms, injected-slowdown detection and what each
noise-reduction step buys, measured over repeated fresh-process runs of one configuration.

Protocol (`run_experiment`), for one configuration in `processes` fresh worker processes, one
after another (the suite measures each configuration in a fresh process too):

1. each process loads and warms up as the suite does;
2. the first process calibrates the scenario's unit of injection over a few clean rounds (the
   mean decode time per token; in kernel mode, of one linear call at decode shape). A slowdown
   `s` becomes a device delay `d = t * s / (1 - s)` per unit (the rate falls by `s`), the same
   `d` in every process (a library that got slower adds the same work everywhere);
3. in every process the *sides* run interleaved round by round (round-robin, alternating
   direction, as the takeaways' A/B runs): `clean`, `clean-b` (a second clean side: the A/A
   pair), one `slow-N%` side per slowdown, and the ablation variants -- `gc-on` (garbage
   collector left on during timed regions), `unpinned` (driving thread not pinned to a core),
   `long` (4x new tokens per round). Every side gets one unmeasured round first.

Evaluation (`evaluate`, pure) at the gate's tolerance for the mode:

- noise per side: within-run CV (median over processes), between-process CV of the side's
  medians, and the smallest slowdown a 5-vs-5 round comparison detects (power 0.8);
- the regression gate, as the suite applies it (`runlevel.gate`, run medians on the log scale,
  Student-t interval): trial `p` takes the clean runs of all other processes as its recorded
  baseline and gates process `p`'s `clean-b` side (an A/A trial: a false alarm if flagged) and
  each slowed side (a detection if flagged);
- the interleaved A/B (paired) comparison, as the takeaways use it: per process, the ratio of
  each side to `clean` round by round (`stats.paired_ratio`); flagged when the ratio is worse
  than the tolerance and its confidence interval lies wholly below 1.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..gate import DEFAULT_ALPHA
from ..stats import paired_ratio
from ..status import Status
from .noise import DEFAULT_VARIANTS, VARIANTS, run_noise

CLEAN, AA = "clean", "clean-b"
MIN_GATE_PROCESSES = 4  # a gate trial's baseline: the clean runs of the other processes (>= 3)
CALIBRATION_ROUNDS = 3


@dataclass(frozen=True)
class Side:
    name: str
    slowdown: float = 0.0
    gc_off: bool = True
    pin_cpu: bool = True
    tokens_factor: int = 1


def slow_name(s: float) -> str:
    return f"slow-{s * 100:g}%"


def make_sides(slowdowns: list[float], variants: list[str] | None, mode: str = "eager") -> list[Side]:
    """The experiment's sides; `variants=None` takes the mode's DEFAULT_VARIANTS."""
    if variants is None:
        variants = DEFAULT_VARIANTS[mode]
    for s in slowdowns:
        if not 0 < s < 0.9:
            raise ConfigError(f"slowdown {s!r}: must be a fraction between 0 and 0.9 (0.05 = 5%)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown noise variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    if mode == "kernel":  # kernel rounds have no tokens: `long` means nothing there
        variants = [v for v in variants if v != "long"]
    if mode == "graph" and "long" in variants:
        # measured on an H100: alternating lengths made graph-mode rounds 10x noisier and 2x slower
        raise ConfigError("noise variant 'long' changes the static cache length, which in graph mode recompiles "
                          "between rounds: measure longer rounds as their own configuration (--new-tokens) instead")
    return ([Side(CLEAN), Side(AA)] + [Side(slow_name(s), slowdown=s) for s in sorted(set(slowdowns))]
            + [Side(v, **VARIANTS[v]) for v in variants])


def delay_for(ms_per_token: float, slowdown: float) -> float:
    """Per-token delay that lowers decode tok/s by the fraction `slowdown`."""
    return ms_per_token * slowdown / (1 - slowdown)


def gate_trial(metric: str, baseline_runs: list[float], value: float, higher_is_better: bool, tolerance: float,
               alpha: float):
    """The suite's run-level gate (runlevel.gate) on one configuration: `baseline_runs` (run
    medians, one session) against one run's median. One configuration: no session shift."""
    from ..gate.runlevel import RunRecord, Shift, fit_noise, gate

    records = [RunRecord(config_id="trial", metric=metric, value=v, session_id="experiment", run_id=str(i),
                         higher_is_better=higher_is_better) for i, v in enumerate(baseline_runs)]
    shift = Shift(0.0, 0.0, 0, ["one configuration in one session: no session shift"])
    return gate(value, records, fit_noise(records), shift, tolerance, alpha, 1, higher_is_better)


def run_experiment(spec, *, processes: int, slowdowns: list[float], variants: list[str] | None,
                   isolation: str = "process",
                   model_options: dict | None = None, progress=None, checkpoint=None) -> dict:
    """Measure `spec` in `processes` fresh workers with interleaved sides; returns the raw data
    that `evaluate` reads (JSON-able). `checkpoint(raw)` is called after each process, so an
    interrupted experiment keeps what it measured."""
    from ..envinfo import environment
    from ..scenarios import scenario_for
    from ..scheduler import interleave_rounds, open_side

    if processes < 2:
        raise ConfigError(f"the noise experiment needs >= 2 processes, got {processes}")
    sides = make_sides(slowdowns, variants, spec.mode)
    scenario = scenario_for(spec.mode)
    metric, higher = scenario.primary
    raw: dict = {"config": spec.id, "spec": spec.to_dict(), "rounds": spec.workload.rounds,
                 "sides": [s.name for s in sides],
                 "metric": metric, "higher_is_better": higher,
                 "slowdowns": {s.name: s.slowdown for s in sides if s.slowdown},
                 "variants": [s.name for s in sides if s.name in VARIANTS],
                 "processes": [], "environment": environment()}
    delays: dict[str, float] = {}
    for p in range(processes):
        side = open_side(spec, isolation=isolation, model_options=model_options, environment=raw["environment"])
        entry: dict = {"index": p}
        try:
            if not side.ok:
                raw["status"], raw["reason"] = side.failed.status, side.failed.reason
                return raw
            worker = side.worker
            raw.setdefault("backend_identity", side.info["identity"])
            if not delays:
                cal = worker.rounds(n=CALIBRATION_ROUNDS)
                unit = scenario.injection_unit_ms(cal)
                raw["calibration_ms_per_unit"] = unit
                delays = {s.name: delay_for(unit, s.slowdown) for s in sides if s.slowdown}
                raw["delays_ms"] = delays

            def runner(s: Side):
                def one() -> dict:
                    worker.configure(inject_ms=delays.get(s.name, 0.0), gc_off=s.gc_off, pin_cpu=s.pin_cpu,
                                     tokens_factor=s.tokens_factor)
                    return worker.rounds(n=1)[0]
                return one

            runners = {s.name: runner(s) for s in sides}
            interleave_rounds(runners, 1)  # one unmeasured round each (a new length compiles in graph mode)
            collected = interleave_rounds(runners, spec.workload.rounds)
            entry["sides"] = {}
            for name, rs in collected.items():
                m = scenario.metrics(spec, rs)
                entry["sides"][name] = {k: m[k].samples for k in scenario.gated} | {
                    "throttled_rounds": sum(1 for r in rs if r.get("throttled")),
                    "retried_rounds": sum(1 for r in rs if r.get("retried_after_throttle"))}
        finally:
            side.close()
        raw["processes"].append(entry)
        if checkpoint:
            checkpoint(raw | {"status": Status.OK if p + 1 == processes else Status.PARTIAL})
        if progress:
            med = statistics.median(entry["sides"][CLEAN][metric])
            progress(f"process {p + 1}/{processes}: clean {metric} {med:.4g}")
    raw["status"] = Status.OK
    return raw


@dataclass
class SideNoise:
    side: str
    cv_within: float
    cv_between: float | None
    median: float
    min_detectable: float
    throttled_rounds: int


@dataclass
class Detection:
    side: str  # clean-b (A/A) or slow-N%
    slowdown: float
    method: str  # gate | paired
    flagged: int
    trials: int
    ratios: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.flagged / self.trials if self.trials else float("nan")


@dataclass
class Evaluation:
    config: str
    mode: str
    tolerance: float
    alpha: float
    processes: int
    rounds: int
    noise: list[SideNoise]
    detections: list[Detection]
    notes: list[str] = field(default_factory=list)
    metric: str = "decode_tokens_per_s"

    def detection(self, side: str, method: str) -> Detection | None:
        return next((d for d in self.detections if d.side == side and d.method == method), None)

    def side_noise(self, side: str) -> SideNoise | None:
        return next((n for n in self.noise if n.side == side), None)

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        detections = [Detection(**{k: v for k, v in x.items() if k != "rate"}) for x in d["detections"]]
        return cls(d["config"], d["mode"], d["tolerance"], d["alpha"], d["processes"], d["rounds"],
                   [SideNoise(**x) for x in d["noise"]], detections, list(d.get("notes", [])),
                   d.get("metric", "decode_tokens_per_s"))

    def to_dict(self) -> dict:
        return {"config": self.config, "mode": self.mode, "metric": self.metric, "tolerance": self.tolerance,
                "alpha": self.alpha,
                "processes": self.processes, "rounds": self.rounds, "notes": self.notes,
                "noise": [vars(n) for n in self.noise],
                "detections": [vars(d) | {"rate": d.rate} for d in self.detections]}


def evaluate(raw: dict, tolerance: float, alpha: float = DEFAULT_ALPHA, confidence: float = 0.95) -> Evaluation:
    """Noise per side, and false alarms / detections of the gate and of the paired comparison."""
    if raw.get("status") not in (Status.OK, Status.PARTIAL):
        raise ConfigError(f"noise experiment did not run: {raw.get('status')}: {raw.get('reason')}")
    procs = [p for p in raw["processes"] if p.get("sides")]
    rounds = raw["rounds"]
    spec = raw["spec"]
    config = raw.get("config") or f"{spec['model']}-{spec['backend']}-{spec['mode']}"

    metric = raw.get("metric", "decode_tokens_per_s")  # files written before kernel mode name no metric
    higher = raw.get("higher_is_better", True)

    def tps(p, name):
        return p["sides"][name][metric]

    noise = []
    for name in raw["sides"]:
        fig = run_noise([tps(p, name) for p in procs])
        noise.append(SideNoise(side=name, cv_within=fig["cv_within"], cv_between=fig["cv_between"],
                               median=fig["median"], min_detectable=fig["min_detectable"],
                               throttled_rounds=sum(p["sides"][name]["throttled_rounds"] for p in procs)))
    slow = raw.get("slowdowns", {})
    targets = [AA] + [n for n in raw["sides"] if n in slow]
    detections = []
    notes = [] if raw["status"] == Status.OK else [f"partial: the experiment stopped after {len(procs)} processes"]
    n = len(procs)
    if n >= MIN_GATE_PROCESSES:
        for name in targets:
            flagged, ratios = 0, []
            for i, p in enumerate(procs):
                others = [statistics.median(tps(q, CLEAN)) for j, q in enumerate(procs) if j != i]
                v = gate_trial(metric, others, statistics.median(tps(p, name)), higher, tolerance, alpha)
                flagged += v.status == Status.REGRESSED
                ratios.append(round(v.ratio, 4))
            detections.append(Detection(name, slow.get(name, 0.0), "gate", flagged, n, ratios))
    else:
        notes.append(f"gate trials need >= {MIN_GATE_PROCESSES} processes (the clean runs of the others are the "
                     f"trial's baseline); got {n}")
    for name in targets:
        flagged, ratios = 0, []
        for p in procs:
            if higher:
                est = paired_ratio(tps(p, CLEAN), tps(p, name), confidence=confidence)
            else:  # a time: the ratio of rates is the inverse ratio of times
                est = paired_ratio(tps(p, name), tps(p, CLEAN), confidence=confidence)
            flagged += (1 - est.ratio) > tolerance and est.high < 1
            ratios.append(round(est.ratio, 4))
        detections.append(Detection(name, slow.get(name, 0.0), "paired", flagged, n, ratios))
    return Evaluation(config, spec["mode"], tolerance, alpha, n, rounds, noise, detections, notes, metric)
