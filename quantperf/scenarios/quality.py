"""The `quality` scenario: log-probabilities of a loaded model over held-out text windows,
against a reference backend (quantperf.divergence holds the pure statistics and the limits).

One pass is one round: the reference pass writes its log-probabilities to a file
(`role=reference`), every other backend's pass reads them and accumulates per-token NLL, KL
divergence, top-1 agreement and Δp (`role=compare`). Greedy continuations of a few prompts are
kept beside the figures, for a person to read.
"""

from __future__ import annotations

import numpy as np

from .. import trackers as M
from ..divergence import QUALITY_METRICS, Accumulator, check_finite, log_softmax
from ..errors import ConfigError
from ..results import Metric
from .base import Scenario


def _tokenizer(spec):
    from transformers import AutoTokenizer

    from ..models import resolve

    source = resolve(spec.model)
    if not source.tokenizer:
        raise ConfigError(
            f"quality needs a tokenizer; {spec.model} has none (synthetic models have random weights, "
            "on which quality is noise): use model 'fixture', a local checkpoint or an hf: id"
        )
    kw = {k: v for k, v in source.load_kwargs().items() if k != "use_safetensors"}
    return AutoTokenizer.from_pretrained(source.path_or_id, **kw)


class QualityScenario(Scenario):
    name = "quality"

    def generate_text(self, prompts, new_tokens: int = 24) -> list[str]:
        """Greedy continuations of text prompts."""
        tok = _tokenizer(self.spec)
        texts = []
        for p in prompts:
            clock = M.TokenClock(self.spec.device, new_tokens)
            out = self.loaded.run_round([tok(p)["input_ids"]], new_tokens, "eager", clock)
            texts.append(tok.decode(out[0]))
        return texts

    def measure_round(self) -> dict:
        from ..corpus import PROMPTS, load_text, windows

        params = self.settings
        ids = _tokenizer(self.spec)(load_text(params.get("corpus") or "heldout"))["input_ids"]
        context = params.get("context", 256)
        wins = windows(ids, context, params.get("max_windows", 32))
        where = f"{self.spec.backend} on {self.spec.device}"
        if params["role"] == "reference":
            logps = []
            for w in wins:
                logits = self.loaded.logits(w[:-1]).numpy()
                check_finite(logits, where)
                logps.append(log_softmax(logits).astype(np.float32))
            stacked = np.stack(logps)
            np.save(params["file"], stacked)
            targets = np.asarray([w[1:] for w in wins])
            nll = -np.take_along_axis(stacked, targets[..., None], axis=-1).astype(np.float64)
            return {"windows": len(wins), "context": context, "tokens": int(nll.size),
                    "ppl": float(np.exp(nll.mean())), "generations": self.generate_text(list(PROMPTS))}
        ref = np.load(params["file"], mmap_mode="r")
        if ref.shape[0] != len(wins):
            raise ValueError(f"reference file {params['file']} has {ref.shape[0]} windows, expected {len(wins)}")
        acc = Accumulator()
        for i, w in enumerate(wins):
            logits = self.loaded.logits(w[:-1]).numpy()
            check_finite(logits, where)
            acc.add(np.asarray(ref[i], dtype=np.float64), log_softmax(logits), np.asarray(w[1:]))
        return acc.result().to_dict() | {"reference_backend": params.get("reference_backend"), "windows": len(wins),
                                         "context": context, "generations": self.generate_text(list(PROMPTS))}

    def round(self) -> dict:
        return self.measure_round()  # not timed: no clocks, no throttle bookkeeping

    @classmethod
    def metrics(cls, spec, rounds: list[dict]) -> dict[str, Metric]:
        stats = rounds[-1]
        return {name: Metric.of(name, [stats[name]], stats.get(f"{name}_se")) for name in QUALITY_METRICS}


SCENARIO = QualityScenario
