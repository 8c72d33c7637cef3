"""The upgrade check: does upgrading library X change speed, quality or the takeaways, on this
machine? Answered by measuring both versions side by side, in one session, on one device,
round by round -- stored baselines cannot answer it on a noisy machine (sessions differ by
5-45%). Environment B is `quantperf.experiments.environments`' overlay; everything is opened and interleaved
by `quantperf.scheduler` (open_side, interleave_rounds, build_result).

Design, per configuration (model x backend x mode):

- P >= 3 fresh process *pairs* (side A: this environment; side B: the overlay), one after the
  other; even pairs load A first and run ABBA blocks, odd pairs load B first and run BAAB. Kernel
  mode's configurations share their pairs (quantperf.experiments.shared: pair i hosts them all).
- In each pair, K blocks of 2 rounds per side (scheduler.interleave_rounds). Per block
  d = log((B1 + B2) / (A1 + A2)) of the per-token decode time (1 / decode tok/s of each round,
  from the scenario's own metrics; kernel mode: its microseconds per layer at decode shape).
- Pair mean = mean of its blocks' d; across pairs a Student-t interval with P - 1 degrees of
  freedom: the pair (two fresh processes) is the unit, so process-level effects (placement,
  allocator state, clocks at load) are inside the interval, not hidden by many rounds.
- Decision against the mode's tolerance tau (eager 5%, graph 3%, kernel 1%; `--tolerance`),
  on the log scale, symmetric (quantperf.gate.ab.decide): REGRESSED (slower) if the whole
  interval of the ratio B/A lies above 1+tau, IMPROVED (faster) if it lies below 1/(1+tau), OK
  if it lies inside [1/(1+tau), 1+tau] (equivalence shown), else INCONCLUSIVE.
- Optional stopping, pre-planned: `max_blocks` caps the blocks (over all pairs) of a
  configuration; an inconclusive result adds one more pair of K blocks, up to the cap. The
  number of looks L = 1 + (max_blocks - P*K) // K is fixed before measuring and every look uses
  confidence 1 - alpha / L (Bonferroni), so stopping when a look decides does not bias it.

A/A calibration (`same_environment()`): both sides the same environment; the pooled standard
deviation s of the pair means per mode is stored in a calibration file, and a later run sets
each mode's tolerance to max(configured, exp(k * s) - 1) (k = 3 by default): a machine whose
A/A pairs wander by s cannot certify differences smaller than a few s.

Quality: side A's backend writes reference log-probabilities over the fixture corpus, side B's
same backend compares against them (KLD, top-1 agreement, PPL ratio of new against old). Any
change is reported; a change beyond the backend class's limits (quantperf.divergence) fails.

Takeaways: each claim whose both configurations were measured is evaluated in A and in B; a
verdict that differs between A and B (both conclusive) is FLIPPED.

This module measures and keeps the figures; quantperf.gate.ab decides, quantperf.report.upgrade
renders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError, QuantperfError
from ..gate.ab import (
    CALIBRATION_K,
    block_log_ratio,
    calibrated_tolerance,
    decide,
    look_confidence,
    pair_interval,
    pair_mean,
    planned_looks,
    takeaway_status,
)
from ..gate.runtime import sides_note
from ..spec import RunSpec
from ..status import Status
from .calibration import CALIBRATION_KIND, calibration_from, read_calibration  # noqa: F401 (re-exported)

DEFAULT_PAIRS = 3
DEFAULT_BLOCKS = 2
DEFAULT_ALPHA = 0.05
REPORT_SCHEMA = 1
ROUNDS_PER_BLOCK = 2  # per side: ABBA


# -- the statistic ------------------------------------------------------------------------------

def unit_times(spec: RunSpec, rounds: list[dict]) -> list[float]:
    """Per round, the time one decode step takes: 1e3 / decode tok/s (ms per token, from the
    scenario's metrics) in the generate modes, microseconds per layer at decode shape in kernel
    mode. Lower is faster; ratios B/A of these are the slowdown."""
    from ..scenarios import scenario_for

    metrics = scenario_for(spec.mode).metrics(spec, rounds)
    if "decode_tokens_per_s" in metrics:
        return [1e3 / x for x in metrics["decode_tokens_per_s"].samples]
    if "kernel_decode_us_per_layer" in metrics:
        return list(metrics["kernel_decode_us_per_layer"].samples)
    raise ConfigError(f"mode {spec.mode}: its scenario has no decode time to compare")


# -- measuring -----------------------------------------------------------------------------------

SIDE_NAMES = ("A", "B")


@dataclass
class PairRecord:
    index: int
    first: str  # which side loaded first (and ran first in each block)
    blocks: list[dict] = field(default_factory=list)  # {"a": [t1, t2], "b": [t1, t2], "log_ratio": d}
    complete: bool = True  # False: a side failed before the pair's last block (kept, never counted)
    pids: dict = field(default_factory=dict)  # {"A": pid, "B": pid}: each pair is two fresh processes

    @property
    def mean(self) -> float | None:
        return pair_mean([b["log_ratio"] for b in self.blocks]) if self.blocks else None


@dataclass
class ConfigCheck:
    """One configuration's speed comparison B vs A."""

    config_id: str
    spec: dict
    status: str = Status.OK  # ok | skipped | error
    verdict: str | None = None  # regressed | improved | ok | inconclusive
    ratio: float | None = None  # per-token time B/A
    low: float | None = None
    high: float | None = None
    confidence: float | None = None
    tolerance: float | None = None
    tolerance_source: str = "configured"
    looks_planned: int = 1
    looks_used: int = 0
    pairs: list[PairRecord] = field(default_factory=list)
    tokens_match: bool | None = None
    identity: dict = field(default_factory=dict)
    message: str = ""
    # what each side really ran (quantperf.fidelity), read back from its first pair: {"A": {...}, "B": {...}}
    runtime: dict = field(default_factory=dict)
    # where its time went (quantperf.phases), on the critical path; `overlapped`: the start and imports
    # of pairs started ahead, done while the pair before measured (off the wall)
    phases: dict = field(default_factory=dict)
    overlapped: dict = field(default_factory=dict)
    shared: int = 1  # configurations hosted by its first process pair (quantperf.experiments.shared)

    @property
    def complete_pair_means(self) -> list[float]:
        return [p.mean for p in self.pairs if p.complete and p.mean is not None]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs"] = [asdict(p) | {"mean_log_ratio": p.mean} for p in self.pairs]
        return d


class SideFailed(QuantperfError):
    def __init__(self, side: str, reason: str):
        super().__init__(reason)
        self.side, self.reason = side, reason


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "") or "no message"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure(exc: BaseException) -> str:
    from ..workers import is_oom

    if is_oom(exc):
        return "out of memory"
    return _first_line(f"{type(exc).__name__}: {exc}" if not isinstance(exc, QuantperfError) else str(exc))


