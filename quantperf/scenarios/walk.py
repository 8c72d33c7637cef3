"""Kernel mode's walk from a one-layer load (issue #28): per module type, layer 0's module and L-1
deep copies of it, each with storage of its own (weights, quantized data, scales, quantization
state), L the checkpoint's number of decoder layers, so a walk reads as many distinct bytes as a
walk over a full load's layers, without loading and quantizing them (12-15 s per process for
llama-1b on an H100).

The copies are made before any forward, so they are in the state the library's loader left layer 0
in (bitsandbytes LLM.int8 moves its scales on the first forward, as every layer of a full load
does on its first). Every copy is fed layer 0's own input on the real prompt (a clone each, so
the inputs are as distinct in memory as a full walk's). Weights and inputs have layer 0's values
where a full walk has each layer's: of the kernels timed, only bitsandbytes LLM.int8 with an
outlier threshold branches on them (which input columns it decomposes). The lm_head is the loaded
one, fed the one-layer model's final hidden state (the lm_head is timed, never gated).
"""

from __future__ import annotations

import copy

from ..backends.layer import WALK_ENV
from ..errors import QuantperfError


def module_tensors(module) -> dict[str, object]:
    """Every plain tensor a linear module computes with, by name: parameters and buffers, tensor
    subclasses (torchao) walked to their inner tensors, bitsandbytes' quantization state (4-bit
    `quant_state`: absmax, code, nested state2; int8 `SCB`, and the MatmulLtState's CB/SCB)."""
    import torch

    out: dict[str, object] = {}

    def add(name: str, t) -> None:
        if t is None or not isinstance(t, torch.Tensor):
            return
        if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            if names:
                for n in names:
                    add(f"{name}.{n}", getattr(t, n))
                return
        out[name] = t

    def add_state(name: str, state) -> None:
        if state is None:
            return
        for attr in ("absmax", "code", "offset"):
            add(f"{name}.{attr}", getattr(state, attr, None))
        add_state(f"{name}.state2", getattr(state, "state2", None))

    for name, p in module.named_parameters():
        add(name, p)
        add(f"{name}.SCB", getattr(p, "SCB", None))
        add(f"{name}.CB", getattr(p, "CB", None))
        add_state(f"{name}.quant_state", getattr(p, "quant_state", None))
    for name, b in module.named_buffers():
        add(name, b)
    state = getattr(module, "state", None)
    if state is not None and hasattr(state, "SCB"):
        add("state.SCB", getattr(state, "SCB", None))
        add("state.CB", getattr(state, "CB", None))
    return out


def storage_keys(module) -> set[int]:
    """The storages a module's tensors live in (data pointers of their untyped storages)."""
    keys = set()
    for t in module_tensors(module).values():
        ptr = t.untyped_storage().data_ptr()
        if ptr:
            keys.add(ptr)
    return keys


class CopyFailed(QuantperfError):
    """A module that cannot be copied, or whose copy shares storage with the original or another copy."""


def _relink(module, c) -> None:
    """bitsandbytes 4-bit: a copied Params4bit still names the original module as its own, and the
    copied module's `quant_state` is not its weight's: both point at the copy's, as after a load."""
    w = getattr(c, "weight", None)
    if getattr(w, "module", None) is module:
        w.module = c
    state = getattr(module, "quant_state", None)
    if state is not None and state is getattr(module.weight, "quant_state", None):
        c.quant_state = w.quant_state


def copies_of(module, n: int) -> list:
    """`n` deep copies of `module`, checked to share no storage with it or with each other. A
    library whose modules cannot be copied so is one clear error: the layer walk is never
    silently replaced by another (QUANTPERF_KERNEL_WALK=full loads every layer instead)."""
    out, seen = [], storage_keys(module)
    for i in range(n):
        try:
            c = copy.deepcopy(module)
        except Exception as exc:
            raise CopyFailed(f"kernel mode's layer walk: {type(module).__name__} (weight "
                             f"{type(module.weight).__name__}) cannot be copied ({type(exc).__name__}: "
                             f"{str(exc)[:160]}); set {WALK_ENV}=full to load every layer") from exc
        _relink(module, c)
        keys = storage_keys(c)
        if not keys or keys & seen:
            raise CopyFailed(f"kernel mode's layer walk: copy {i + 1} of {type(module).__name__} shares storage with "
                             f"layer 0 or another copy; set {WALK_ENV}=full to load every layer")
        seen |= keys
        out.append(c)
    return out


def layer_walk(layer0: dict[str, object], layers: int) -> dict[str, list]:
    """Per module type: layer 0's module followed by layers-1 independent copies of it."""
    return {t: [m, *copies_of(m, layers - 1)] for t, m in layer0.items()}


def walk_inputs(x, layers: int) -> list:
    """Layer 0's captured input for each module of a walk: itself, then one clone per copy."""
    return [x, *(x.clone() for _ in range(layers - 1))]
