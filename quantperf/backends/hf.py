"""transformers-based backends: a model loaded by `from_pretrained`, run by HF `generate`.

`eager` mode is plain `generate` with a dynamic KV cache (what most users run). `graph`
mode is `generate(cache_implementation="static")`, for which transformers compiles the
decode step itself; a backend whose quantizer transformers will not compile reports the
mode as unsupported instead of silently running eager.

Placement on CUDA: a model whose weights (estimated from its config and the backend's bits
before loading, `estimate_weight_bytes`) fit the first visible GPU loads onto it whole; one that
does not is spread over the visible GPUs (`device_map="auto"` with a `max_memory` for each GPU and
none for the CPU: nothing is offloaded); one that does not fit them together is unavailable, with
what it needs (`plan_placement`). A spread model runs eager mode only, and its memory figures
are the first GPU's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

from ..models import ModelSource, arch_info
from .base import Backend, LoadedModel
from .layer import WALK_ENV, full_weight_bytes, kernel_walk, one_layer_overrides, quiet_unexpected_keys

DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
PLACEMENT_MARGIN = 0.9  # share of a GPU's free memory the weights may take (activations, KV cache, workspace)


def effective_bits(entry) -> float:
    """Bits per quantized weight with its block scales: bitsandbytes 4-bit keeps one fp32 absmax
    per `blocksize` weights, torchao int4 a bf16 scale and zero point per `group_size`."""
    opts = entry.options
    return (entry.bits + (32 / opts["blocksize"] if "blocksize" in opts else 0)
            + (32 / opts["group_size"] if "group_size" in opts else 0))


def estimate_weight_bytes(arch, bits: float, compute_bytes: int) -> int:
    """Weight bytes of a model before loading it: the decoder's linears at `bits` per weight,
    embeddings and lm_head in the compute dtype (quantizers leave them alone)."""
    emb = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    return int((arch.parameters - emb) * bits / 8 + emb * compute_bytes)


def plan_placement(need: int, free: list[int], margin: float = PLACEMENT_MARGIN) -> dict | None:
    """from_pretrained's placement for weights of `need` bytes on GPUs with `free` bytes each:
    the first GPU whole when it holds them, else spread over all (`device_map="auto"`, a
    `max_memory` per GPU and none for the CPU), else None (they do not fit)."""
    if free and need <= free[0] * margin:
        return {"device_map": {"": 0}}
    if len(free) > 1 and need <= sum(free) * margin:
        return {"device_map": "auto", "max_memory": {i: int(f * margin) for i, f in enumerate(free)}}
    return None


def tensor_bytes(t, seen: set[int]) -> int:
    """Bytes of a tensor, walking tensor subclasses (torchao) into their inner tensors."""
    import torch

    if t is None or not isinstance(t, torch.Tensor):
        return 0
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        if names:
            return sum(tensor_bytes(getattr(t, n), seen) for n in names)
    try:
        key = t.untyped_storage().data_ptr()
    except Exception:
        key = id(t)
    if key in seen and key != 0:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def _quant_state_bytes(state, seen: set[int]) -> int:
    """bitsandbytes 4-bit QuantState: absmax (+ nested state2), code, offset."""
    if state is None:
        return 0
    total = 0
    for attr in ("absmax", "code", "offset"):
        total += tensor_bytes(getattr(state, attr, None), seen)
    return total + _quant_state_bytes(getattr(state, "state2", None), seen)


def module_weight_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        total += tensor_bytes(p, seen)
        total += tensor_bytes(getattr(p, "SCB", None), seen)  # bnb int8 row scales
        total += _quant_state_bytes(getattr(p, "quant_state", None), seen)
    for b in model.buffers():
        total += tensor_bytes(b, seen)
    # bitsandbytes LLM.int8: after the first forward the row scales move from `weight.SCB` to the
    # module's MatmulLtState (`state.SCB`, and `state.CB` the int8 weight itself): count them there too
    # (the storage de-duplication keeps a tensor seen twice from counting twice)
    for m in model.modules() if hasattr(model, "modules") else ():
        state = getattr(m, "state", None)
        if state is not None and hasattr(state, "SCB"):
            total += tensor_bytes(getattr(state, "SCB", None), seen)
            total += tensor_bytes(getattr(state, "CB", None), seen)
    return total


class _Marker:
    """A logits processor that timestamps each generated token (it leaves scores untouched)."""

    def __init__(self, clock):
        self.clock = clock

    def __call__(self, input_ids, scores):
        self.clock.mark()
        return scores


class HFLoaded(LoadedModel):
    def __init__(self, backend: str, device: str, model, source: ModelSource, options: dict, kv_bytes: float,
                 full_config=None):
        self.backend, self.device, self.model, self.options = backend, device, model, options
        # kernel mode's one-layer load (quantperf.backends.layer): the model has one decoder layer,
        # `arch` and the weight figures are the checkpoint's own (all its layers)
        self.kernel_walk = "layer" if full_config is not None else "full"
        self.arch = arch_info(full_config if full_config is not None else model.config)
        self._kv_bytes = kv_bytes
        self._compiled_checked = False
        self._cache_class: dict[str, str] = {}  # mode -> the KV-cache class generate built (read back once)

    def weight_bytes(self) -> int:
        if self.kernel_walk == "layer":
            return full_weight_bytes(module_weight_bytes(self.model), module_weight_bytes(self.model.model.layers[0]),
                                     self.arch.num_layers)
        return module_weight_bytes(self.model)

    def streamed_weight_bytes(self) -> int:
        total = self.weight_bytes()
        if not self.arch.tie_word_embeddings:
            emb = self.model.get_input_embeddings()
            total -= module_weight_bytes(emb)
        return total

    def kv_bytes_per_element(self) -> float:
        return self._kv_bytes

    def devices(self) -> list[str]:
        """The devices the model's modules sit on (several when it was spread over GPUs)."""
        placed = getattr(self.model, "hf_device_map", None) or {}
        return sorted({str(d) for d in placed.values()}) or [str(self.model.device)]

    def spread_reason(self) -> str | None:
        """Why a mode that runs on one GPU cannot run this model (None when it sits on one device)."""
        devices = self.devices()
        if len(devices) > 1:
            return (f"{self.backend}: the model is spread over {len(devices)} devices ({', '.join(devices)}); "
                    "graph and kernel modes capture one GPU's work")
        return None

    def execution_report(self) -> dict:
        devices = self.devices()
        return {"devices": devices} if len(devices) > 1 else {}

    def supports_mode(self, mode: str) -> str | None:
        if mode == "eager":
            return None
        spread = self.spread_reason()
        if spread:
            return spread
        if self.device != "cuda":
            return (
                f"{self.backend}: graph mode needs CUDA (transformers compiles the static-cache decode step "
                "only on accelerators)"
            )
        quantizer = getattr(self.model, "hf_quantizer", None)
        if quantizer is not None and not getattr(quantizer, "is_compileable", False):
            return f"{self.backend}: transformers does not compile models quantized by {type(quantizer).__name__}"
        return None

    def _generate(self, input_ids, new_tokens: int, mode: str, processors: list):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        ids = torch.as_tensor(input_ids, device=self.model.device)
        gen = GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            num_beams=1, pad_token_id=0, eos_token_id=None,
        )
        kwargs: dict[str, Any] = {}
        if mode == "graph":
            kwargs["cache_implementation"] = "static"
        # the first call (a warm-up round) returns its cache too: the KV-cache class generate really
        # built is read back from it (quantperf.fidelity), no later round pays for it
        read_cache = mode not in self._cache_class
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), generation_config=gen,
                logits_processor=LogitsProcessorList(processors), return_dict_in_generate=read_cache, **kwargs,
            )
        if read_cache:
            self._cache_class[mode] = type(getattr(out, "past_key_values", None)).__name__
            out = out.sequences
        return out[:, ids.shape[1]:].tolist()

    def runtime(self) -> dict:
        from ..fidelity import runtime_identity

        cache = ",".join(sorted(set(self._cache_class.values()))) or None  # a worker runs one mode
        out = runtime_identity(self.model, cache)
        if getattr(self, "mode", None) == "kernel":  # how kernel mode's walk was built (backends.layer)
            out["settings"]["kernel_walk"] = self.kernel_walk
        return out

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        clock.start()
        return self._generate(input_ids, new_tokens, mode, [_Marker(clock)])

    def after_warmup(self, mode: str) -> None:
        if mode != "graph":
            return
        import torch._dynamo

        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        if graphs == 0:
            from ..errors import ModeUnsupported

            raise ModeUnsupported(
                f"{self.backend}: generate(cache_implementation='static') compiled no graph on this setup, "
                "so graph mode would only measure eager speed"
            )

    def logits(self, input_ids):
        import torch

        ids = torch.as_tensor([list(input_ids)], device=self.model.device)
        with torch.inference_mode():
            return self.model(ids).logits[0].float().cpu()

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


