"""Backend registry: one module per backend family, imported only when the backend is used.

    >>> from quantperf.backends import get_backend, BACKENDS
    >>> get_backend("bnb-nf4").unavailable_reason("cpu")   # None when it can run here

Every backend's options that change results (compute dtype, block size, thresholds,
execution providers) are part of its identity and are recorded with every result.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str  # relative module that holds the class
    cls: str
    devices: tuple[str, ...]
    description: str
    kwargs: dict = field(default_factory=dict)


_E = BackendEntry
BACKENDS: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        _E("torch-fp32", "hf", "TorchDtypeBackend", ("cpu", "cuda"), "transformers model in float32", {"dtype": "float32"}),
        _E("torch-fp16", "hf", "TorchDtypeBackend", ("cuda",), "transformers model in float16", {"dtype": "float16"}),
        _E("torch-bf16", "hf", "TorchDtypeBackend", ("cpu", "cuda"), "transformers model in bfloat16", {"dtype": "bfloat16"}),
        _E("bnb-int8", "bnb", "BnbInt8Backend", ("cuda", "cpu"), "bitsandbytes LLM.int8, outlier threshold 6.0", {"threshold": 6.0}),
        _E("bnb-int8-nodecomp", "bnb", "BnbInt8Backend", ("cuda", "cpu"), "bitsandbytes int8 without outlier decomposition (threshold 0)", {"threshold": 0.0}),
        _E("bnb-nf4", "bnb", "Bnb4bitBackend", ("cuda", "cpu"), "bitsandbytes 4-bit NormalFloat", {"quant_type": "nf4"}),
        _E("bnb-fp4", "bnb", "Bnb4bitBackend", ("cuda", "cpu"), "bitsandbytes 4-bit float", {"quant_type": "fp4"}),
        _E("ort-fp32", "ort", "OrtBackend", ("cpu", "cuda"), "ONNX export with KV cache, run by onnxruntime", {"variant": "fp32"}),
        _E("ort-int8", "ort", "OrtBackend", ("cpu",), "onnxruntime dynamic INT8 (MatMulInteger) of the export", {"variant": "int8"}),
        _E("ort-int4", "ort", "OrtBackend", ("cpu", "cuda"), "onnxruntime MatMulNBits 4-bit weight-only of the export", {"variant": "int4"}),
        _E("torchao-int8wo", "torchao", "TorchaoBackend", ("cuda", "cpu"), "torchao int8 weight-only via TorchAoConfig", {"scheme": "int8wo"}),
        _E("torchao-int4wo", "torchao", "TorchaoBackend", ("cuda",), "torchao int4 weight-only via TorchAoConfig", {"scheme": "int4wo"}),
    )
}


if os.environ.get("QUANTPERF_TEST_BACKENDS") == "1":
    for _entry in (
        _E("fake-fp16", "fake", "FakeBackend", ("cpu",), "test double: 2 ms/token", {"token_ms": 2.0, "prefill_ms": 5.0, "bytes_per_param": 2.0}),
        _E("fake-int8", "fake", "FakeBackend", ("cpu",), "test double: 3 ms/token", {"token_ms": 3.0, "prefill_ms": 6.0, "bytes_per_param": 1.1}),
    ):
        BACKENDS[_entry.name] = _entry


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str):
    """Instantiate a backend by name; imports its module (never its heavy library) now."""
    try:
        entry = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    module = importlib.import_module(f".{entry.module}", __name__)
    return getattr(module, entry.cls)(entry)
