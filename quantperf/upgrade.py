"""The upgrade check: does upgrading library X change speed, quality or the takeaways, on this
machine? Answered by measuring both versions side by side, in one session, on one device,
round by round -- stored baselines cannot answer it on a noisy machine (sessions differ by
5-45%). Environment B is `quantperf.upgrade_env`'s overlay; everything is opened and interleaved
by `quantperf.scheduler` (open_side, interleave_rounds, build_result).

Design, per configuration (model x backend x mode):

- P >= 3 fresh process *pairs* (side A: this environment; side B: the overlay), one after the
  other; even pairs load A first and run ABBA blocks, odd pairs load B first and run BAAB.
- In each pair, K blocks of 2 rounds per side (scheduler.interleave_rounds). Per block
  d = log((B1 + B2) / (A1 + A2)) of the per-token decode time (1 / decode tok/s of each round,
  from the scenario's own metrics; kernel mode: its microseconds per layer at decode shape).
- Pair mean = mean of its blocks' d; across pairs a Student-t interval with P - 1 degrees of
  freedom: the pair (two fresh processes) is the unit, so process-level effects (placement,
  allocator state, clocks at load) are inside the interval, not hidden by many rounds.
- Decision against the mode's tolerance tau (eager 5%, graph 3%, kernel 1%; `--tolerance`),
  on the log scale, symmetric: `slower` if the whole interval of the ratio B/A lies above 1+tau,
  `faster` if it lies below 1/(1+tau), `same` if it lies inside [1/(1+tau), 1+tau] (equivalence
  shown), else `inconclusive`.
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

`compare(OLD, NEW)`: results file vs results file, or a baseline profile vs a results file: per
configuration and metric the ratio NEW/OLD with an interval over run medians (or, with one run
per side, a bootstrap over rounds that ignores run-to-run noise, said so in the report).

Rendering takes the table formatter as an argument (report.format_table lives above this layer).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError, QuantperfError
from .spec import RunSpec

DEFAULT_PAIRS = 3
DEFAULT_BLOCKS = 2
DEFAULT_ALPHA = 0.05
CALIBRATION_K = 3.0
CALIBRATION_KIND = "quantperf-upgrade-calibration"
REPORT_SCHEMA = 1
ROUNDS_PER_BLOCK = 2  # per side: ABBA


# -- the statistic (pure) ----------------------------------------------------------------------

def unit_times(spec: RunSpec, rounds: list[dict]) -> list[float]:
    """Per round, the time one decode step takes: 1e3 / decode tok/s (ms per token, from the
    scenario's metrics) in the generate modes, microseconds per layer at decode shape in kernel
    mode. Lower is faster; ratios B/A of these are the slowdown."""
    from .scenarios import scenario_for

    metrics = scenario_for(spec.mode).metrics(spec, rounds)
    if "decode_tokens_per_s" in metrics:
        return [1e3 / x for x in metrics["decode_tokens_per_s"].samples]
    if "kernel_decode_us_per_layer" in metrics:
        return list(metrics["kernel_decode_us_per_layer"].samples)
    raise ConfigError(f"mode {spec.mode}: its scenario has no decode time to compare")


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


def decide(low: float, high: float, tolerance: float) -> str:
    """The verdict of an interval [low, high] of the time ratio B/A against a tolerance tau:
    slower (all above 1+tau), faster (all below 1/(1+tau)), same (all inside), else inconclusive."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    up, down = 1 + tolerance, 1 / (1 + tolerance)
    if low > up:
        return "slower"
    if high < down:
        return "faster"
    if low >= down and high <= up:
        return "same"
    return "inconclusive"


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


# -- measuring -----------------------------------------------------------------------------------

SIDE_NAMES = ("A", "B")


@dataclass
class PairRecord:
    index: int
    first: str  # which side loaded first (and ran first in each block)
    blocks: list[dict] = field(default_factory=list)  # {"a": [t1, t2], "b": [t1, t2], "log_ratio": d}
    complete: bool = True  # False: a side failed before the pair's last block (kept, never counted)

    @property
    def mean(self) -> float | None:
        return pair_mean([b["log_ratio"] for b in self.blocks]) if self.blocks else None


@dataclass
class ConfigCheck:
    """One configuration's speed comparison B vs A."""

    config_id: str
    spec: dict
    status: str = "ok"  # ok | skipped | error
    verdict: str | None = None  # slower | faster | same | inconclusive
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
    from .workers import is_oom

    if is_oom(exc):
        return "out of memory"
    return _first_line(f"{type(exc).__name__}: {exc}" if not isinstance(exc, QuantperfError) else str(exc))


def _identity_core(identity: dict) -> dict:
    """A backend identity without library versions (those are what an upgrade changes)."""
    return {k: v for k, v in (identity or {}).items() if "version" not in k.lower()}


@dataclass
class Sides:
    """How to start each side's worker."""

    python_b: str | None = None
    env_b: dict | None = None
    label_a: str = "A"
    label_b: str = "B"

    def kwargs(self, name: str) -> dict:
        return {} if name == "A" else {"python": self.python_b, "env": self.env_b or None}


def _run_pair(spec: RunSpec, sides: Sides, index: int, blocks: int, *, environment: dict, profile: str,
              model_options: dict, record: PairRecord, keep: dict) -> None:
    """One pair of fresh processes: load and warm both (the first side first), then `blocks`
    ABBA blocks. Fills `record` as blocks complete; raises SideFailed naming the side."""
    from .scheduler import interleave_rounds, open_side

    order = list(SIDE_NAMES) if record.first == "A" else list(reversed(SIDE_NAMES))
    opened: dict = {}
    try:
        for name in order:
            side = open_side(spec, environment=environment, profile=profile, model_options=model_options,
                             **sides.kwargs(name))
            if not side.ok:
                raise SideFailed(name, f"{side.failed.status}: {_first_line(side.failed.reason or '')}")
            opened[name] = side
        ia, ib = (_identity_core(opened[n].info.get("identity")) for n in SIDE_NAMES)
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
        for _ in range(blocks):
            got = interleave_rounds(runners, ROUNDS_PER_BLOCK)
            ta, tb = unit_times(spec, got["A"]), unit_times(spec, got["B"])
            tokens = {n: [r.get("first_tokens") for r in got[n]] for n in SIDE_NAMES}
            record.blocks.append({"a": ta, "b": tb, "log_ratio": block_log_ratio(ta, tb),
                                  "tokens_match": None if None in tokens["A"] + tokens["B"]
                                  else all(t == tokens["A"][0] for t in tokens["A"] + tokens["B"])})
            for n in SIDE_NAMES:
                keep.setdefault(f"rounds_{n}", []).extend(got[n])
        for n in SIDE_NAMES:
            try:
                keep[f"memory_{n}"] = opened[n].worker.memory()
            except Exception as exc:
                raise SideFailed(n, f"crashed after pair {index + 1}: {_failure(exc)}") from None
            keep[f"side_{n}"] = opened[n]
    finally:
        _close_all(list(opened.values()))


def _close_all(sides: list) -> None:
    """Close the pair's workers together (each waits for its interpreter to exit); nothing is
    measured any more, so overlapping the two shutdowns costs no accuracy."""
    if len(sides) < 2:
        for side in sides:
            side.close()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(sides)) as pool:
        list(pool.map(lambda s: s.close(), sides))


