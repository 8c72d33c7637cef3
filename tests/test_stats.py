import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantperf.stats import Summary, interleaved_order, min_detectable_change, ratio_of_medians

finite = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=50))
def test_summary_orders_its_quantiles(values):
    s = Summary.from_values(values)
    assert s.min <= s.q1 <= s.median <= s.q3 <= s.max
    assert s.n == len(values)
    assert s.cv >= 0


def test_summary_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="non-finite"):
        Summary.from_values([1.0, float("nan")])
    with pytest.raises(ValueError):
        Summary.from_values([])


@settings(max_examples=30, deadline=None)
@given(st.lists(finite, min_size=3, max_size=12), st.floats(min_value=0.2, max_value=5.0))
def test_scaling_b_scales_ratio_and_keeps_point_inside_ci(values, factor):
    est = ratio_of_medians(values, [v * factor for v in values])
    assert est.ratio == pytest.approx(factor, rel=1e-9)
    assert est.low <= est.ratio * (1 + 1e-9) and est.high >= est.ratio * (1 - 1e-9)


def test_clear_shift_is_significant_and_identical_sets_are_not():
    a = [100, 101, 99, 100.5, 99.5, 100.2, 99.8]
    assert ratio_of_medians(a, [x * 0.8 for x in a]).p_value < 0.01
    assert ratio_of_medians(a, list(a)).p_value > 0.5


@given(st.floats(min_value=0.001, max_value=0.5), st.integers(min_value=2, max_value=200))
def test_more_rounds_detect_smaller_changes(cv, n):
    assert min_detectable_change(cv, n + 1) < min_detectable_change(cv, n)
    assert min_detectable_change(cv, n) == pytest.approx(2 * min_detectable_change(cv / 2, n))


def test_one_round_detects_nothing():
    assert min_detectable_change(0.10, 1) == math.inf


@given(st.integers(min_value=0, max_value=40))
def test_abba_order_balances_sides_and_cancels_linear_drift(rounds):
    order = interleaved_order(["A", "B"], rounds)
    assert order.count("A") == order.count("B") == rounds
    if rounds % 2 == 0:
        # with linear drift d*t, both sides accumulate the same total drift
        assert sum(i for i, s in enumerate(order) if s == "A") == sum(i for i, s in enumerate(order) if s == "B")


def test_paired_ratio_cancels_a_shared_host_phase():
    from quantperf.stats import paired_ratio

    # H100, llama-125m eager, 2026-11-26 (A/A run 2): both sides slow in rounds 1-2, fast after
    fp16 = [60, 66, 112, 120, 117]
    int8 = [20, 21, 36, 35, 38]
    paired = paired_ratio(fp16, int8)
    unpaired = ratio_of_medians(fp16, int8)
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low) / 2
    assert 0.29 < paired.ratio < 0.34
    with pytest.raises(ValueError):
        paired_ratio([1, 2, 3], [1, 2])
