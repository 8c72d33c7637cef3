"""torchao weight-only quantization through transformers' TorchAoConfig."""

from __future__ import annotations

from .hf import HFBackend

FP8_MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x)


def fp8_reason(capability: tuple[int, int], name: str) -> str | None:
    """Why a GPU of this compute capability cannot run torchao's float8 kernels (None: it can)."""
    if tuple(capability) >= FP8_MIN_CAPABILITY:
        return None
    return (f"torchao float8 needs a GPU of compute capability >= 8.9 (Ada, Hopper or newer: L4, L40S, H100, "
            f"H200); this one ({name}) is {capability[0]}.{capability[1]}")


class TorchaoBackend(HFBackend):
    requires = (("torchao", "pip install torchao"),)

    def compute_dtype(self, device: str) -> str:
        return self.entry.options["dtype"]

    def library_reason(self, device: str) -> str | None:
        reason = super().library_reason(device)
        if not reason and self.entry.kwargs["scheme"].startswith("fp8") and device == "cuda":
            import torch

            return fp8_reason(torch.cuda.get_device_capability(), torch.cuda.get_device_name())
        if reason or self.entry.kwargs["scheme"] != "int4wo":
            return reason
        if device != "cuda":
            return "torchao int4 weight-only has CUDA kernels only"
        try:
            from torchao.utils import is_mslk_version_at_least
        except ImportError:  # older torchao: int4 runs on its own tinygemm kernels
            return None
        if not is_mslk_version_at_least("1.0.0"):
            return ("torchao int4 weight-only packs weights with mslk kernels: pip install mslk-cuda (>= 1.0.0) "
                    "built for your torch/CUDA")
        return None

    def from_pretrained_kwargs(self, device: str) -> dict:
        from transformers import TorchAoConfig

        scheme = self.entry.kwargs["scheme"]
        if scheme == "int8wo":
            from torchao.quantization import Int8WeightOnlyConfig

            cfg = Int8WeightOnlyConfig()
        elif scheme == "fp8wo":
            from torchao.quantization import Float8WeightOnlyConfig

            cfg = Float8WeightOnlyConfig()
        elif scheme == "fp8dq":
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

            cfg = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        else:
            from torchao.quantization import Int4WeightOnlyConfig

            cfg = Int4WeightOnlyConfig(group_size=self.entry.options["group_size"])
        return {"quantization_config": TorchAoConfig(quant_type=cfg), "dtype": self.entry.options["dtype"]}
