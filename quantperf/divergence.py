"""Quality metrics in the conventions of llama.cpp's `perplexity --kl-divergence`.

A reference backend (the highest precision on the device: fp32 on CPU, fp16 on CUDA) writes
its log-probabilities over held-out windows to a file; each quantized backend then computes,
per token, its NLL, KL(P_ref || Q), top-1 agreement and Δp of the true token against it:

- PPL = exp(mean NLL) for both models;
- ln(PPL_q / PPL_ref) = mean(NLL_q - NLL_ref), SE = sd(NLL_q - NLL_ref) / sqrt(N): taking
  the sd of the per-token *difference* is what corrects for the covariance of the two;
- mean KL with its SE and its 99.9/99/90th percentiles and median;
- top-1 agreement p with SE sqrt(p(1-p)/N);
- RMS of Δp = Q(true) - P(true), SE by the delta method.

SEs treat tokens as independent, as llama.cpp does. NaN or inf logits raise, never averaged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError, NonFiniteLogits
from .results import METRICS

# the quality scenario's metrics, in results.METRICS' order: the one list, derived from the kinds there
QUALITY_METRICS = tuple(name for name, (_, _, kind) in METRICS.items() if kind == "quality")


@dataclass(frozen=True)
class QualityStats:
    tokens: int
    ppl_ref: float
    ppl: float
    ln_ppl_ratio: float
    ln_ppl_ratio_se: float
    mean_kld: float
    mean_kld_se: float
    kld_p999: float
    kld_p99: float
    kld_p90: float
    kld_median: float
    top1_agreement: float
    top1_agreement_se: float
    rms_dp: float
    rms_dp_se: float

    def to_dict(self) -> dict:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def check_finite(logits, where: str) -> None:
    arr = np.asarray(logits)
    if not np.all(np.isfinite(arr)):
        bad = int((~np.isfinite(arr)).sum())
        raise NonFiniteLogits(f"{where}: {bad} NaN/inf logits; a quantized model producing them is broken, not noisy")


class Accumulator:
    """Per-token statistics, accumulated window by window."""

    def __init__(self):
        self.nll_ref, self.nll_q, self.kld, self.agree, self.dp = [], [], [], [], []

    def add(self, ref_logp: np.ndarray, q_logp: np.ndarray, targets: np.ndarray) -> None:
        if ref_logp.shape != q_logp.shape:
            raise ValueError(f"reference and quantized log-probs differ in shape: {ref_logp.shape} vs {q_logp.shape}")
        rows = np.arange(len(targets))
        p = np.exp(ref_logp)
        self.nll_ref.append(-ref_logp[rows, targets])
        self.nll_q.append(-q_logp[rows, targets])
        self.kld.append(np.maximum((p * (ref_logp - q_logp)).sum(-1), 0.0))
        self.agree.append(ref_logp.argmax(-1) == q_logp.argmax(-1))
        self.dp.append(np.exp(q_logp[rows, targets]) - p[rows, targets])

    def result(self) -> QualityStats:
        if not self.nll_ref:
            raise ValueError("no tokens accumulated")
        nr, nq, kl = (np.concatenate(x) for x in (self.nll_ref, self.nll_q, self.kld))
        ag, dp = np.concatenate(self.agree).astype(float), np.concatenate(self.dp)
        n = len(nr)
        diff = nq - nr
        sd = lambda x: float(x.std(ddof=1)) if n > 1 else 0.0  # noqa: E731
        top1 = float(ag.mean())
        ms = float((dp**2).mean())
        rms = math.sqrt(ms)
        return QualityStats(
            tokens=n,
            ppl_ref=float(math.exp(nr.mean())),
            ppl=float(math.exp(nq.mean())),
            ln_ppl_ratio=float(diff.mean()),
            ln_ppl_ratio_se=sd(diff) / math.sqrt(n),
            mean_kld=float(kl.mean()),
            mean_kld_se=sd(kl) / math.sqrt(n),
            kld_p999=float(np.percentile(kl, 99.9)),
            kld_p99=float(np.percentile(kl, 99)),
            kld_p90=float(np.percentile(kl, 90)),
            kld_median=float(np.median(kl)),
            top1_agreement=top1,
            top1_agreement_se=math.sqrt(top1 * (1 - top1) / n),
            rms_dp=rms,
            rms_dp_se=0.0 if rms == 0 else sd(dp**2) / math.sqrt(n) / (2 * rms),
        )


# Per-backend quality limits against the device's reference on the fixture model. Chosen from
# measurements (H100 and CPU, 2026-11-26, 4096 held-out tokens): 8-bit backends measured
# PPL ratio <= 1.0003, mean KLD <= 6.5e-4, top-1 >= 0.973; 4-bit measured PPL ratio <= 1.0004,
# mean KLD <= 2.5e-3, top-1 >= 0.950. The PPL limits are the conventional 1% / 5%; the KLD and
# top-1 limits leave 3-4x headroom over the worst measured backend of each class, so a broken
# kernel (or a quantizer that silently changed) trips them while run-to-run noise does not.
QUALITY_LIMITS = {
    "16-bit": {"ppl_ratio": 1.005, "mean_kld": 0.001, "top1_agreement": 0.97},
    "8-bit": {"ppl_ratio": 1.01, "mean_kld": 0.002, "top1_agreement": 0.95},
    "4-bit": {"ppl_ratio": 1.05, "mean_kld": 0.01, "top1_agreement": 0.90},
}


def limit_violations(quality_class: str, stats: dict) -> list[str]:
    """Which limits of a quality class (a backend's registry entry names it) the figures break
    (empty when within all)."""
    if quality_class not in QUALITY_LIMITS:
        raise ConfigError(f"unknown quality class {quality_class!r}; known: {', '.join(QUALITY_LIMITS)}")
    limits = QUALITY_LIMITS[quality_class]
    out = []
    ppl_ratio = math.exp(stats["ln_ppl_ratio"])
    if ppl_ratio > limits["ppl_ratio"]:
        out.append(f"PPL ratio {ppl_ratio:.4f} > {limits['ppl_ratio']}")
    if stats["mean_kld"] > limits["mean_kld"]:
        out.append(f"mean KLD {stats['mean_kld']:.5f} > {limits['mean_kld']}")
    if stats["top1_agreement"] < limits["top1_agreement"]:
        out.append(f"top-1 agreement {stats['top1_agreement']:.4f} < {limits['top1_agreement']}")
    return out