def check_config(spec: RunSpec, sides: Sides, *, pairs: int = DEFAULT_PAIRS, blocks: int = DEFAULT_BLOCKS,
                 max_blocks: int | None = None, alpha: float = DEFAULT_ALPHA, tolerance: float = 0.05,
                 tolerance_source: str = "configured", environment: dict | None = None, profile: str | None = None,
                 model_options: dict | None = None, progress: Callable[[str], None] | None = None
                 ) -> tuple[ConfigCheck, dict]:
    """Compare one configuration in A and B (see the module docstring). Returns the check and
    what was kept for takeaways ({"side_A", "rounds_A", "memory_A", ... of the last pair})."""
    say = progress or (lambda line: None)
    looks = planned_looks(pairs, blocks, max_blocks)
    confidence = look_confidence(alpha, looks)
    check = ConfigCheck(spec.id, spec.to_dict(), tolerance=tolerance, tolerance_source=tolerance_source,
                        confidence=confidence, looks_planned=looks)
    keep: dict = {}
    target, i = pairs, 0
    while i < target:
        record = PairRecord(i, "A" if i % 2 == 0 else "B")
        check.pairs.append(record)
        try:
            _run_pair(spec, sides, i, blocks, environment=environment, profile=profile,
                      model_options=dict(model_options or {}), record=record, keep=keep)
        except SideFailed as exc:
            record.complete = False  # a pair cut short is kept in the report, never counted
            unavailable = exc.reason.startswith(("unavailable", "mode-unsupported"))
            if exc.side == "A" and unavailable:
                check.status, check.message = "skipped", f"not measurable in A: {exc.reason}"
            else:
                label = {"A": f"side A ({sides.label_a})", "B": f"side B ({sides.label_b})"}.get(exc.side, "sides")
                check.status, check.message = "error", f"{spec.id}: {label}: {exc.reason}"
            say(f"{spec.id}: {check.status}: {check.message}")
            break
        except Exception as exc:  # anything else is this configuration's failure, never the session's
            check.status, check.message = "error", f"{spec.id}: {_failure(exc)}"
            say(f"{spec.id}: error: {check.message}")
            break
        i += 1
        say(f"{spec.id}: pair {i}/{target} ({record.first} first): B/A per-token time "
            f"{math.exp(record.mean):.4f} over {len(record.blocks)} block(s)")
        if i == target:
            est = pair_interval([p.mean for p in check.pairs], confidence)
            check.looks_used += 1
            check.ratio, check.low, check.high = est.ratio, est.low, est.high
            check.verdict = decide(est.low, est.high, tolerance)
            if check.verdict == "inconclusive" and check.looks_used < looks:
                target += 1
    matches = [b["tokens_match"] for p in check.pairs for b in p.blocks if b.get("tokens_match") is not None]
    check.tokens_match = all(matches) if matches else None
    check.identity = keep.get("identity") or {}
    if check.status != "ok":
        check.verdict = None
    return check, keep


