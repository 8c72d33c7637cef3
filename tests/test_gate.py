import pytest

from quantperf.errors import ConfigError
from quantperf.gate import compare_metric, parse_tolerances

BASE = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8]


def test_significant_slowdown_beyond_tolerance_regresses():
    v = compare_metric("decode_tokens_per_s", BASE, [x * 0.8 for x in BASE], True, 0.10)
    assert v.status == "regressed" and v.failed
    assert v.worse_by == pytest.approx(0.2, abs=0.01)
    assert "worse by 20" in v.line()


def test_change_within_tolerance_is_ok_even_if_significant():
    assert compare_metric("decode_tokens_per_s", BASE, [x * 0.95 for x in BASE], True, 0.10).status == "ok"


def test_large_but_noisy_change_is_not_a_regression():
    noisy = [60, 140, 75, 130, 90, 110, 70]
    v = compare_metric("decode_tokens_per_s", BASE, noisy, True, 0.10)
    assert v.status in ("ok", "changed-insignificant") and not v.failed


def test_faster_is_improvement_not_failure_and_direction_respects_metric():
    assert compare_metric("decode_tokens_per_s", BASE, [x * 1.3 for x in BASE], True, 0.10).status == "improved"
    # prefill latency: lower is better, so +30% is a regression
    assert compare_metric("prefill_ms", BASE, [x * 1.3 for x in BASE], False, 0.10).status == "regressed"


def test_deterministic_memory_uses_tolerance_alone():
    assert compare_metric("weight_mib", [100.0], [103.0], False, 0.02).status == "regressed"
    assert compare_metric("weight_mib", [100.0], [101.0], False, 0.02).status == "ok"
    assert compare_metric("weight_mib", [], [101.0], False, 0.02).status == "new"


def test_parse_tolerances():
    assert parse_tolerances("speed:5%,memory:1%") == {"speed": 0.05, "memory": 0.01}
    # a bare number once meant 500% for `speed:5`: now it is refused, with both readings offered
    with pytest.raises(ConfigError, match="speed:5%.*speed:500%.*bare number is ambiguous"):
        parse_tolerances("speed:5")
    assert parse_tolerances("") == {}
    with pytest.raises(ConfigError, match="KIND"):
        parse_tolerances("latency:5%")
    with pytest.raises(ConfigError, match="not a number"):
        parse_tolerances("speed:fast")


def test_a_slow_host_phase_inside_the_run_to_run_spread_is_not_a_regression():
    # H100, llama-1b fp16 eager, 2026-11-26: three runs of the same build had medians 59.8,
    # 38.3 and 41.3 tok/s; each run alone looks "significantly" different from the others.
    runs = [59.8, 38.3, 41.3]
    base = [55, 67, 60, 60, 58]
    current = [38, 44, 44, 37, 39, 38, 36]
    assert compare_metric("decode_tokens_per_s", base, current, True, 0.10).status == "regressed"
    v = compare_metric("decode_tokens_per_s", base, current, True, 0.10, baseline_run_medians=runs)
    assert v.status == "changed-insignificant" and "3 baseline runs" in v.notes[0]


def test_a_drop_far_outside_a_tight_run_to_run_spread_still_regresses():
    runs = [300.0, 302.0, 299.0, 301.0]  # graph mode: runs agree within 1%
    base = [300, 301, 299, 300.5, 299.5]
    v = compare_metric("decode_tokens_per_s", base, [x * 0.85 for x in base], True, 0.10, baseline_run_medians=runs)
    assert v.status == "regressed"


def test_between_run_p_is_one_sided_and_direction_aware():
    from quantperf.gate import between_run_p

    runs = [100.0, 101.0, 99.0]
    assert between_run_p(runs, 80.0, True) < 0.05 < between_run_p(runs, 120.0, True)
    assert between_run_p(runs, 120.0, False) < 0.05  # latency: higher is worse


def test_near_zero_quality_figures_use_an_absolute_floor():
    # mean KLD 5e-5 -> 8e-5 is +60% relative but far below anything a user can notice
    assert compare_metric("mean_kld", [5e-5], [8e-5], False, 0.02).status == "ok"
    assert compare_metric("mean_kld", [5e-5], [2e-3], False, 0.02).status == "regressed"


def test_tolerances_per_mode_parse_and_resolve():
    from quantperf.gate import DEFAULT_TOLERANCES, resolve_tolerance

    assert parse_tolerances("speed.graph:2%,speed:8%") == {"speed.graph": 0.02, "speed": 0.08}
    with pytest.raises(ConfigError, match="KIND.MODE"):
        parse_tolerances("speed.turbo:2%")
    # defaults: graph mode is gated tighter than eager
    assert resolve_tolerance([DEFAULT_TOLERANCES], "speed", "graph") < resolve_tolerance([DEFAULT_TOLERANCES], "speed",
                                                                                         "eager")
    # a later plain KIND covers every mode; a later KIND.MODE beats it for that mode
    assert resolve_tolerance([DEFAULT_TOLERANCES, {"speed": 0.2}], "speed", "graph") == 0.2
    assert resolve_tolerance([DEFAULT_TOLERANCES, {"speed": 0.2, "speed.graph": 0.01}], "speed", "graph") == 0.01
    assert resolve_tolerance([DEFAULT_TOLERANCES, {"speed.graph": 0.01}], "speed",
                             "eager") == DEFAULT_TOLERANCES["speed"]
    assert resolve_tolerance([DEFAULT_TOLERANCES, {}, {"memory": 0.5}], "memory", "eager") == 0.5
    with pytest.raises(ConfigError, match="no tolerance"):
        resolve_tolerance([{}], "speed", "eager")
