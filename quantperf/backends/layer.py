"""Kernel mode's one-layer load: a transformers backend loads the checkpoint with one decoder layer
(`num_hidden_layers=1`), so the library's own quantizer produces layer 0 exactly as a full load
does (module classes, quantization state, dtypes) in a fraction of the time; the kernel scenario
then walks layer 0's linear modules and L-1 copies of them (quantperf.scenarios.walk), L the
checkpoint's own number of layers.

`QUANTPERF_KERNEL_WALK=full` loads every layer and walks them instead (the walk before issue #28).
The walk is a runtime setting of the result (`kernel_walk`, quantperf.fidelity), and a baseline
that recorded none walked all layers (`fidelity.as_recorded`): figures of one walk are never gated
against the other's (incomparable, named), and the backend identity is the same for both.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import ConfigError

WALK_ENV = "QUANTPERF_KERNEL_WALK"
WALKS = ("layer", "full")
LAYER_WALK = "layer 0 and L-1 copies of it (one-layer load)"
FULL_WALK = "all layers (full load)"


def kernel_walk(raw: str | None) -> str:
    """How kernel mode builds its walk (QUANTPERF_KERNEL_WALK; unset: layer)."""
    if raw in (None, ""):
        return "layer"
    if raw not in WALKS:
        raise ConfigError(f"{WALK_ENV}={raw!r}: not a kernel walk; use one of {', '.join(WALKS)} (layer: a one-layer "
                          "load and copies of layer 0; full: every layer loaded) or unset it (layer)")
    return raw


def one_layer_overrides(config) -> dict:
    """from_pretrained's config overrides for a one-layer load (per-layer lists cut to layer 0)."""
    out: dict = {"num_hidden_layers": 1}
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and layer_types:
        out["layer_types"] = list(layer_types[:1])
    return out


@contextmanager
def quiet_unexpected_keys():
    """transformers reports layers 1..L-1 of the checkpoint as unexpected keys of a one-layer model:
    expected here, so its load report is kept out of the log while loading."""
    import logging

    names = ("transformers.utils.loading_report", "transformers.modeling_utils")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def full_weight_bytes(one_layer: int, layer0: int, layers: int) -> int:
    """A full load's weight bytes from a one-layer load's: the decoder layers are alike in size."""
    return one_layer + (layers - 1) * layer0
