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


def _tokenize(worker, corpus: str) -> list[int]:
    from transformers import AutoTokenizer

    from .corpus import load_text
    from .models import resolve

    source = resolve(worker.spec.model)
    if not source.tokenizer:
        raise ConfigError(
            f"quality needs a tokenizer; {worker.spec.model} has none (synthetic models have random weights, "
            "on which quality is noise): use model 'fixture', a local checkpoint or an hf: id"
        )
    kw = {k: v for k, v in source.load_kwargs().items() if k != "use_safetensors"}
    tok = AutoTokenizer.from_pretrained(source.path_or_id, **kw)
    return tok(load_text(corpus))["input_ids"]


def worker_quality(worker, params: dict) -> dict:
    """Run inside a worker. role=reference writes log-probs to params['file']; role=compare
    reads them and returns QualityStats plus greedy generations."""
    from .corpus import PROMPTS, windows

    ids = _tokenize(worker, params.get("corpus", "heldout"))
    wins = windows(ids, params.get("context", 256), params.get("max_windows", 32))
    where = f"{worker.spec.backend} on {worker.spec.device}"
    if params["role"] == "reference":
        logps = []
        for w in wins:
            logits = worker.loaded.logits(w[:-1]).numpy()
            check_finite(logits, where)
            logps.append(log_softmax(logits).astype(np.float32))
        stacked = np.stack(logps)
        np.save(params["file"], stacked)
        targets = np.asarray([w[1:] for w in wins])
        nll = -np.take_along_axis(stacked, targets[..., None], axis=-1).astype(np.float64)
        return {"windows": len(wins), "context": params.get("context", 256), "tokens": int(nll.size),
                "ppl": float(np.exp(nll.mean())), "generations": worker.generate_text(list(PROMPTS), new_tokens=24)}
    ref = np.load(params["file"], mmap_mode="r")
    if ref.shape[0] != len(wins):
        raise ValueError(f"reference file {params['file']} has {ref.shape[0]} windows, expected {len(wins)}")
    acc = Accumulator()
    for i, w in enumerate(wins):
        logits = worker.loaded.logits(w[:-1]).numpy()
        check_finite(logits, where)
        acc.add(np.asarray(ref[i], dtype=np.float64), log_softmax(logits), np.asarray(w[1:]))
    stats = acc.result().to_dict()
    stats["reference_backend"] = params.get("reference_backend")
    stats["windows"] = len(wins)
    stats["context"] = params.get("context", 256)
    stats["generations"] = worker.generate_text(list(PROMPTS), new_tokens=24)
    return stats


REFERENCE_BACKEND = {"cpu": "torch-fp32", "cuda": "torch-fp16"}