# The reference pass stores float32 log-probabilities and the compare pass works in float64, so
# the same model in the same environment shows a mean KLD of ~1e-8 (measured: 2e-8 on the fixture
# model, torch-fp32 and bnb-int8 on CPU). Below these, outputs are reported as identical.
IDENTICAL_BELOW = {"mean_kld": 1e-6, "ln_ppl_ratio": 1e-6}


def quality_verdict(stats: dict, quality_class: str) -> tuple[str, list[str]]:
    """B's figures against A's reference: `beyond-limits` (the backend class's quality limits,
    quantperf.divergence), `changed` (any change above float32 rounding), or `identical`."""
    from .divergence import limit_violations

    violations = limit_violations(quality_class, stats)
    if violations:
        return "beyond-limits", violations
    identical = (stats["mean_kld"] < IDENTICAL_BELOW["mean_kld"] and stats["top1_agreement"] == 1
                 and abs(stats["ln_ppl_ratio"]) < IDENTICAL_BELOW["ln_ppl_ratio"])
    return ("identical" if identical else "changed"), []


def quality_check(spec: RunSpec, sides: Sides, params: dict, *, environment: dict | None = None,
                  profile: str | None = None, model_options: dict | None = None) -> dict:
    """Outputs of B against A for one backend: A's pass writes the reference log-probabilities,
    B's same backend compares against them (scheduler.measure_quality's two passes, with a side
    per environment). Returns the figures and a verdict: identical | changed | beyond-limits."""
    from .backends import entry
    from .scheduler import open_side

    out = {"config_id": "quality-" + spec.id, "backend": spec.backend, "model": spec.model, "status": "ok"}
    fd, ref_file = tempfile.mkstemp(prefix="quantperf-upgrade-ref-", suffix=".npy")
    os.close(fd)
    stats_by_side = {}
    try:
        for name, role in (("A", "reference"), ("B", "compare")):
            side = open_side(spec, environment=environment, profile=profile, model_options=dict(model_options or {}),
                             warm=False, **sides.kwargs(name))
            if not side.ok:
                label = sides.label_a if name == "A" else sides.label_b
                return out | {"status": "skipped" if name == "A" and side.failed.status == "unavailable" else "error",
                              "message": f"quality {spec.id}: side {name} ({label}): {side.failed.status}: "
                                         f"{_first_line(side.failed.reason or '')}"}
            try:
                stats_by_side[name] = side.worker.quality(params=dict(params) | {
                    "role": role, "file": ref_file, "reference_backend": f"{spec.backend} in A"})
                out[f"identity_{name}"] = side.info.get("identity")
            except Exception as exc:
                return out | {"status": "error", "message": f"quality {spec.id}: side {name}: {_failure(exc)}"}
            finally:
                side.close()
    finally:
        with contextlib.suppress(OSError):  # the reference logits' temp file
            os.unlink(ref_file)
    if _identity_core(out.get("identity_A")) != _identity_core(out.get("identity_B")):
        return out | {"status": "error", "message": f"quality {spec.id}: backend identity differs between A and B"}
    b = stats_by_side["B"]
    stats = {k: v for k, v in b.items() if k != "generations"}
    gen_a, gen_b = stats_by_side["A"].get("generations", []), b.get("generations", [])
    verdict, violations = quality_verdict(b, entry(spec.backend).quality_class)
    return out | {"stats": stats, "generations_match": gen_a == gen_b, "verdict": verdict, "violations": violations,
                  "quality_class": entry(spec.backend).quality_class,
                  "generations": {"A": gen_a, "B": gen_b} if gen_a != gen_b else {}}


def takeaway_checks(claims, measured: dict, profile: str, device: str) -> list[dict]:
    """Each claim whose both sides were measured, evaluated in A and in B (no expected verdict);
    `flipped` when both verdicts are conclusive and differ, `unsettled` when one is inconclusive."""
    from .takeaways import evaluate

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
            row["status"] = ("same" if va == vb else "unsettled" if "inconclusive" in (va, vb) else "flipped")
            out.append(row)
    return out


