"""torchao weight-only quantization through transformers' TorchAoConfig."""

from __future__ import annotations

from .hf import HFBackend


class TorchaoBackend(HFBackend):
    requires = (("torchao", "pip install torchao"),)

    def compute_dtype(self, device: str) -> str:
        return self.entry.options["dtype"]

    def library_reason(self, device: str) -> str | None:
        reason = super().library_reason(device)
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

        if self.entry.kwargs["scheme"] == "int8wo":
            from torchao.quantization import Int8WeightOnlyConfig

            cfg = Int8WeightOnlyConfig()
        else:
            from torchao.quantization import Int4WeightOnlyConfig

            cfg = Int4WeightOnlyConfig(group_size=self.entry.options["group_size"])
        return {"quantization_config": TorchAoConfig(quant_type=cfg), "dtype": self.entry.options["dtype"]}
