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
    """A backend's facts, in one place. `options` are the settings that change its figures: they
    are its identity (recorded with every result, checked against baselines), together with what
    the backend derives from the device (a compute dtype, execution providers)."""

    name: str
    module: str  # relative module that holds the class
    cls: str
    devices: tuple[str, ...]
    description: str
    options: dict = field(default_factory=dict)
    bits: int = 16  # bits per weight of the quantized layers
    test_double: bool = False

    @property
    def quality_class(self) -> str:
        """The quality limits that apply (quantperf.divergence.QUALITY_LIMITS): 16-bit, 8-bit or 4-bit."""
        return "16-bit" if self.bits >= 16 else f"{self.bits}-bit"

    @property
    def kwargs(self) -> dict:  # the name the backend classes use
        return self.options


_E = BackendEntry
BACKENDS: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        _E("torch-fp32", "hf", "TorchDtypeBackend", ("cpu", "cuda"), "transformers model in float32",
           {"dtype": "float32"}, 32),
        _E("torch-fp16", "hf", "TorchDtypeBackend", ("cuda",), "transformers model in float16",
           {"dtype": "float16"}, 16),
        _E("torch-bf16", "hf", "TorchDtypeBackend", ("cpu", "cuda"), "transformers model in bfloat16",
           {"dtype": "bfloat16"}, 16),
        _E("bnb-int8", "bnb", "BnbInt8Backend", ("cuda", "cpu"), "bitsandbytes LLM.int8, outlier threshold 6.0",
           {"llm_int8_threshold": 6.0}, 8),
        _E("bnb-int8-nodecomp", "bnb", "BnbInt8Backend", ("cuda", "cpu"),
           "bitsandbytes int8 without outlier decomposition (threshold 0)", {"llm_int8_threshold": 0.0}, 8),
        _E("bnb-nf4", "bnb", "Bnb4bitBackend", ("cuda", "cpu"), "bitsandbytes 4-bit NormalFloat",
           {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False, "blocksize": 64}, 4),
        _E("bnb-fp4", "bnb", "Bnb4bitBackend", ("cuda", "cpu"), "bitsandbytes 4-bit float",
           {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, "blocksize": 64}, 4),
        _E("ort-fp32", "ort", "OrtBackend", ("cpu", "cuda"), "ONNX export with KV cache, run by onnxruntime",
           {"variant": "fp32"}, 32),
        _E("ort-fp16", "ort", "OrtBackend", ("cuda",),
           "the ONNX export converted to float16, on the CUDA execution provider",
           {"variant": "fp16"}, 16),
        _E("ort-int8", "ort", "OrtBackend", ("cpu",), "onnxruntime dynamic INT8 (MatMulInteger) of the export",
           {"variant": "int8"}, 8),
        _E("ort-int4", "ort", "OrtBackend", ("cpu", "cuda"), "onnxruntime MatMulNBits 4-bit weight-only of the export",
           {"variant": "int4"}, 4),
        _E("torchao-int8wo", "torchao", "TorchaoBackend", ("cuda", "cpu"), "torchao int8 weight-only via TorchAoConfig",
           {"scheme": "int8wo", "dtype": "bfloat16"}, 8),
        _E("torchao-int4wo", "torchao", "TorchaoBackend", ("cuda",), "torchao int4 weight-only via TorchAoConfig",
           {"scheme": "int4wo", "dtype": "bfloat16", "group_size": 128}, 4),
        # FP8 needs the tensor cores of compute capability >= 8.9 (Ada, Hopper, Blackwell): the seed's
        # "modern tensor cores" advice, checked where the card has them, skipped with the reason elsewhere
        _E("torchao-fp8wo", "torchao", "TorchaoBackend", ("cuda",),
           "torchao float8 (e4m3) weight-only via TorchAoConfig, bf16 compute",
           {"scheme": "fp8wo", "dtype": "bfloat16"}, 8),
        _E("torchao-fp8dq", "torchao", "TorchaoBackend", ("cuda",),
           "torchao dynamic float8 activations and float8 weights (per-row scales) via TorchAoConfig: FP8 tensor-core "
           "GEMMs",
           {"scheme": "fp8dq", "dtype": "bfloat16", "granularity": "per-row"}, 8),
    )
}
# The reference each device's quality figures are measured against: its highest precision.
REFERENCE_BACKEND = {"cpu": "torch-fp32", "cuda": "torch-fp16"}


if os.environ.get("QUANTPERF_TEST_BACKENDS") == "1":
    for _entry in (
        _E("fake-fp16", "fake", "FakeBackend", ("cpu",), "test double: 2 ms/token",
           {"token_ms": 2.0, "prefill_ms": 5.0, "bytes_per_param": 2.0}, 16, True),
        _E("fake-int8", "fake", "FakeBackend", ("cpu",), "test double: 3 ms/token",
           {"token_ms": 3.0, "prefill_ms": 6.0, "bytes_per_param": 1.1}, 8, True),
        _E("fake-lib", "fake", "FakeBackend", ("cpu",), "test double: per token calls qp_slowlib.work(2 ms)",
           {"token_ms": 2.0, "prefill_ms": 5.0, "bytes_per_param": 2.0, "library": "qp_slowlib"}, 16, True),
    ):
        BACKENDS[_entry.name] = _entry


def entry(name: str) -> BackendEntry:
    """The registry entry of a backend; an unknown name is a ConfigError listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


# the backend families that load through transformers' from_pretrained: the runtime options
# (quantperf.fidelity.RUNTIME_OPTIONS: hub_kernels, attn_implementation) apply to them
RUNTIME_OPTION_MODULES = ("hf", "bnb", "torchao")


def get_backend(name: str, options: dict | None = None):
    """Instantiate a backend by name; imports its module (never its heavy library) now. `options`:
    a configuration's runtime options (hub_kernels, attn_implementation), part of its identity."""
    from ..fidelity import DEFAULT_OPTIONS

    e = entry(name)
    options = {k: v for k, v in (options or {}).items() if DEFAULT_OPTIONS.get(k) != v}  # a default is no option
    if options:
        from dataclasses import replace

        e = replace(e, options={**e.options, **options})
    module = importlib.import_module(f".{e.module}", __name__)
    return getattr(module, e.cls)(e)