def identity_core(identity: dict) -> dict:
    """A backend identity without library versions (those are what an upgrade changes)."""
    return {k: v for k, v in (identity or {}).items() if "version" not in k.lower()}


@dataclass
class Sides:
    """How to start each side's worker. Either side may be the other environment: upgrade-check
    runs A here and B in the overlay, `pytest --qp-against` runs A in the overlay (or another
    interpreter) and B here; the ratio is always B/A."""

    python_b: str | None = None
    env_b: dict | None = None
    label_a: str = "A"
    label_b: str = "B"
    python_a: str | None = None
    env_a: dict | None = None

    def kwargs(self, name: str) -> dict:
        python, env = (self.python_a, self.env_a) if name == "A" else (self.python_b, self.env_b)
        return {"python": python, "env": env} if (python or env) else {}


def _run_pair(spec: RunSpec, sides: Sides, index: int, blocks: int, *, environment: dict, profile: str,
              model_options: dict, record: PairRecord, keep: dict, ahead=None, prepared: set | None = None,
              phases: dict | None = None, start_next: Callable[[], None] = lambda: None, then=None) -> None:
    """One pair of fresh processes (started now, or ahead: quantperf.experiments.ahead): load and warm
    both (one after the other while a side prepares, each side once: `prepared`; else at once:
    shared.open_both), then ABBA blocks. `start_next()` is called once this pair's processes are
    there (the next pair starts then, stopped while a block is timed, as is `then`'s: the next
    configuration's). Fills `record` as blocks complete and `phases` with the wall seconds; raises
    SideFailed naming the side."""
    from .. import phases as P
    from ..scheduler import open_side
    from .ahead import PairStartFailed, start_pair, stopped_while_timed
    from .shared import open_both

    prepared, phases = set() if prepared is None else prepared, {} if phases is None else phases
    try:
        workers = ahead.take(phases) if ahead is not None and ahead.pending else \
            start_pair(spec, sides, model_options, phases)
    except PairStartFailed as exc:
        raise SideFailed(exc.side, f"pair {index + 1}: {exc.reason}") from None
    start_next()
    order = list(SIDE_NAMES) if record.first == "A" else list(reversed(SIDE_NAMES))
    opened: dict = {}
    record.pids = {n: (getattr(w, "info", None) or {}).get("pid") for n, w in workers.items()}
    try:
        if all(name in prepared for name in order):  # both at once (shared.open_both), nothing timed meanwhile
            opened = open_both(spec, workers, sides, index, order, phases, environment=environment,
                               profile=profile, model_options=model_options)
            workers.clear()  # the opened sides hold them
        for name in [n for n in order if n not in opened]:  # the first pair prepares: one side after the other
            side = open_side(spec, environment=environment, profile=profile, model_options=model_options,
                             worker=workers.pop(name), prepare=name not in prepared, **sides.kwargs(name))
            P.merge_into(phases, side.phases)
            prepared.add(name)
            if not side.ok:
                raise SideFailed(name, f"{side.failed.status}: {_first_line(side.failed.reason or '')}")
            opened[name] = side
        measure_blocks(spec, opened, index, blocks, record=record, keep=keep, phases=phases,
                       **stopped_while_timed(ahead, then))
    finally:
        from .ahead import close_sides, close_workers

        close_workers(workers)  # a pre-started process whose side never opened
        close_sides(list(opened.values()))


