import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantperf import roofline as R


def test_h100_peak_from_nvml_bus_and_clock():
    # H100 SXM HBM3: 5120-bit bus at 2619 MHz, double data rate = 3352 GB/s (datasheet 3.35 TB/s)
    assert R.peak_bandwidth_from_clock(5120, 2619) == pytest.approx(3352.3, rel=1e-4)


def test_datasheet_lookup_prefers_the_longest_match():
    assert R.datasheet_peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert R.datasheet_peak_gbps("NVIDIA H100 PCIe") == 2000.0
    assert R.datasheet_peak_gbps("Tesla T4") == 320.0
    assert R.datasheet_peak_gbps("Some Future Card") is None


def test_kv_cache_bytes_llama_1b():
    # TinyLlama: 22 layers, 4 KV heads of 128, fp16; 160 cached tokens
    assert R.kv_cache_bytes_per_step(22, 4, 64, 160, 1, 2) == 2 * 22 * 4 * 64 * 160 * 2


@given(st.integers(min_value=1, max_value=10**11), st.floats(min_value=0.1, max_value=1e4))
def test_achieved_bandwidth_is_bytes_times_rate(nbytes, rate):
    gbps = R.achieved_bandwidth_gbps(nbytes, rate)
    assert gbps == pytest.approx(nbytes * rate / 1e9)
    # at the roofline rate, the achieved bandwidth is the peak
    peak = 3350.0
    assert R.achieved_bandwidth_gbps(nbytes, R.roofline_tokens_per_s(nbytes, peak)) == pytest.approx(peak)


def test_traffic_uses_mean_context():
    t = R.decode_traffic(1000, num_layers=1, num_kv_heads=1, head_dim=1, prompt_tokens=128, new_tokens=64,
                         batch_size=1, kv_bytes_per_element=2)
    assert t.kv_cache_bytes == 2 * 160 * 2 and t.total == 1000 + 640
    assert R.roofline_fraction(10.0, None) is None
