"""The `generate` scenario (modes `eager` and `graph`): greedy HF-style generation of exactly
`new_tokens` tokens per round, a timestamp per token.

eager: `generate` with a dynamic KV cache. graph: `generate(cache_implementation="static")`,
for which transformers compiles the decode step; a backend that transformers does not compile
reports the mode as unsupported rather than timing eager code.

Derived per round: prefill ms (time to the first token), decode tok/s (from the remaining
per-token intervals), end-to-end tok/s; per result, the memory roofline of the decode step.
"""

from __future__ import annotations

import statistics

from .. import trackers as M
from ..results import Metric
from ..status import Status
from .base import Scenario

PROMPT_SEED = 1234


def prompt_ids(vocab_size: int, batch_size: int, prompt_tokens: int, seed: int = PROMPT_SEED):
    """Deterministic prompt token ids (low ids skipped: they are special tokens in most vocabularies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(10, vocab_size, size=(batch_size, prompt_tokens), dtype=np.int64)


def compile_counters() -> dict:
    """torch.compile's counters that must not move while a graph-mode round is measured: graphs
    compiled, recompilations, CUDA-graph skips. A round in which any moved timed compilation."""
    import torch._dynamo.utils as du

    c = du.counters
    return {"unique_graphs": c["stats"]["unique_graphs"], "calls_captured": c["stats"].get("calls_captured", 0),
            "recompiles": sum(c["recompiles"].values()) if "recompiles" in c else 0,
            "cudagraph_skips": sum(c["inductor"].get(k, 0) for k in ("cudagraph_skips",)),
            "frames_ok": c["frames"].get("ok", 0)}


def counters_changed(before: dict | None, after: dict) -> list[str]:
    """What moved between two compile_counters() snapshots (calls_captured moves on every traced
    call, so only compilations, recompilations and skips count)."""
    if before is None:
        return []
    return [f"{k} {before[k]} -> {after[k]}" for k in ("unique_graphs", "recompiles", "cudagraph_skips", "frames_ok")
            if after.get(k) != before.get(k)]


def decode_tokens_per_s(batch_size: int, decode_ms: list[float]) -> float:
    """Tokens/s over the decode steps of one round: batch x steps / seconds."""
    return batch_size * len(decode_ms) / (sum(decode_ms) / 1e3)


class GenerateScenario(Scenario):
    name = "generate"
    gated = ("decode_tokens_per_s", "prefill_ms")  # e2e tok/s repeats decode: reported, not gated
    primary = ("decode_tokens_per_s", True)  # the noise experiment's metric and whether higher is better

    @staticmethod
    def injection_unit_ms(rounds: list[dict]) -> float:
        """What `inject_ms` is added to: the mean decode time of one token (ms)."""
        return statistics.median(sum(r["decode_ms"]) / len(r["decode_ms"]) for r in rounds)

    def __init__(self, spec, loaded, settings=None):
        super().__init__(spec, loaded, settings)
        w = spec.workload
        self._ids = prompt_ids(loaded.arch.vocab_size, w.batch_size, w.prompt_tokens)

    def unsupported(self) -> str | None:
        return self.loaded.supports_mode(self.spec.mode)

    def warmup_times(self) -> bool:
        """Generation's warm-up rounds are thrown away (compilation, caches, clocks): nothing they
        time decides the rounds, unless a delay is injected (its GPU sleep is calibrated by a timing)."""
        return self._inject_ms() is not None

    def _inject_ms(self) -> float | None:
        ms = self.settings.get("inject_ms")
        return ms if ms is not None else (M.injected_delay_ms(self.spec.backend) or None)

    def warmup(self, rounds: int) -> dict:
        if self.spec.mode == "graph":
            rounds = max(rounds, 2)  # the first static-cache rounds compile
        for _ in range(rounds):
            self.round()
        from ..errors import ModeUnsupported

        try:
            self.loaded.after_warmup(self.spec.mode)
        except ModeUnsupported as exc:
            return {"status": Status.MODE_UNSUPPORTED, "reason": str(exc)}
        return {"status": Status.OK, "warmup_rounds": rounds}

    def measure_round(self) -> dict:
        spec = self.spec
        new_tokens = spec.workload.new_tokens * self.settings["tokens_factor"]
        clock = M.TokenClock(spec.device, new_tokens, spec.backend, self.settings["inject_ms"])
        before = compile_counters() if spec.mode == "graph" else None
        tokens = self.loaded.run_round(self._ids, new_tokens, spec.mode, clock)
        timing = clock.finish()
        changed = counters_changed(before, compile_counters()) if spec.mode == "graph" else []
        if len(tokens[0]) != new_tokens:
            raise RuntimeError(f"{spec.backend} generated {len(tokens[0])} tokens, expected exactly {new_tokens}")
        return {"prefill_ms": timing.prefill_ms, "decode_ms": timing.decode_ms, "total_ms": timing.total_ms,
                "first_tokens": tokens[0][:8], **({"invalid": changed} if changed else {})}

    @classmethod
    def metrics(cls, spec, rounds: list[dict]) -> dict[str, Metric]:
        b = spec.workload.batch_size
        return {
            "decode_tokens_per_s": Metric.of("decode_tokens_per_s",
                                             [decode_tokens_per_s(b, r["decode_ms"]) for r in rounds]),
            # every round yields len(decode_ms) + 1 tokens per sequence (the first comes from prefill)
            "e2e_tokens_per_s": Metric.of("e2e_tokens_per_s",
                                          [b * (len(r["decode_ms"]) + 1) / (r["total_ms"] / 1e3) for r in rounds]),
            "prefill_ms": Metric.of("prefill_ms", [r["prefill_ms"] for r in rounds]),
        }

    @classmethod
    def figures(cls, spec, load_info: dict, rounds: list[dict], metrics: dict[str, Metric], environment: dict) -> dict:
        """The decode step's memory roofline: bytes read per step x steps/s over the card's peak."""
        from .. import roofline as R

        w, arch = spec.workload, load_info["arch"]
        traffic = R.decode_traffic(load_info["streamed_weight_bytes"], arch["num_layers"], arch["num_kv_heads"],
                                   arch["head_dim"], w.prompt_tokens, w.new_tokens, w.batch_size,
                                   load_info["kv_bytes_per_element"])
        steps_per_s = metrics["decode_tokens_per_s"].value / w.batch_size
        achieved = R.achieved_bandwidth_gbps(traffic.total, steps_per_s)
        peak = (environment.get("gpu") or {}).get("peak_bandwidth_gbps") if spec.device == "cuda" else None
        return {"roofline": {
            "bytes_per_decode_step": traffic.total,
            "weight_bytes_per_step": traffic.weight_bytes,
            "kv_bytes_per_step": traffic.kv_cache_bytes,
            "achieved_gbps": round(achieved, 2),
            "peak_gbps": peak,
            "fraction_of_peak": None if not peak else round(R.roofline_fraction(achieved, peak), 4),
            "roofline_tokens_per_s": (None if not peak
                                      else round(R.roofline_tokens_per_s(traffic.total, peak, w.batch_size), 1)),
        }}


SCENARIO = GenerateScenario