def measure_blocks(spec: RunSpec, opened: dict, index: int, blocks: int, *, record: PairRecord, keep: dict,
                   phases: dict, measuring: Callable[[], None] = lambda: None,
                   measured: Callable[[], None] = lambda: None) -> None:
    """`blocks` ABBA blocks between the two opened sides of pair `index` (both loaded and warm), then
    each side's memory and runtime read back; fills `record` and `keep`, raises SideFailed.
    `measuring()` is called before the first timed block, `measured()` after the last (a pair
    started ahead is stopped in between: quantperf.experiments.ahead)."""
    from .. import phases as P
    from ..scheduler import interleave_rounds

    order = list(SIDE_NAMES) if record.first == "A" else list(reversed(SIDE_NAMES))
    ia, ib = (identity_core(opened[n].info.get("identity")) for n in SIDE_NAMES)
    if ia != ib:
        raise SideFailed("both", f"backend identity differs between A {ia} and B {ib}: not the same "
                                 "configuration, refusing to compare")
    keep.setdefault("identity", opened["A"].info.get("identity"))

    def runner(name):
        def call():
            try:
                return opened[name].worker.rounds(n=1)[0]
            except Exception as exc:
                raise SideFailed(name, f"crashed during pair {index + 1}: {_failure(exc)}") from None
        return call

    runners = {name: runner(name) for name in order}
    measuring()
    t0 = P.clock()
    try:
        for _ in range(blocks):
            got = interleave_rounds(runners, ROUNDS_PER_BLOCK)
            ta, tb = unit_times(spec, got["A"]), unit_times(spec, got["B"])
            tokens = {n: [r.get("first_tokens") for r in got[n]] for n in SIDE_NAMES}
            record.blocks.append({"a": ta, "b": tb, "log_ratio": block_log_ratio(ta, tb),
                                  "tokens_match": None if None in tokens["A"] + tokens["B"]
                                  else all(t == tokens["A"][0] for t in tokens["A"] + tokens["B"])})
            for n in SIDE_NAMES:
                keep.setdefault(f"rounds_{n}", []).extend(got[n])
    finally:
        measured()
    P.add(phases, "measure", P.clock() - t0)
    for n in SIDE_NAMES:
        try:
            with P.timed(phases, "readback"):
                keep[f"memory_{n}"] = opened[n].worker.memory()
                keep.setdefault(f"runtime_{n}", opened[n].worker.runtime())
        except Exception as exc:
            raise SideFailed(n, f"crashed after pair {index + 1}: {_failure(exc)}") from None
        keep[f"side_{n}"] = opened[n]
    for n in SIDE_NAMES:  # each pair's memory, for `pytest --qp-against`'s memory comparison
        keep.setdefault(f"memories_{n}", []).append(
            dict(keep[f"memory_{n}"], weight_bytes=opened[n].info.get("weight_bytes")))


