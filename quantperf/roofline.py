"""Roofline arithmetic for decoding (pure): bytes read per decoded token and achieved bandwidth.

At batch size 1 a decode step reads every weight once (embedding tables excepted: only the
looked-up rows) plus the KV cache written so far. That byte count times decode steps per
second is the memory bandwidth the step achieved; over the card's peak it says how far the
backend is from the memory-bound floor.
"""

from __future__ import annotations

from dataclasses import dataclass

# Peak DRAM bandwidth in GB/s (1e9 bytes/s) from vendors' datasheets, for cards whose NVML
# does not report bus width and memory clock. Keyed by a lower-case substring of the name.
DATASHEET_PEAK_GBPS = {
    "h200": 4800.0,
    "h100 80gb hbm3": 3350.0,
    "h100 nvl": 3900.0,
    "h100 pcie": 2000.0,
    "a100-sxm4-80gb": 2039.0,
    "a100 80gb pcie": 1935.0,
    "a100": 1555.0,
    "l40s": 864.0,
    "l4": 300.0,
    "a10g": 600.0,
    "a10": 600.0,
    "t4": 320.0,
    "v100": 900.0,
    "rtx 4090": 1008.0,
    "rtx 3090": 936.0,
}


def peak_bandwidth_from_clock(bus_width_bits: int, max_mem_clock_mhz: float, data_rate: int = 2) -> float:
    """Peak DRAM bandwidth in GB/s = bus width (bytes) x memory clock (Hz) x transfers per clock."""
    return bus_width_bits / 8 * max_mem_clock_mhz * 1e6 * data_rate / 1e9


def datasheet_peak_gbps(gpu_name: str) -> float | None:
    name = gpu_name.lower()
    for key in sorted(DATASHEET_PEAK_GBPS, key=len, reverse=True):
        if key in name:
            return DATASHEET_PEAK_GBPS[key]
    return None


@dataclass(frozen=True)
class DecodeTraffic:
    """Bytes a single decode step reads, split by source."""

    weight_bytes: int
    kv_cache_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes


def kv_cache_bytes_per_step(
    num_layers: int, num_kv_heads: int, head_dim: int, context_tokens: float, batch_size: int, bytes_per_element: float
) -> float:
    """K and V of every layer for every cached position: 2 x L x H_kv x d x T x B x bytes."""
    return 2 * num_layers * num_kv_heads * head_dim * context_tokens * batch_size * bytes_per_element


def decode_traffic(
    streamed_weight_bytes: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    prompt_tokens: int,
    new_tokens: int,
    batch_size: int,
    kv_bytes_per_element: float,
) -> DecodeTraffic:
    """Average bytes per decode step over a round: the mean cached context is prompt + new/2."""
    mean_context = prompt_tokens + new_tokens / 2
    kv = kv_cache_bytes_per_step(num_layers, num_kv_heads, head_dim, mean_context, batch_size, kv_bytes_per_element)
    return DecodeTraffic(int(streamed_weight_bytes), int(kv))


def achieved_bandwidth_gbps(bytes_per_step: float, decode_steps_per_s: float) -> float:
    """GB/s = bytes read per decode step x decode steps per second / 1e9."""
    return bytes_per_step * decode_steps_per_s / 1e9


def roofline_fraction(achieved_gbps: float, peak_gbps: float | None) -> float | None:
    if not peak_gbps:
        return None
    return achieved_gbps / peak_gbps


def roofline_tokens_per_s(bytes_per_step: float, peak_gbps: float, batch_size: int = 1) -> float:
    """Upper bound on decode tokens/s if each step were purely memory bound."""
    return peak_gbps * 1e9 / bytes_per_step * batch_size
