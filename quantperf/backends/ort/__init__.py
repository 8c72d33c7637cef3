"""ONNX Runtime backends: the model exported to ONNX with its KV cache (`export`), optionally
converted by onnxruntime's own tools (`quantize`: fp16, dynamic INT8, MatMulNBits 4-bit), run
by a greedy decode loop over an InferenceSession (`session`: numpy feeds on the CPU, IOBinding
with the KV cache on the device on CUDA); `kernel` times one decoder layer's linears alone.

- ort-fp32: the export as is (CPU and CUDA).
- ort-fp16: float16 conversion, KV cache in float16; CUDA only (the CPU EP has few fp16 kernels).
- ort-int8: `quantize_dynamic` (MatMulInteger); CPU only (no CUDA kernels: reported
  unavailable there, never run on the CPU behind the user's back).
- ort-int4: MatMulNBits 4-bit weight-only, block 32, symmetric (CPU and CUDA).

On a CUDA EP every load checks, through ORT's profiler at decode shape, which provider each
node ran on: compute nodes on the CPU and Memcpy nodes inside the graph are an error, not a
result.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ...models import ModelSource
from ..base import Backend
from .export import BUILT, export_fp32, graph_weight_bytes
from .kernel import TIMING_ENV, WALK, OrtKernelLoaded, cuda_timing
from .quantize import FP16_KEEP_FP32_MODULES, INT4_BLOCK_SIZE, quantize_variant, variant_unavailable_reason
from .session import OrtLoaded, node_placement, placement_problems, providers_for

__all__ = ["OrtBackend", "OrtLoaded", "OrtKernelLoaded", "BUILT", "export_fp32", "quantize_variant",
           "graph_weight_bytes", "variant_unavailable_reason", "node_placement", "placement_problems"]

KERNEL_EXPORT_LAYERS = 1  # kernel mode times decoder layer 0's projections: a one-layer export holds them


class OrtBackend(Backend):
    @property
    def variant(self) -> str:
        return self.entry.kwargs["variant"]

    def identity(self, device: str, mode: str = "eager") -> dict:
        # One intra-op thread with spinning off: a decode step at batch 1 is too small to split
        # across cores profitably, and a single pinned thread is what makes runs repeatable.
        ident = {"variant": self.variant, "providers": providers_for(device),
                 "intra_op_num_threads": 1, "allow_spinning": False}
        if self.variant == "int8":
            ident.update(method="quantize_dynamic", weight_type="QInt8")
        if self.variant == "int4":
            ident.update(method="MatMulNBits", block_size=INT4_BLOCK_SIZE, symmetric=True)
        if self.variant == "fp16":
            ident.update(method="convert_float_to_float16", keep_io_types=False,
                         fp32_modules=list(FP16_KEEP_FP32_MODULES))
        if mode == "kernel":  # how many weight copies a timed call walks changes what is measured
            ident.update(kernel_walk=WALK)
        if device == "cuda":
            ident.update(io_binding=True)
            if mode == "kernel":  # wall-timed and GPU-timed figures are different measurements
                ident.update(kernel_timing=cuda_timing(os.environ.get(TIMING_ENV)))
        return ident

    def unavailable_reason(self, device: str) -> str | None:
        reason = super().unavailable_reason(device)
        why = variant_unavailable_reason(self.variant, device)
        if why is None:
            return reason
        # keep the registry's "runs on: ..." sentence when it applies, and say why the variant can't
        return f"{reason} ({why})" if device not in self.devices else why

    def library_reason(self, device: str) -> str | None:
        for mod, hint in (("onnx", "pip install onnx"), ("onnxscript", "pip install onnxscript"),
                          ("torch", "pip install torch"), ("transformers", "pip install transformers")):
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed: {hint}"
        if importlib.util.find_spec("onnxruntime") is None:
            return ("onnxruntime is not installed: pip install 'quantperf[cpu]' (CPU) or 'quantperf[gpu]' "
                    "(onnxruntime-gpu)")
        if device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (
                    "the installed onnxruntime has no CUDAExecutionProvider "
                    f"(providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                    "built for your CUDA version instead of onnxruntime"
                )
        return None

    def _graph(self, source: ModelSource, mode: str = "eager") -> tuple[Path, dict]:
        # kernel mode needs only the projections of decoder layer 0: a one-layer export (the
        # whole model's export does not fit a 64 GB disk at 8B shapes with its variants)
        fp32_dir, meta = export_fp32(source, layers=KERNEL_EXPORT_LAYERS if mode == "kernel" else None)
        return (fp32_dir, meta) if self.variant == "fp32" else quantize_variant(fp32_dir, self.variant)

    def prepare(self, source: ModelSource, device: str, mode: str = "eager") -> bool:
        before = len(BUILT)
        self._graph(source, mode)
        return len(BUILT) > before

    def load(self, source: ModelSource, device: str, mode: str = "eager") -> OrtLoaded | OrtKernelLoaded:
        self.check(device)
        model_dir, meta = self._graph(source, mode)
        if mode == "kernel":
            return OrtKernelLoaded(self.name, device, model_dir, meta, self.identity(device, mode))
        return OrtLoaded(self.name, device, model_dir, meta, self.identity(device), providers_for(device))