def mark_failed(check: ConfigCheck, spec: RunSpec, sides: Sides, exc: SideFailed, say) -> None:
    """A failed side's reading: unavailable (or its mode unsupported) in A is skipped, the rest an error."""
    unavailable = exc.reason.startswith((Status.UNAVAILABLE, Status.MODE_UNSUPPORTED))
    if exc.side == "A" and unavailable:
        check.status, check.message = Status.SKIPPED, f"not measurable in A: {exc.reason}"
    else:
        label = {"A": f"side A ({sides.label_a})", "B": f"side B ({sides.label_b})"}.get(exc.side, "sides")
        check.status, check.message = Status.ERROR, f"{spec.id}: {label}: {exc.reason}"
    say(f"{spec.id}: {check.status}: {check.message}")


def check_config(spec: RunSpec, sides: Sides, *, pairs: int = DEFAULT_PAIRS, blocks: int = DEFAULT_BLOCKS,
                 max_blocks: int | None = None, alpha: float = DEFAULT_ALPHA, tolerance: float = 0.05,
                 tolerance_source: str = "configured", environment: dict | None = None, profile: str | None = None,
                 model_options: dict | None = None, progress: Callable[[str], None] | None = None,
                 overlap: bool | None = None, ahead=None, then=None) -> tuple[ConfigCheck, dict]:
    """Compare one configuration in A and B (see the module docstring). Returns the check and
    what was kept for takeaways ({"side_A", "rounds_A", "memory_A", ... of the last pair}).
    `overlap`: start each next pair's processes (spawn, imports) while the current pair measures;
    None: QUANTPERF_AB_OVERLAP, unset on for CUDA (quantperf.experiments.ahead.overlap_default).
    `ahead`: this configuration's ahead.Ahead, its first pair perhaps started by the configuration
    before (closed here); `then`: the next configuration's, started with this one's last planned
    pair and stopped while its blocks are timed (left to the caller: the next check takes it)."""
    say = progress or (lambda line: None)
    looks = planned_looks(pairs, blocks, max_blocks)
    confidence = look_confidence(alpha, looks)
    check = ConfigCheck(spec.id, spec.to_dict(), tolerance=tolerance, tolerance_source=tolerance_source,
                        confidence=confidence, looks_planned=looks)
    from .. import phases as P
    from ..starting import known_unavailable
    from .ahead import Ahead, overlap_default

    keep: dict = {}
    known = next(((n, r) for n in SIDE_NAMES if (r := known_unavailable(spec, **sides.kwargs(n)))), None)
    if known is not None:  # an earlier configuration's process found its backend unavailable there: none started
        if ahead is not None:
            ahead.close()
        mark_failed(check, spec, sides, SideFailed(known[0], f"{Status.UNAVAILABLE}: {_first_line(known[1])}"), say)
        return finish_check(check, keep, 0.0), keep
    target, i = pairs, 0
    prepared: set = set()
    if overlap is None:
        overlap = overlap_default(spec.device)
    if ahead is None and overlap:
        ahead = Ahead(spec, sides, model_options)
    wall0 = P.clock()
    try:
        while i < target:
            record = PairRecord(i, "A" if i % 2 == 0 else "B")
            check.pairs.append(record)
            # the next pair's processes start with this one (stopped while it times), when it is certain to
            # run; with the last planned one, the next configuration's first pair (`then`)
            nxt = ahead if ahead is not None and i + 1 < target else then if i + 1 >= target else None
            try:
                _run_pair(spec, sides, i, blocks, environment=environment, profile=profile,
                          model_options=dict(model_options or {}), record=record, keep=keep, ahead=ahead,
                          prepared=prepared, phases=check.phases,
                          start_next=nxt.start if nxt is not None else (lambda: None), then=then)
            except SideFailed as exc:
                record.complete = False  # a pair cut short is kept in the report, never counted
                mark_failed(check, spec, sides, exc, say)
                break
            except Exception as exc:  # anything else is this configuration's failure, never the session's
                check.status, check.message = Status.ERROR, f"{spec.id}: {_failure(exc)}"
                say(f"{spec.id}: error: {check.message}")
                break
            i += 1
            say(f"{spec.id}: pair {i}/{target} ({record.first} first): B/A per-token time "
                f"{math.exp(record.mean):.4f} over {len(record.blocks)} block(s)")
            if i == target and take_look(check, [p.mean for p in check.pairs], looks):
                target += 1
    finally:
        if ahead is not None:
            ahead.close()  # a pair started ahead and not used (a failure, or no further look): closed
            check.overlapped = P.rounded(ahead.hidden)
    return finish_check(check, keep, P.clock() - wall0), keep


