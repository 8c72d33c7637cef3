"""The interface every backend implements."""

from __future__ import annotations

from typing import Any

from ..errors import BackendUnavailable
from ..models import ArchInfo, ModelSource


class Backend:
    """Turns a ModelSource into a LoadedModel on a device. Subclasses set `identity()`."""

    def __init__(self, entry):
        self.entry = entry
        self.name: str = entry.name
        self.devices: tuple[str, ...] = entry.devices

    def identity(self, device: str, mode: str = "eager") -> dict[str, Any]:
        """Options that change results; recorded with every result (`mode`: the scenario's)."""
        return dict(self.entry.kwargs)

    def unavailable_reason(self, device: str) -> str | None:
        """None when the backend can run on `device`; otherwise what to install or which hardware it needs."""
        if device not in self.devices:
            return f"{self.name} does not run on {device}; it runs on: {', '.join(self.devices)}"
        if device == "cuda":
            try:
                import torch
            except ImportError:
                return "torch is not installed: pip install torch"
            if not torch.cuda.is_available():
                return (f"{self.name} on cuda needs an NVIDIA GPU with a CUDA build of torch "
                    "(torch.cuda.is_available() is False)")
        return self.library_reason(device)

    def library_reason(self, device: str) -> str | None:
        return None

    def check(self, device: str) -> None:
        reason = self.unavailable_reason(device)
        if reason:
            raise BackendUnavailable(f"{self.name}: {reason}")

    def prepare(self, source: ModelSource, device: str, mode: str = "eager") -> bool:
        """Build what `load` needs and caches (an export, a quantized graph); True when something
        was built now. The engine then measures in a fresh process, so one-time costs never show
        in the figures. `mode` is the scenario the load is for (eager, graph, kernel, quality):
        a backend may load less for one (ONNX Runtime's kernel mode: one decoder layer)."""
        return False

    def load(self, source: ModelSource, device: str, mode: str = "eager") -> "LoadedModel":
        raise NotImplementedError


class LoadedModel:
    """A model ready to run. All token ids are plain Python lists / numpy arrays at the boundary."""

    backend: str
    device: str
    arch: ArchInfo
    options: dict

    def weight_bytes(self) -> int:
        """Bytes held by parameters and buffers, quantized storage and its scales counted."""
        raise NotImplementedError

    def streamed_weight_bytes(self) -> int:
        """Weight bytes one decode step reads (an untied input-embedding table is only gathered)."""
        return self.weight_bytes()

    def kv_bytes_per_element(self) -> float:
        return 2.0

    def supports_mode(self, mode: str) -> str | None:
        """None if `mode` can run; else why not."""
        return None if mode == "eager" else f"{self.backend} has no {mode} mode"

    def after_warmup(self, mode: str) -> None:
        """Called after warm-up rounds: verify the mode really took effect."""

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        """Greedy-generate exactly `new_tokens` per row; call clock.start() before and
        clock.mark() once per generated token. Returns the generated ids."""
        raise NotImplementedError

    def logits(self, input_ids) -> "Any":
        """float32 torch tensor [T, vocab] on the CPU for one sequence of ids (a 1-D list/array)."""
        raise NotImplementedError

    def runtime(self) -> dict:
        """The runtime identity read back from what was loaded (quantperf.fidelity.runtime_identity):
        for a backend without a transformers model, the process's Hub-kernels setting and versions."""
        from ..fidelity import runtime_identity

        return runtime_identity()

    def execution_report(self) -> dict:
        """Where the work ran (e.g. ONNX Runtime node placement); empty when trivial."""
        return {}

    def close(self) -> None:
        pass
