"""bitsandbytes backends through transformers' BitsAndBytesConfig.

LLM.int8 keeps outlier features (|x| > threshold) in fp16; threshold 6.0 is transformers'
default, threshold 0 ("nodecomp") is what public leaderboards call "8bit". 4-bit computes in
fp16 on CUDA and in bf16 (AVX512-BF16/AMX) or fp32 on CPU. Embeddings and lm_head stay in
the compute dtype, which is why a small model saves little memory.
"""

from __future__ import annotations

from ..envinfo import cpu_info
from .hf import HFBackend


class _BnbBackend(HFBackend):
    requires = (("bitsandbytes", "pip install bitsandbytes  (or: pip install 'quantperf[gpu]')"),)

    def compute_dtype(self, device: str) -> str:
        if device == "cuda":
            return "float16"
        return "bfloat16" if "avx512_bf16" in cpu_info()["isa"] else "float32"


class BnbInt8Backend(_BnbBackend):
    def options_identity(self, device: str) -> dict:
        return self.entry.options | {"compute_dtype": self.compute_dtype(device)}

    def from_pretrained_kwargs(self, device: str) -> dict:
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=self.entry.options["llm_int8_threshold"]),
            "dtype": self.compute_dtype(device),
        }


class Bnb4bitBackend(_BnbBackend):
    def options_identity(self, device: str) -> dict:
        return self.entry.options | {"bnb_4bit_compute_dtype": self.compute_dtype(device)}

    def from_pretrained_kwargs(self, device: str) -> dict:
        import torch
        from transformers import BitsAndBytesConfig

        compute = getattr(torch, self.compute_dtype(device))
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=self.entry.options["bnb_4bit_quant_type"],
                bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=self.entry.options["bnb_4bit_use_double_quant"],
            ),
            "dtype": self.compute_dtype(device),
        }