def take_look(check: ConfigCheck, pair_means: list[float], looks: int) -> bool:
    """One planned look at a configuration's pair means: its interval and verdict; True when it is
    inconclusive and looks remain (one more pair)."""
    est = pair_interval(pair_means, check.confidence)
    check.looks_used += 1
    check.ratio, check.low, check.high = est.ratio, est.low, est.high
    check.verdict = decide(est.low, est.high, check.tolerance)
    return check.verdict == Status.INCONCLUSIVE and check.looks_used < looks


def finish_check(check: ConfigCheck, keep: dict, wall_s: float) -> ConfigCheck:
    """A measured configuration's check completed from what its pairs kept: phases and wall, token
    agreement, identity, each side's runtime (a differing one is named in the message)."""
    from .. import phases as P

    check.phases = P.rounded(check.phases) | {"wall_s": round(wall_s, 3)}
    matches = [b["tokens_match"] for p in check.pairs for b in p.blocks if b.get("tokens_match") is not None]
    check.tokens_match = all(matches) if matches else None
    check.identity = keep.get("identity") or {}
    check.runtime = {n: keep.get(f"runtime_{n}") or {} for n in SIDE_NAMES}
    if check.status != Status.OK:
        check.verdict = None
    elif note := sides_note(check.runtime["A"], check.runtime["B"]):  # measured: that is what B changed
        check.message = "; ".join(m for m in (check.message, note) if m)
    return check


def takeaway_checks(claims, measured: dict, profile: str, device: str) -> list[dict]:
    """Each claim whose both sides were measured, evaluated in A and in B (no expected verdict);
    their row's status is quantperf.gate.ab.takeaway_status."""
    from ..gate import evaluate

    out = []
    for claim in claims:
        if claim.device != device or not claim.applies_to(profile):
            continue
        any_result = next(iter(measured.get("A", {}).values()), None)
        if any_result is None:
            break
        a_spec, b_spec = claim.specs(any_result.spec.workload)
        row = {"id": claim.id, "sentence": claim.sentence, "claimed": claim.describe_bounds()}
        for env in SIDE_NAMES:
            ra, rb = measured.get(env, {}).get(a_spec.id), measured.get(env, {}).get(b_spec.id)
            if ra is None or rb is None:
                break
            res = evaluate(claim, ra, rb, profile, expected=None)
            row[env] = {"verdict": res.verdict, "ratio": res.ratio, "low": res.low, "high": res.high}
        else:
            va, vb = row["A"]["verdict"], row["B"]["verdict"]
            row["status"] = takeaway_status(va, vb)
            out.append(row)
    return out