@dataclass
class UpgradeReport:
    kind: str  # upgrade | aa
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

    @property
    def regressions(self) -> list[str]:
        out = [f"{c.config_id}: slower x{_ci(c.ratio, c.low, c.high)}" for c in self.configs if c.verdict == "slower"]
        out += [f"{q['config_id']}: {'; '.join(q['violations'])}" for q in self.quality if q.get("verdict") == "beyond-limits"]
        out += [f"takeaway {t['id']}: FLIPPED" for t in self.takeaways if t.get("status") == "flipped"]
        return out

    @property
    def errors(self) -> list[str]:
        return [c.message for c in self.configs if c.status == "error"] + \
               [q["message"] for q in self.quality if q.get("status") == "error"]

    @property
    def inconclusive(self) -> list[str]:
        return [c.config_id for c in self.configs if c.verdict == "inconclusive"]

    @property
    def improvements(self) -> list[str]:
        return [f"{c.config_id} x{_ci(c.ratio, c.low, c.high)}" for c in self.configs if c.verdict == "faster"]

    @property
    def changed_outputs(self) -> list[str]:
        """Configurations whose outputs changed, within the class limits (beyond them is a regression)."""
        return [q["config_id"] for q in self.quality if q.get("verdict") == "changed"]

    def exit_code(self, strict: bool = False) -> int:
        """1: regressed (slower, quality beyond limits, flipped claim; with `strict` also
        inconclusive); else 2 when a configuration could not be compared; else 0."""
        if self.regressions or (strict and self.inconclusive):
            return 1
        if self.errors:
            return 2
        if not any(c.status == "ok" for c in self.configs) and not any(q.get("status") == "ok" for q in self.quality):
            return 2
        return 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["configs"] = [c.to_dict() for c in self.configs]
        return {"schema": REPORT_SCHEMA, **d, "regressions": self.regressions, "errors": self.errors}


def calibration_from(report: UpgradeReport, k: float = CALIBRATION_K) -> dict:
    """What an A/A run leaves for later runs: per mode, the pooled sd of the pair means."""
    by_mode: dict[str, list] = {}
    for c in report.configs:
        if c.status == "ok":
            by_mode.setdefault(c.spec["mode"], []).append(c)
    modes = {}
    for mode, checks in by_mode.items():
        sd, df = pooled_sd([c.complete_pair_means for c in checks])
        ends = [max(abs(math.log(c.low)), abs(math.log(c.high))) for c in checks if c.low and c.high]
        modes[mode] = {"spread": sd, "df": df, "configs": [c.config_id for c in checks],
                       "max_abs_log_end": max(ends) if ends else None,
                       "tolerance_floor": calibrated_tolerance(0.0, sd, k)}
    from .scheduler import now

    return {"kind": CALIBRATION_KIND, "schema": 1, "profile": report.profile, "device": report.device,
            "created": now(), "k": k, "pairs": report.settings.get("pairs"), "blocks": report.settings.get("blocks"),
            "modes": modes}


