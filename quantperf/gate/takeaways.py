"""Executable takeaways: deployment claims as data, checked by in-run interleaved A/B runs.

A claim file (TOML) holds `[[claim]]` tables:

    [[claim]]
    id = "small-int8-slower-than-fp16"
    sentence = "For small models (<1B) bitsandbytes INT8 decodes slower than FP16."
    source = "seed study (Tesla T4): 59.93 vs 91.81 tok/s, 0.65x"
    metric = "decode_tokens_per_s"
    relation = "lower"            # lower | higher | within ; or bounds = [lo, hi] on B/A
    claimed_ratio = 0.65           # what the source measured, for the report
    device = "cuda"
    profiles = ["nvidia-*"]        # fnmatch patterns of profiles it applies to
    a = { model = "synthetic:llama-125m", backend = "torch-fp16" }
    b = { model = "synthetic:llama-125m", backend = "bnb-int8" }
    batch_size = 8                 # optional: both sides at this batch instead of the tier's
    [claim.expect]                 # expected verdict per profile pattern; default "holds"
    "nvidia-h100-*" = "flipped"

The verdict compares the ratio B/A and its confidence interval with the claim's bounds:
`holds` when the whole interval is inside, `flipped` when it is wholly outside,
`inconclusive` otherwise. A verdict that differs from the expected one fails, good news
included: the deployment advice changed and someone must decide.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ClaimsModel, validate
from ..errors import ConfigError, read_toml
from ..results import METRICS, RunResult
from ..spec import MODES, RunSpec, Workload
from ..stats import paired_ratio, ratio_of_medians
from ..status import Status

RELATIONS = {"lower": (0.0, 1.0), "higher": (1.0, math.inf)}
VERDICTS = (Status.HOLDS, Status.FLIPPED, Status.INCONCLUSIVE)


@dataclass(frozen=True)
class Side:
    model: str
    backend: str
    mode: str = "eager"


@dataclass(frozen=True)
class Claim:
    id: str
    sentence: str
    source: str
    metric: str
    bounds: tuple[float, float]
    a: Side
    b: Side
    device: str = "cuda"
    profiles: tuple[str, ...] = ("*",)
    expect: tuple[tuple[str, str], ...] = ()
    claimed_ratio: float | None = None
    relation: str = ""
    batch_size: int | None = None  # a claim about another batch than the tier's (FP8 GEMMs at bs 8)

    def applies_to(self, profile: str) -> bool:
        return any(fnmatch.fnmatch(profile, pat) for pat in self.profiles)

    def expected(self, profile: str) -> str | None:
        """The verdict this file expects on `profile` (hardware-independent expectations only);
        None when it says nothing: then the verdict recorded for the profile decides, and a
        profile with none gets the verdict reported, not judged."""
        for pattern, verdict in self.expect:
            if fnmatch.fnmatch(profile, pattern):
                return verdict
        return None

    def specs(self, workload: Workload) -> tuple[RunSpec, RunSpec]:
        if self.batch_size is not None:
            workload = dataclasses.replace(workload, batch_size=self.batch_size)
        return (RunSpec(self.a.model, self.a.backend, self.device, self.a.mode, workload),
                RunSpec(self.b.model, self.b.backend, self.device, self.b.mode, workload))

    def describe_bounds(self) -> str:
        lo, hi = self.bounds
        if lo <= 0:
            return f"< {hi:g}"
        if math.isinf(hi):
            return f"> {lo:g}"
        return f"in [{lo:g}, {hi:g}]"


def load_claims(path: str | Path) -> list[Claim]:
    """Parse and validate a claims file (quantperf.config.ClaimsModel): unknown keys, wrong
    types, unknown metrics or modes, bad bounds and duplicate ids fail with file, key and value."""
    path = Path(path)
    data = validate(ClaimsModel, read_toml(path, "takeaways file"), path)
    claims, seen = [], set()
    for i, raw in enumerate(data.claim):
        where = f"{path}: claim[{i}] {raw.id!r}"
        if raw.metric not in METRICS:
            raise ConfigError(f"{where}.metric: unknown metric {raw.metric!r}; known: {', '.join(METRICS)}")
        if raw.bounds is not None:
            lo, hi = raw.bounds
        elif raw.relation in RELATIONS:
            lo, hi = RELATIONS[raw.relation]
        elif raw.relation == "within" and raw.within is not None:
            lo, hi = 1 - raw.within, 1 + raw.within
        else:
            raise ConfigError(f"{where}.relation: is {raw.relation!r}; use lower, higher, within (+ within = 0.05) "
                              "or bounds = [lo, hi]")
        if not lo < hi:
            raise ConfigError(f"{where}.bounds: must satisfy lo < hi, got [{lo}, {hi}]")
        for key, side in (("a", raw.a), ("b", raw.b)):
            if side.mode not in MODES:
                raise ConfigError(f"{where}.{key}.mode: unknown mode {side.mode!r}; known: {', '.join(MODES)}")
        if raw.id in seen:
            raise ConfigError(f"{where}.id: duplicate claim id")
        seen.add(raw.id)
        claims.append(Claim(
            id=raw.id, sentence=raw.sentence, source=raw.source, metric=raw.metric, bounds=(float(lo), float(hi)),
            a=Side(raw.a.model, raw.a.backend, raw.a.mode), b=Side(raw.b.model, raw.b.backend, raw.b.mode),
            device=raw.device, profiles=tuple(raw.profiles), expect=tuple(raw.expect.items()),
            claimed_ratio=raw.claimed_ratio, relation=raw.relation or "bounds", batch_size=raw.batch_size,
        ))
    return claims


@dataclass
class ClaimResult:
    claim: Claim
    profile: str
    verdict: str
    expected: str
    ratio: float | None
    low: float | None
    high: float | None
    confidence: float
    p_value: float | None = None
    rounds: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.expected is None or self.verdict == self.expected

    def message(self) -> str:
        c = self.claim
        # FLIPPED means "differs from what the file expects on this profile", in either direction
        if self.expected is None:
            label = self.verdict.upper()
        else:
            label = "FLIPPED" if self.verdict not in (self.expected, Status.INCONCLUSIVE) else self.verdict.upper()
        expectation = ("no verdict recorded for this profile yet" if self.expected is None
                       else f"expected {self.expected}, got {self.verdict}")
        unit = c.metric.replace("_per_s", "/s").replace("_", " ").replace("tokens", "tok")
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.3g} [{self.low:.3g}, {self.high:.3g}]"
        claimed = f", source measured {c.claimed_ratio:g}" if c.claimed_ratio else ""
        return (f"{label} {c.id} [{self.profile}]: {c.b.backend}/{c.a.backend} {unit} = {ratio}, "
                f"claimed {c.describe_bounds()}{claimed}; {expectation}"
                + (f" ({'; '.join(self.notes)})" if self.notes else ""))


def classify(bounds: tuple[float, float], low: float, high: float) -> str:
    """`holds` when the CI [low, high] lies inside the bounds, `flipped` when wholly outside."""
    lo, hi = bounds
    if lo <= low and high <= hi:
        return Status.HOLDS
    if high < lo or low > hi:
        return Status.FLIPPED
    return Status.INCONCLUSIVE


def _quality_ratio(a: RunResult, b: RunResult, z: float):
    """PPL_b/PPL_a from ln ratios against a common reference, with SEs combined (conservative)."""
    qa, qb = a.quality, b.quality
    ln = qb["ln_ppl_ratio"] - qa["ln_ppl_ratio"]
    se = math.hypot(qb["ln_ppl_ratio_se"], qa["ln_ppl_ratio_se"])
    return math.exp(ln), math.exp(ln - z * se), math.exp(ln + z * se)


def evaluate(claim: Claim, a: RunResult, b: RunResult, profile: str, confidence: float = 0.95,
             expected: str | None = "file") -> ClaimResult:
    """The claim's verdict on B/A. `expected`: the verdict to compare with (None: none known);
    by default what the claims file says for the profile."""
    expected = claim.expected(profile) if expected == "file" else expected
    for side in (a, b):
        if not side.ok:
            return ClaimResult(claim, profile, Status.INCONCLUSIVE, expected, None, None, None, confidence,
                               notes=[f"{side.spec.id} not measured: {side.reason}"])
    from scipy.stats import norm

    methods = [r.timing_methods for r in (a, b)]
    if all(methods) and methods[0] != methods[1]:
        return ClaimResult(claim, profile, Status.INCONCLUSIVE, expected, None, None, None, confidence,
                           notes=[f"timing methods differ ({a.spec.backend}: {', '.join(methods[0])}; "
                                  f"{b.spec.backend}: "
                                  f"{', '.join(methods[1])}): kernel figures are never compared across methods"])
    p = None
    if claim.metric in ("ppl",) and a.quality and b.quality:
        ratio, low, high = _quality_ratio(a, b, norm.ppf(0.5 + confidence / 2))
    else:
        ma, mb = a.metrics.get(claim.metric), b.metrics.get(claim.metric)
        if ma is None or mb is None:
            return ClaimResult(claim, profile, Status.INCONCLUSIVE, expected, None, None, None, confidence,
                               notes=[f"metric {claim.metric} missing from a result"])
        paired = (b.spec.id in (a.timings.get("interleaved_with") or [])
                  and len(ma.samples) == len(mb.samples) >= 2)
        if paired:
            est = paired_ratio(ma.samples, mb.samples, confidence=confidence)
            ratio, low, high, p = est.ratio, est.low, est.high, est.p_value
        elif len(ma.samples) >= 2 and len(mb.samples) >= 2:
            est = ratio_of_medians(ma.samples, mb.samples, confidence=confidence)
            ratio, low, high, p = est.ratio, est.low, est.high, est.p_value
        else:  # deterministic figures (memory)
            ratio = mb.value / ma.value
            low = high = ratio
    verdict = classify(claim.bounds, low, high)
    n = min(len(a.metrics[claim.metric].samples),
            len(b.metrics[claim.metric].samples)) if claim.metric in a.metrics else 0
    return ClaimResult(claim, profile, verdict, expected, ratio, low, high, confidence, p, n)


def is_inconclusive(claim: Claim, a_samples: list[float], b_samples: list[float], confidence: float = 0.95) -> bool:
    """For adaptive rounds: does the CI of B/A still straddle a bound?"""
    if len(a_samples) < 2 or len(b_samples) < 2:
        return True
    est = (paired_ratio if len(a_samples) == len(b_samples) else ratio_of_medians)(a_samples, b_samples,
                                                                                   confidence=confidence)
    return classify(claim.bounds, est.low, est.high) == Status.INCONCLUSIVE


def check_claim(claim: Claim, a: RunResult, b: RunResult, profile: str, store, *, confidence: float = 0.95,
                record: bool = False) -> tuple[ClaimResult, str | None]:
    """Evaluate a claim on both sides' results against the verdict it is expected to give: the
    claim's own for this profile, else the one the profile's baseline `store` recorded (a
    verdict taken from published figures says so in a note). With `record`, a conclusive verdict
    is written into the store. Returns the result and the store's line about what it recorded."""
    recorded = store.takeaway(claim.id)
    expected = claim.expected(profile) or (recorded or {}).get("verdict")
    result = evaluate(claim, a, b, profile, confidence, expected=expected)
    published = (recorded or {}).get("published") if recorded and not recorded.get("recorded_at") else None
    if published and not claim.expected(profile):
        result.notes.append(f"expected verdict from published figures ({published.get('source')}: "
                            f"{published.get('figures')})"
                            + (f"; disagreeing source: {published['disagrees']}" if published.get("disagrees") else ""))
    line = None
    if record and result.verdict != Status.INCONCLUSIVE:
        packages = {k: v for k, v in (b.environment or {}).get("packages", {}).items() if v}
        line = store.record_takeaway(claim.id, result.verdict, result.ratio, [result.low, result.high], packages,
                                     b.timestamp)
        store.save()
    return result, line