@dataclass
class UpgradeReport:
    kind: str  # upgrade | aa | against (pytest --qp-against: A = the SPEC, B = the running environment)
    profile: str
    device: str
    overlay: dict
    describe: str
    settings: dict
    configs: list[ConfigCheck] = field(default_factory=list)
    quality: list[dict] = field(default_factory=list)
    takeaways: list[dict] = field(default_factory=list)
    calibration: dict | None = None  # the calibration used (a normal run) or written (--aa)
    notes: list[str] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)  # per configuration and figure (pytest --qp-against)
    phases: dict = field(default_factory=dict)  # where the check's time went (report_phases)

    @property
    def regressions(self) -> list[str]:
        out = [f"{c.config_id}: slower x{ci_text(c.ratio, c.low, c.high)}" for c in self.configs
               if c.verdict == Status.REGRESSED]
        out += [f"{q['config_id']}: {'; '.join(q['violations'])}" for q in self.quality
                if q.get("verdict") == Status.BEYOND_LIMITS]
        out += [f"takeaway {t['id']}: FLIPPED" for t in self.takeaways if t.get("status") == Status.FLIPPED]
        out += [f"{m['config_id']} {m['metric']}: more memory x{ci_text(m['ratio'], m['low'], m['high'])}"
                for m in self.memory if m.get("verdict") == Status.REGRESSED]
        return out

    @property
    def errors(self) -> list[str]:
        return [c.message for c in self.configs if c.status == Status.ERROR] + \
               [q["message"] for q in self.quality if q.get("status") == Status.ERROR]

    @property
    def inconclusive(self) -> list[str]:
        return [c.config_id for c in self.configs if c.verdict == Status.INCONCLUSIVE]

    @property
    def improvements(self) -> list[str]:
        return [f"{c.config_id} x{ci_text(c.ratio, c.low, c.high)}" for c in self.configs
                if c.verdict == Status.IMPROVED]

    @property
    def changed_outputs(self) -> list[str]:
        """Configurations whose outputs changed, within the class limits (beyond them is a regression)."""
        return [q["config_id"] for q in self.quality if q.get("verdict") == Status.CHANGED]

    def exit_code(self, strict: bool = False) -> int:
        """1: regressed (slower, quality beyond limits, flipped claim; with `strict` also
        inconclusive); else 2 when a configuration could not be compared; else 0."""
        if self.regressions or (strict and self.inconclusive):
            return 1
        if self.errors:
            return 2
        if (not any(c.status == Status.OK for c in self.configs)
                and not any(q.get("status") == Status.OK for q in self.quality)):
            return 2
        return 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["configs"] = [c.to_dict() for c in self.configs]
        return {"schema": REPORT_SCHEMA, **d, "regressions": self.regressions, "errors": self.errors}


# how a configuration's A/B is computed, as every report states it
STATISTIC = ("per block log((B1+B2)/(A1+A2)) of per-token decode time; mean per pair; Student-t over pairs "
             "(df P-1); Bonferroni over planned looks")


def mode_tolerance(layers: list[dict], mode: str, calibration: dict | None) -> tuple[float, str]:
    """A mode's speed tolerance and where it came from: the configured one (tolerance layers), or
    max(configured, exp(k x A/A spread) - 1) when a calibration holds a spread for the mode."""
    from ..gate import resolve_tolerance

    configured = resolve_tolerance(layers, "speed", mode)
    cal = calibration or {}
    spread = (cal.get("modes", {}).get(mode) or {}).get("spread")
    tol = calibrated_tolerance(configured, spread, cal.get("k", CALIBRATION_K))
    return tol, "calibration" if tol > configured else "configured"