def read_calibration(path: str | Path, profile: str) -> dict:
    """A calibration file written by `upgrade-check --aa --calibration FILE`, for this profile."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--calibration {path}: no such file (write one with `quantperf upgrade-check --aa "
                          f"--calibration {path}`)") from None
    except ValueError as exc:
        raise ConfigError(f"--calibration {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND or not isinstance(data.get("modes"), dict):
        raise ConfigError(f"--calibration {path}: not an upgrade-check calibration (kind {CALIBRATION_KIND!r})")
    if data.get("profile") != profile:
        raise ConfigError(f"--calibration {path}: recorded on profile {data.get('profile')!r}, this machine is "
                          f"{profile!r}; an A/A spread does not carry across machines")
    return data


def run_upgrade_check(specs: list[RunSpec], overlay, *, aa: bool = False, pairs: int = DEFAULT_PAIRS,
                      blocks: int = DEFAULT_BLOCKS, max_blocks: int | None = None, alpha: float = DEFAULT_ALPHA,
                      tolerances: list[dict] | None = None, calibration: dict | None = None,
                      quality_specs: list[RunSpec] = (), quality_params: dict | None = None, claims=(),
                      model_options: dict | None = None, environment: dict | None = None, profile: str | None = None,
                      progress: Callable[[str], None] | None = None) -> UpgradeReport:
    """The upgrade check over configurations (speed), quality specs and claims; B is `overlay`."""
    from .envinfo import environment as env_fn
    from .envinfo import profile_id
    from .gate import DEFAULT_TOLERANCES, resolve_tolerance
    from .scheduler import build_result

    say = progress or (lambda line: None)
    planned_looks(pairs, blocks, max_blocks)  # bad settings fail before anything runs
    look_confidence(alpha, 1)
    device = (specs or list(quality_specs) or [RunSpec("x", "x")])[0].device
    environment = environment or env_fn()
    profile = profile or profile_id(device)
    layers = [DEFAULT_TOLERANCES] + list(tolerances or [])
    sides = Sides(python_b=overlay.python, env_b=overlay.env(), label_a=_versions_label(overlay, "a"),
                  label_b=_versions_label(overlay, "b"))
    report = UpgradeReport(kind="aa" if aa else "upgrade", profile=profile, device=device, overlay=overlay.to_dict(),
                           describe=overlay.describe(),
                           settings={"pairs": pairs, "blocks": blocks, "max_blocks": max_blocks, "alpha": alpha,
                                     "statistic": "per block log((B1+B2)/(A1+A2)) of per-token decode time; mean per "
                                                  "pair; Student-t over pairs (df P-1); Bonferroni over planned looks"},
                           calibration=None if aa else calibration)
    measured: dict = {"A": {}, "B": {}}
    for spec in specs:
        configured = resolve_tolerance(layers, "speed", spec.mode)
        spread = ((calibration or {}).get("modes", {}).get(spec.mode) or {}).get("spread") if not aa else None
        k = (calibration or {}).get("k", CALIBRATION_K)
        tol = calibrated_tolerance(configured, spread, k)
        source = "calibration" if tol > configured else "configured"
        check, keep = check_config(spec, sides, pairs=pairs, blocks=blocks, max_blocks=max_blocks, alpha=alpha,
                                   tolerance=tol, tolerance_source=source, environment=environment, profile=profile,
                                   model_options=model_options, progress=say)
        report.configs.append(check)
        if check.status == "ok" and claims:
            for n in SIDE_NAMES:
                measured[n][spec.id] = build_result(keep[f"side_{n}"], keep[f"rounds_{n}"], keep[f"memory_{n}"], profile)
    for spec in quality_specs:
        say(f"quality {spec.id}: A writes the reference, B compares")
        report.quality.append(quality_check(spec, sides, quality_params or {}, environment=environment,
                                            profile=profile, model_options=model_options))
    if claims:
        report.takeaways = takeaway_checks(claims, measured, profile, device)
    if aa:
        report.calibration = calibration_from(report)
    return report


def _versions_label(overlay, side: str) -> str:
    versions = overlay.versions_a if side == "a" else overlay.versions_b
    names = overlay.names or []
    return ", ".join(f"{n} {versions.get(n) or '-'}" for n in names) or "this environment"


# -- compare: stored results against stored results ------------------------------------------------

@dataclass
class StoredConfig:
    key: str
    mode: str
    identity: dict
    packages: dict
    metrics: dict  # name -> {"runs": [medians], "samples": [last run], "higher_is_better", "kind", "unit"}


def _mode_of(key: str, spec: dict | None) -> str:
    from .spec import MODES

    if spec and spec.get("mode") in MODES:
        return spec["mode"]
    return next((m for m in MODES if key.endswith("-" + m)), "eager")


def load_stored(arg: str, baselines_dir: str | Path = "baselines") -> tuple[str, dict[str, StoredConfig]]:
    """A results file (JSON lines) or a baseline profile (a baselines/<profile>.json path or a bare
    profile name under `baselines_dir`): (label, {config key: StoredConfig})."""
    from .baselines import BaselineStore
    from .results import ResultLog

    path = Path(arg)
    if not path.is_file():
        candidate = Path(baselines_dir) / f"{arg}.json"
        if candidate.is_file():
            path = candidate
        else:
            raise ConfigError(f"{arg}: no such results file, and no baseline profile {candidate}")
    head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    is_baseline = False
    if path.suffix == ".json" and head == "{":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            is_baseline = isinstance(data, dict) and "configs" in data and "profile" in data
        except ValueError:
            is_baseline = False
    out: dict[str, StoredConfig] = {}
    if is_baseline:
        store = BaselineStore(path.parent, path.stem)
        for key, e in store.data["configs"].items():
            metrics = {}
            for name, m in e.get("metrics", {}).items():
                runs = [r["value"] for r in m.get("runs", [])] or [m["median"]]
                metrics[name] = {"runs": runs, "samples": list(m.get("samples", [])),
                                 "higher_is_better": m.get("higher_is_better", True), "kind": m.get("kind", "speed"),
                                 "unit": m.get("unit", "")}
            out[key] = StoredConfig(key, _mode_of(key, e.get("spec")), e.get("backend_identity") or {},
                                    dict(e.get("packages") or {}), metrics)
        return f"baseline {store.profile} ({path})", out
    results = ResultLog(path).read()
    if not results:
        raise ConfigError(f"{path}: holds no results (nothing to compare)")
    for r in results:
        if not r.ok:
            continue
        key = ("quality-" if r.quality else "") + r.spec.id
        cfg = out.get(key)
        if cfg is None:
            cfg = out[key] = StoredConfig(key, r.spec.mode, r.backend_identity, {}, {})
        cfg.identity = r.backend_identity
        cfg.packages = {k: v for k, v in (r.environment or {}).get("packages", {}).items() if v}
        for name, m in r.metrics.items():
            slot = cfg.metrics.setdefault(name, {"runs": [], "samples": [], "higher_is_better": m.higher_is_better,
                                                 "kind": m.kind, "unit": m.unit})
            slot["runs"].append(m.value)
            slot["samples"] = list(m.samples)
    return f"results {path}", out


def ratio_interval(old_runs: Sequence[float], new_runs: Sequence[float], old_samples: Sequence[float],
                   new_samples: Sequence[float], confidence: float = 0.95) -> dict:
    """NEW/OLD with an interval. Run medians are the unit: both sides >= 2 runs: Welch t on the
    log run medians; one side a single run: t with the other side's run-to-run sd (df n-1); one
    run per side: a percentile bootstrap over rounds (stats.ratio_of_medians), which ignores
    run-to-run noise (noted); single figures: the plain ratio."""
    from scipy.stats import t

    from .stats import ratio_of_medians

    old_runs, new_runs = [float(x) for x in old_runs], [float(x) for x in new_runs]
    if not old_runs or not new_runs or min(old_runs + new_runs) <= 0:
        raise ValueError("ratio_interval needs positive run medians on both sides")
    lo_, ln_ = [math.log(x) for x in old_runs], [math.log(x) for x in new_runs]
    no, nn = len(lo_), len(ln_)
    diff = statistics.fmean(ln_) - statistics.fmean(lo_)
    if no >= 2 or nn >= 2:
        vo = statistics.variance(lo_) if no >= 2 else None
        vn = statistics.variance(ln_) if nn >= 2 else None
        if vo is not None and vn is not None:
            se2 = vo / no + vn / nn
            denom = (vo / no) ** 2 / (no - 1) + (vn / nn) ** 2 / (nn - 1)
            df = se2 ** 2 / denom if denom > 0 else no + nn - 2
            method = f"Welch t over run medians ({no} old, {nn} new runs)"
        else:
            v, n_multi = (vo, no) if vo is not None else (vn, nn)
            se2 = v * (1 / no + 1 / nn)
            df = n_multi - 1
            method = f"t over run medians ({no} old, {nn} new runs; run-to-run sd from the side with {n_multi})"
        half = float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2) if se2 > 0 else 0.0
        return {"ratio": math.exp(diff), "low": math.exp(diff - half), "high": math.exp(diff + half),
                "method": method, "note": ""}
    if len(old_samples) >= 2 and len(new_samples) >= 2:
        est = ratio_of_medians(old_samples, new_samples, confidence=confidence)
        return {"ratio": est.ratio, "low": est.low, "high": est.high, "method": "bootstrap over rounds",
                "note": "one run per side: the interval covers round-to-round noise only, not run-to-run "
                        "noise (sessions can differ 5-45%)"}
    r = new_runs[0] / old_runs[0]
    return {"ratio": r, "low": r, "high": r, "method": "single figures", "note": ""}


def compare_verdict(low: float, high: float, higher_is_better: bool, tolerance: float) -> str:
    """regressed / improved / same / inconclusive of an interval of NEW/OLD."""
    worse_low, worse_high = (1 / high, 1 / low) if higher_is_better else (low, high)
    v = decide(worse_low, worse_high, tolerance)
    return {"slower": "regressed", "faster": "improved"}.get(v, v)


def compare(old: str, new: str, *, baselines_dir: str | Path = "baselines", tolerances: list[dict] | None = None,
            alpha: float = DEFAULT_ALPHA) -> dict:
    """Stored OLD against stored NEW: per configuration and metric NEW/OLD, interval, verdict."""
    from .gate import DEFAULT_TOLERANCES, resolve_tolerance

    look_confidence(alpha, 1)
    old_label, olds = load_stored(old, baselines_dir)
    new_label, news = load_stored(new, baselines_dir)
    layers = [DEFAULT_TOLERANCES] + list(tolerances or [])
    rows, notes, versions = [], [], {}
    common = [k for k in news if k in olds]
    if not common:
        raise ConfigError(f"{old} and {new} have no configuration in common (old: {', '.join(list(olds)[:5]) or 'none'}; "
                          f"new: {', '.join(list(news)[:5]) or 'none'})")
    for key in common:
        o, n = olds[key], news[key]
        for name in sorted(set(o.packages) | set(n.packages)):
            if o.packages.get(name) != n.packages.get(name):
                versions[name] = [o.packages.get(name), n.packages.get(name)]
        if _identity_core(o.identity) != _identity_core(n.identity):
            rows.append({"config": key, "metric": "-", "status": "incomparable",
                         "note": f"backend identity differs: {o.identity} vs {n.identity}"})
            continue
        for metric in sorted(set(o.metrics) & set(n.metrics)):
            mo, mn = o.metrics[metric], n.metrics[metric]
            tol = resolve_tolerance(layers, mo["kind"], o.mode)
            row = {"config": key, "metric": metric, "unit": mo["unit"], "old": statistics.median(mo["runs"]),
                   "new": statistics.median(mn["runs"]), "runs_old": len(mo["runs"]), "runs_new": len(mn["runs"]),
                   "tolerance": tol}
            if min(mo["runs"] + mn["runs"]) <= 0:
                same = mo["runs"] == mn["runs"]
                rows.append(row | {"status": "same" if same else "changed", "ratio": None, "low": None, "high": None,
                                   "note": "a zero figure: compared for equality"})
                continue
            est = ratio_interval(mo["runs"], mn["runs"], mo["samples"], mn["samples"], 1 - alpha)
            row |= est | {"status": compare_verdict(est["low"], est["high"], mo["higher_is_better"], tol)}
            if est["note"]:
                notes.append(est["note"])
            rows.append(row)
    return {"kind": "compare", "schema": REPORT_SCHEMA, "old": old_label, "new": new_label, "alpha": alpha,
            "rows": rows, "versions": versions, "notes": list(dict.fromkeys(notes)),
            "only_old": [k for k in olds if k not in news], "only_new": [k for k in news if k not in olds],
            "regressions": [f"{r['config']} {r['metric']}" for r in rows if r["status"] == "regressed"]}


def compare_exit_code(result: dict) -> int:
    if result["regressions"]:
        return 1
    if not any(r["status"] not in ("incomparable",) for r in result["rows"]):
        return 2
    return 0


# -- rendering (the table formatter is passed in: report.format_table) ----------------------------

def _ci(ratio, low, high) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]"


def upgrade_sections(rep: UpgradeReport, fmt: Callable, markdown: bool = False) -> list[tuple[str, str]]:
    sections = []
    rows = []
    for c in rep.configs:
        blocks = sum(len(p.blocks) for p in c.pairs)
        tol = "-" if c.tolerance is None else f"{c.tolerance * 100:.1f}%" + (" (A/A)" if c.tolerance_source == "calibration" else "")
        tokens = {True: "same", False: "DIFFER", None: "-"}[c.tokens_match]
        verdict = c.status.upper() if c.status != "ok" else c.verdict.upper() if c.verdict in ("slower", "faster") \
            else c.verdict
        conf = "-" if c.confidence is None else f"{c.confidence * 100:.1f}%"
        rows.append([c.config_id, _ci(c.ratio, c.low, c.high), conf, tol, verdict,
                     f"{len(c.pairs)}x{blocks // max(len(c.pairs), 1)}", tokens, c.message])
    if rows:
        sections.append(("speed: per-token decode time B/A [interval over process pairs]",
                         fmt(["config", "time B/A [CI]", "conf.", "tolerance", "verdict", "pairs x blocks",
                              "greedy tokens", "note"], rows, markdown)))
    if rep.quality:
        qrows = []
        for q in rep.quality:
            s = q.get("stats") or {}
            qrows.append([q["config_id"], "-" if not s else f"{s['mean_kld']:.3g}",
                          "-" if not s else f"{s['top1_agreement']:.4f}",
                          "-" if not s else f"{math.exp(s['ln_ppl_ratio']):.4f}",
                          (q.get("verdict") or q["status"]).upper() if q.get("verdict") != "identical" else "identical",
                          "; ".join(q.get("violations") or []) or q.get("message", "")])
        sections.append(("quality: B against A on the corpus", fmt(
            ["config", "mean KLD", "top-1 agree", "PPL B/A", "verdict", "note"], qrows, markdown)))
    if rep.takeaways:
        trows = [[t["id"], t["claimed"], f"{t['A']['verdict']} {_ci(t['A']['ratio'], t['A']['low'], t['A']['high'])}",
                  f"{t['B']['verdict']} {_ci(t['B']['ratio'], t['B']['low'], t['B']['high'])}",
                  t["status"].upper() if t["status"] != "same" else "same"] for t in rep.takeaways]
        sections.append(("takeaways: verdict in A and in B", fmt(["claim", "claimed", "A", "B", "status"], trows, markdown)))
    return sections


def _calibration_line(rep: UpgradeReport) -> str:
    cal = rep.calibration
    if not cal:
        return "A/A calibration: none (tolerances as configured)"
    parts = [f"{mode} spread {m['spread'] * 100:.2f}% -> tolerance floor {m['tolerance_floor'] * 100:.1f}%"
             for mode, m in cal.get("modes", {}).items() if m.get("spread") is not None and math.isfinite(m["spread"])]
    head = "A/A calibration measured" if rep.kind == "aa" else f"A/A calibration used ({cal.get('created', '?')})"
    return f"{head}, k = {cal.get('k', CALIBRATION_K):g}: " + ("; ".join(parts) or "no spread")


def summary_line(rep: UpgradeReport, strict: bool = False) -> str:
    code = rep.exit_code(strict)
    if code == 1:
        return "REGRESSED: " + "; ".join(rep.regressions + ([f"{c}: inconclusive" for c in rep.inconclusive] if strict else []))
    if code == 2:
        return "COULD NOT RUN: " + ("; ".join(rep.errors) or "nothing was compared")
    # what a reviewer needs in one line: faster and inconclusive configurations, changed outputs
    parts = [f"{len(rep.improvements)} FASTER: {'; '.join(rep.improvements)}"] if rep.improvements else []
    parts += [f"outputs changed within limits: {', '.join(rep.changed_outputs)}"] if rep.changed_outputs else []
    parts += [f"{len(rep.inconclusive)} inconclusive: {', '.join(rep.inconclusive)}"] if rep.inconclusive else []
    skipped = [c.config_id for c in rep.configs if c.status == "skipped"]
    parts += [f"{len(skipped)} skipped: {', '.join(skipped)}"] if skipped else []
    if not parts:
        return "no change beyond tolerance"
    return ("no regression; " if rep.improvements or rep.changed_outputs else "no change beyond tolerance; ") + "; ".join(parts)


def render_upgrade(rep: UpgradeReport, fmt: Callable, markdown: bool = False, strict: bool = False) -> str:
    title = "A/A calibration" if rep.kind == "aa" else "upgrade check"
    if markdown:
        lines = [f"# quantperf {title}", "", (f"Profile `{rep.profile}` ({rep.device}); "
                 f"{rep.settings['pairs']} process pairs x {rep.settings['blocks']} ABBA blocks per configuration, "
                 f"alpha {rep.settings['alpha']:g}."), "", "**Versions**", "", "```", rep.describe, "```", "",
                 _calibration_line(rep), "", f"**{summary_line(rep, strict)}**", ""]
        for head, body in upgrade_sections(rep, fmt, markdown=True):
            lines += [f"## {head}", "", body, ""]
        lines += [f"- {n}" for n in rep.notes]
        return "\n".join(lines).rstrip() + "\n"
    out = [f"quantperf {title} on {rep.profile}", rep.describe, _calibration_line(rep)]
    out += [f"{head}:\n{body}" for head, body in upgrade_sections(rep, fmt)]
    out += rep.notes + [summary_line(rep, strict)]
    return "\n\n".join(out)


def render_compare(result: dict, fmt: Callable, markdown: bool = False) -> str:
    rows = []
    for r in result["rows"]:
        if r.get("ratio") is None:
            rows.append([r["config"], r["metric"], "-", "-", "-", r["status"], r.get("note", "")])
            continue
        rows.append([r["config"], r["metric"], f"{r['old']:.4g}", f"{r['new']:.4g}", _ci(r["ratio"], r["low"], r["high"]),
                     r["status"].upper() if r["status"] in ("regressed", "improved") else r["status"],
                     f"{r['method']}, tol {r['tolerance'] * 100:g}%"])
    versions = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["versions"].items()) or "none differ"
    verdict = (f"REGRESSED: {'; '.join(result['regressions'])}" if result["regressions"]
               else "no change beyond tolerance")
    table = fmt(["config", "metric", "old", "new", "new/old [CI]", "verdict", "how"], rows, markdown)
    extra = ([f"only in old: {', '.join(result['only_old'])}"] if result["only_old"] else []) + \
            ([f"only in new: {', '.join(result['only_new'])}"] if result["only_new"] else [])
    if markdown:
        lines = ["# quantperf compare", "", f"- old: {result['old']}", f"- new: {result['new']}",
                 f"- library versions: {versions}", "", f"**{verdict}**", "", table, ""]
        lines += [f"- note: {n}" for n in result["notes"]] + [f"- {e}" for e in extra]
        return "\n".join(lines).rstrip() + "\n"
    return "\n".join([f"old: {result['old']}", f"new: {result['new']}", f"library versions: {versions}", "", table, ""]
                     + [f"note: {n}" for n in result["notes"]] + extra + [verdict])
