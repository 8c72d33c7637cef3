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
    [claim.expect]                 # expected verdict per profile pattern; default "holds"
    "nvidia-h100-*" = "flipped"

The verdict compares the ratio B/A and its confidence interval with the claim's bounds:
`holds` when the whole interval is inside, `flipped` when it is wholly outside,
`inconclusive` otherwise. A verdict that differs from the expected one fails, good news
included: the deployment advice changed and someone must decide.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, read_toml
from .results import METRICS, RunResult
from .spec import MODES, RunSpec, Workload
from .stats import paired_ratio, ratio_of_medians

RELATIONS = {"lower": (0.0, 1.0), "higher": (1.0, math.inf)}
VERDICTS = ("holds", "flipped", "inconclusive")


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

    def applies_to(self, profile: str) -> bool:
        return any(fnmatch.fnmatch(profile, pat) for pat in self.profiles)

    def expected(self, profile: str) -> str:
        for pattern, verdict in self.expect:
            if fnmatch.fnmatch(profile, pattern):
                return verdict
        return "holds"

    def specs(self, workload: Workload) -> tuple[RunSpec, RunSpec]:
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
    path = Path(path)
    data = read_toml(path, "takeaways file")
    claims, seen = [], set()
    for i, raw in enumerate(data.get("claim", [])):
        where = f"{path}: claim[{i}]"
        try:
            cid = raw["id"]
            where = f"{path}: claim {cid!r}"
            metric = raw["metric"]
            if metric not in METRICS:
                raise ConfigError(f"{where}: field 'metric' is {metric!r}; known: {', '.join(METRICS)}")
            if "bounds" in raw:
                lo, hi = (float(x) for x in raw["bounds"])
            elif raw.get("relation") in RELATIONS:
                lo, hi = RELATIONS[raw["relation"]]
            elif raw.get("relation") == "within":
                pct = float(raw["within"])
                lo, hi = 1 - pct, 1 + pct
            else:
                raise ConfigError(f"{where}: field 'relation' is {raw.get('relation')!r}; use lower, higher, within (+ within = 0.05) or bounds = [lo, hi]")
            if not lo < hi:
                raise ConfigError(f"{where}: bounds must satisfy lo < hi, got [{lo}, {hi}]")
            sides = []
            for key in ("a", "b"):
                side = raw[key]
                mode = side.get("mode", "eager")
                if mode not in MODES:
                    raise ConfigError(f"{where}: field '{key}.mode' is {mode!r}; use one of {MODES}")
                sides.append(Side(side["model"], side["backend"], mode))
            expect = tuple((str(k), str(v)) for k, v in raw.get("expect", {}).items())
            for pattern, verdict in expect:
                if verdict not in ("holds", "flipped"):
                    raise ConfigError(f"{where}: expect.{pattern} is {verdict!r}; use 'holds' or 'flipped'")
            claim = Claim(
                id=cid, sentence=raw["sentence"], source=raw.get("source", ""), metric=metric, bounds=(lo, hi),
                a=sides[0], b=sides[1], device=raw.get("device", "cuda"), profiles=tuple(raw.get("profiles", ["*"])),
                expect=expect, claimed_ratio=raw.get("claimed_ratio"), relation=raw.get("relation", "bounds"),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing field {exc.args[0]!r}") from None
        if cid in seen:
            raise ConfigError(f"{where}: duplicate claim id")
        seen.add(cid)
        claims.append(claim)
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
        return self.verdict == self.expected

    def message(self) -> str:
        c = self.claim
        # FLIPPED means "differs from what the file expects on this profile", in either direction
        label = "FLIPPED" if self.verdict not in (self.expected, "inconclusive") else self.verdict.upper()
        unit = c.metric.replace("_per_s", "/s").replace("_", " ").replace("tokens", "tok")
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.3g} [{self.low:.3g}, {self.high:.3g}]"
        claimed = f", source measured {c.claimed_ratio:g}" if c.claimed_ratio else ""
        return (f"{label} {c.id} [{self.profile}]: {c.b.backend}/{c.a.backend} {unit} = {ratio}, "
                f"claimed {c.describe_bounds()}{claimed}; expected {self.expected}, got {self.verdict}"
                + (f" ({'; '.join(self.notes)})" if self.notes else ""))


def classify(bounds: tuple[float, float], low: float, high: float) -> str:
    """`holds` when the CI [low, high] lies inside the bounds, `flipped` when wholly outside."""
    lo, hi = bounds
    if lo <= low and high <= hi:
        return "holds"
    if high < lo or low > hi:
        return "flipped"
    return "inconclusive"


def _quality_ratio(a: RunResult, b: RunResult, z: float):
    """PPL_b/PPL_a from ln ratios against a common reference, with SEs combined (conservative)."""
    qa, qb = a.quality, b.quality
    ln = qb["ln_ppl_ratio"] - qa["ln_ppl_ratio"]
    se = math.hypot(qb["ln_ppl_ratio_se"], qa["ln_ppl_ratio_se"])
    return math.exp(ln), math.exp(ln - z * se), math.exp(ln + z * se)


def evaluate(claim: Claim, a: RunResult, b: RunResult, profile: str, confidence: float = 0.95) -> ClaimResult:
    expected = claim.expected(profile)
    for side in (a, b):
        if not side.ok:
            return ClaimResult(claim, profile, "inconclusive", expected, None, None, None, confidence,
                               notes=[f"{side.spec.id} not measured: {side.reason}"])
    from scipy.stats import norm

    p = None
    if claim.metric in ("ppl",) and a.quality and b.quality:
        ratio, low, high = _quality_ratio(a, b, norm.ppf(0.5 + confidence / 2))
    else:
        ma, mb = a.metrics.get(claim.metric), b.metrics.get(claim.metric)
        if ma is None or mb is None:
            return ClaimResult(claim, profile, "inconclusive", expected, None, None, None, confidence,
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
    n = min(len(a.metrics[claim.metric].samples), len(b.metrics[claim.metric].samples)) if claim.metric in a.metrics else 0
    return ClaimResult(claim, profile, verdict, expected, ratio, low, high, confidence, p, n)


def is_inconclusive(claim: Claim, a_samples: list[float], b_samples: list[float], confidence: float = 0.95) -> bool:
    """For adaptive rounds: does the CI of B/A still straddle a bound?"""
    if len(a_samples) < 2 or len(b_samples) < 2:
        return True
    est = (paired_ratio if len(a_samples) == len(b_samples) else ratio_of_medians)(a_samples, b_samples, confidence=confidence)
    return classify(claim.bounds, est.low, est.high) == "inconclusive"