class HFBackend(Backend):
    """Loads with `AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)`."""

    requires: tuple[tuple[str, str], ...] = ()  # (import name, pip hint)
    layer_walk = True  # kernel mode may load one decoder layer and copy it (quantperf.backends.layer)

    def identity(self, device: str, mode: str = "eager") -> dict:
        """The options that change results. Kernel mode's walk is a runtime setting (`kernel_walk`, read
        back from what was loaded: quantperf.fidelity), so a baseline of the other walk is incomparable."""
        return self.options_identity(device)

    def options_identity(self, device: str) -> dict:
        """The backend's options that change results (the walk of kernel mode added by identity())."""
        return dict(self.entry.kwargs)

    def library_reason(self, device: str) -> str | None:
        from ..fidelity import hub_kernels_reason

        for mod, hint in (("torch", "pip install torch"), ("transformers", "pip install transformers")) + self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed: {hint}"
        return hub_kernels_reason(self.entry.options)

    def compute_dtype(self, device: str) -> str:
        return "float16" if device == "cuda" else "float32"

    def from_pretrained_kwargs(self, device: str) -> dict:
        raise NotImplementedError

    def load(self, source: ModelSource, device: str, mode: str = "eager") -> HFLoaded:
        import torch
        from transformers import AutoModelForCausalLM

        from ..fidelity import load_kwargs

        self.check(device)
        # Hub kernels off unless the configuration asked (USE_HUB_KERNELS and use_kernels), and its attention
        kwargs = self.from_pretrained_kwargs(device) | load_kwargs(self.entry.options)
        dtype = kwargs.get("dtype")
        if isinstance(dtype, str):
            kwargs["dtype"] = getattr(torch, dtype)
        placement = {"device_map": {"": "cpu"}} if device == "cpu" else self._cuda_placement(source)
        full_config = None
        if mode == "kernel" and self.layer_walk and kernel_walk(os.environ.get(WALK_ENV)) == "layer":
            full_config = source.config()
            kwargs |= one_layer_overrides(full_config)
        with quiet_unexpected_keys() if full_config is not None else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(source.path_or_id, **placement, **source.load_kwargs(),
                                                         **kwargs)
        model.eval()
        kv_dtype = self.compute_dtype(device)
        loaded = HFLoaded(self.name, device, model, source, self.identity(device, mode), DTYPES[kv_dtype], full_config)
        loaded.mode = mode
        return loaded

    def _cuda_placement(self, source: ModelSource) -> dict:
        import torch

        from ..errors import BackendUnavailable

        try:
            need = estimate_weight_bytes(arch_info(source.config()), effective_bits(self.entry),
                                         DTYPES[self.compute_dtype("cuda")])
        except (AttributeError, KeyError, TypeError, ValueError, OSError):
            return {"device_map": {"": 0}}  # a config the estimate does not know: the first GPU, as before
        free = [torch.cuda.mem_get_info(0)[0]]
        if need > free[0] * PLACEMENT_MARGIN:  # only then look at (and open a context on) the other GPUs
            free += [torch.cuda.mem_get_info(i)[0] for i in range(1, torch.cuda.device_count())]
        plan = plan_placement(need, free)
        if plan is None:
            raise BackendUnavailable(
                f"{self.name}: {source.ref} needs about {need / 2**30:.0f} GiB of GPU memory for its weights; the "
                f"{len(free)} visible GPU(s) have {sum(free) / 2**30:.0f} GiB free: run it on a host with more GPU "
                "memory (under pytest -n each worker sees one GPU: run this tier without -n)")
        return plan


class TorchDtypeBackend(HFBackend):
    def compute_dtype(self, device: str) -> str:
        return self.entry.kwargs["dtype"]

    def from_pretrained_kwargs(self, device: str) -> dict:
        return {"dtype": self.entry.kwargs["dtype"]}