def measure_quality(specs, *, isolation: str = "process", params: dict | None = None,
                    environment: dict | None = None, profile: str | None = None):
    """Quality of each spec against the device's reference backend on the same model.

    Returns RunResults whose `quality` holds the statistics and whose metrics hold ppl,
    ln_ppl_ratio, mean_kld, top1_agreement and rms_dp (each one value with its SE).
    """
    import os
    import tempfile
    from dataclasses import replace

    from .engine import _not_measured, open_worker
    from .envinfo import environment as env_fn, profile_id

    params = dict(params or {})
    environment = environment or env_fn()
    out = []
    by_ref: dict[tuple, list] = {}
    for s in specs:
        by_ref.setdefault((s.model, s.device), []).append(s)
    for (model, device), group in by_ref.items():
        prof = profile or profile_id(device)
        ref_spec = replace(group[0], backend=REFERENCE_BACKEND[device], mode="eager")
        fd, ref_file = tempfile.mkstemp(prefix="quantperf-ref-", suffix=".npy")
        os.close(fd)
        try:
            worker = open_worker(ref_spec, isolation)
            try:
                info = worker.load()
                if info["status"] != "ok":
                    raise RuntimeError(f"reference backend {ref_spec.backend} failed: {info['reason']}")
                ref_stats = worker.quality(params=params | {"role": "reference", "file": ref_file})
                ref_info = info
            finally:
                worker.close()
            for spec in group:
                if spec.backend == ref_spec.backend:
                    # the reference against itself: zero divergence by definition, no second run
                    stats = {"tokens": ref_stats["tokens"], "ppl_ref": ref_stats["ppl"], "ppl": ref_stats["ppl"],
                             "ln_ppl_ratio": 0.0, "ln_ppl_ratio_se": 0.0, "mean_kld": 0.0, "mean_kld_se": 0.0,
                             "kld_p999": 0.0, "kld_p99": 0.0, "kld_p90": 0.0, "kld_median": 0.0,
                             "top1_agreement": 1.0, "top1_agreement_se": 0.0, "rms_dp": 0.0, "rms_dp_se": 0.0,
                             "reference_backend": ref_spec.backend, "windows": ref_stats["windows"],
                             "context": ref_stats["context"], "generations": ref_stats.get("generations", [])}
                    out.append(_quality_result(spec, stats, ref_info, environment, prof))
                    continue
                worker = open_worker(spec, isolation)
                try:
                    info = worker.load()
                    if info["status"] != "ok":
                        out.append(_not_measured(spec, info["status"], info["reason"], info.get("identity"), environment, prof))
                        continue
                    stats = worker.quality(params=params | {"role": "compare", "file": ref_file,
                                                            "reference_backend": ref_spec.backend})
                except Exception as exc:
                    out.append(_not_measured(spec, "error", f"{spec.backend}: {type(exc).__name__}: {exc}",
                                             None, environment, prof))
                    continue
                finally:
                    worker.close()
                out.append(_quality_result(spec, stats, info, environment, prof))
        finally:
            try:
                os.unlink(ref_file)
            except OSError:
                pass
    order = {s.id: i for i, s in enumerate(specs)}
    return sorted(out, key=lambda r: order[r.spec.id])


def _quality_result(spec, stats: dict, info: dict, environment: dict, profile: str):
    from .engine import _now
    from .results import Metric, RunResult

    stats = dict(stats)
    gens = stats.pop("generations", [])
    metrics = {
        "ppl": Metric.of("ppl", [stats["ppl"]]),
        "ln_ppl_ratio": Metric.of("ln_ppl_ratio", [stats["ln_ppl_ratio"]], stats["ln_ppl_ratio_se"]),
        "mean_kld": Metric.of("mean_kld", [stats["mean_kld"]], stats["mean_kld_se"]),
        "top1_agreement": Metric.of("top1_agreement", [stats["top1_agreement"]], stats["top1_agreement_se"]),
        "rms_dp": Metric.of("rms_dp", [stats["rms_dp"]], stats["rms_dp_se"]),
    }
    return RunResult(spec=spec, status="ok", profile=profile, backend_identity=info["identity"], metrics=metrics,
                     quality=stats, generations=gens, arch=info["arch"], environment=environment, timestamp=_now())


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
BACKEND_CLASS = {
    "torch-fp32": "16-bit", "torch-fp16": "16-bit", "torch-bf16": "16-bit", "ort-fp32": "16-bit",
    "bnb-int8": "8-bit", "bnb-int8-nodecomp": "8-bit", "ort-int8": "8-bit", "torchao-int8wo": "8-bit",
    "bnb-nf4": "4-bit", "bnb-fp4": "4-bit", "ort-int4": "4-bit", "torchao-int4wo": "4-bit",
}


def limit_violations(backend: str, stats: dict) -> list[str]:
    """Which quality limits a backend's figures break (empty when within all)."""
    limits = QUALITY_LIMITS.get(BACKEND_CLASS.get(backend, "4-bit"))
    out = []
    ppl_ratio = math.exp(stats["ln_ppl_ratio"])
    if ppl_ratio > limits["ppl_ratio"]:
        out.append(f"PPL ratio {ppl_ratio:.4f} > {limits['ppl_ratio']}")
    if stats["mean_kld"] > limits["mean_kld"]:
        out.append(f"mean KLD {stats['mean_kld']:.5f} > {limits['mean_kld']}")
    if stats["top1_agreement"] < limits["top1_agreement"]:
        out.append(f"top-1 agreement {stats['top1_agreement']:.4f} < {limits['top1_agreement']}")
    return out
