"""torchao weight-only quantization through transformers' TorchAoConfig."""

from __future__ import annotations

from .hf import HFBackend


class TorchaoBackend(HFBackend):
    requires = (("torchao", "pip install torchao"),)

    def compute_dtype(self, device: str) -> str:
        return "bfloat16"

    def identity(self, device: str) -> dict:
        ident = {"scheme": self.entry.kwargs["scheme"], "dtype": "bfloat16"}
        if self.entry.kwargs["scheme"] == "int4wo":
            ident["group_size"] = 128
        return ident

    def library_reason(self, device: str) -> str | None:
        reason = super().library_reason(device)
        if reason or self.entry.kwargs["scheme"] != "int4wo":
            return reason
        if device != "cuda":
            return "torchao int4 weight-only has CUDA kernels only"
        return None

    def from_pretrained_kwargs(self, device: str) -> dict:
        from transformers import TorchAoConfig

        if self.entry.kwargs["scheme"] == "int8wo":
            from torchao.quantization import Int8WeightOnlyConfig

            cfg = Int8WeightOnlyConfig()
        else:
            from torchao.quantization import Int4WeightOnlyConfig

            cfg = Int4WeightOnlyConfig(group_size=128)
        return {"quantization_config": TorchAoConfig(quant_type=cfg), "dtype": "bfloat16"}