def run_upgrade_check(specs: list[RunSpec], overlay, *, aa: bool = False, pairs: int = DEFAULT_PAIRS,
                      blocks: int = DEFAULT_BLOCKS, max_blocks: int | None = None, alpha: float = DEFAULT_ALPHA,
                      tolerances: list[dict] | None = None, calibration: dict | None = None,
                      quality_specs: list[RunSpec] = (), quality_params: dict | None = None, claims=(),
                      model_options: dict | None = None, environment: dict | None = None, profile: str | None = None,
                      progress: Callable[[str], None] | None = None) -> UpgradeReport:
    """The upgrade check over configurations (speed), quality specs and claims; B is `overlay`."""
    from ..envinfo import environment as env_fn
    from ..envinfo import profile_id
    from ..gate import DEFAULT_TOLERANCES
    from ..scheduler import build_result
    from .ahead import overlap_default
    from .quality_ab import QUALITY_AB_AHEAD, QualityAhead, quality_check
    from .shared import AB_SAMPLE_BUDGET_MS, check_all, shared_modes  # kernel mode: shared process pairs

    say = progress or (lambda line: None)
    planned_looks(pairs, blocks, max_blocks)  # bad settings fail before anything runs
    look_confidence(alpha, 1)
    device = (specs or list(quality_specs) or [RunSpec("x", "x")])[0].device
    environment = environment or env_fn()
    profile = profile or profile_id(device)
    layers = [DEFAULT_TOLERANCES] + list(tolerances or [])
    sides = Sides(python_b=overlay.python, env_b=overlay.env(), label_a=_versions_label(overlay, "a"),
                  label_b=_versions_label(overlay, "b"))
    kernel_budget = AB_SAMPLE_BUDGET_MS if "kernel" in shared_modes() else None  # set on shared pairs only
    report = UpgradeReport(kind="aa" if aa else "upgrade", profile=profile, device=device, overlay=overlay.to_dict(),
                           describe=overlay.describe(),
                           settings={"pairs": pairs, "blocks": blocks, "max_blocks": max_blocks, "alpha": alpha,
                                     "statistic": STATISTIC, "shared_modes": list(shared_modes()),
                                     "kernel_sample_budget_ms": kernel_budget,
                                     "overlap": overlap_default(device)},
                           calibration=None if aa else calibration)
    from .. import phases as P

    wall0 = P.clock()
    measured: dict = {"A": {}, "B": {}}
    for spec, (check, keep) in zip(specs, check_all(
            specs, sides, tolerance_of=lambda s: mode_tolerance(layers, s.mode, None if aa else calibration),
            pairs=pairs, blocks=blocks, max_blocks=max_blocks, alpha=alpha, environment=environment, profile=profile,
            model_options=model_options, progress=say)):
        report.configs.append(check)
        if check.status == Status.OK and claims:
            for n in SIDE_NAMES:
                measured[n][spec.id] = build_result(keep[f"side_{n}"], keep[f"rounds_{n}"], keep[f"memory_{n}"],
                                                    profile)
    ahead = QualityAhead(sides, model_options)
    try:
        for i, spec in enumerate(quality_specs):
            say(f"quality {spec.id}: A writes the reference, B compares")
            started = ahead.turn(spec, quality_specs[i + 1:i + 1 + QUALITY_AB_AHEAD])
            with P.timed(q_phases := {}, "quality"):
                q = quality_check(spec, sides, quality_params or {}, environment=environment, profile=profile,
                                  model_options=model_options, started=started)
            report.quality.append(q | {"phases": P.rounded(q_phases)})
    finally:
        ahead.close()
    if claims:
        report.takeaways = takeaway_checks(claims, measured, profile, device)
    if aa:
        report.calibration = calibration_from(report)
    report.phases = P.check_phases([c.to_dict() for c in report.configs], report.quality, P.clock() - wall0)
    return report


def _versions_label(overlay, side: str) -> str:
    versions = overlay.versions_a if side == "a" else overlay.versions_b
    names = overlay.names or []
    return ", ".join(f"{n} {versions.get(n) or '-'}" for n in names) or "this environment"


def ci_text(ratio, low, high) -> str:
    """A ratio with its interval, as the report and the regression lines print it."""
    if ratio is None:
        return "-"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]"
