"""The noise experiment: sides, injected-delay arithmetic, and the pure evaluation of false
alarms and detections (the measuring part runs on the fake backend in test_cli / test_plugin)."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantperf.errors import ConfigError
from quantperf.experiments.sensitivity import AA, CLEAN, delay_for, evaluate, make_sides, slow_name
from quantperf.report import evaluation_table


def test_sides_are_clean_aa_slowdowns_then_variants():
    sides = make_sides([0.10, 0.05], ["gc-on", "long"])
    assert [s.name for s in sides] == [CLEAN, AA, "slow-5%", "slow-10%", "gc-on", "long"]
    assert sides[2].slowdown == 0.05 and not sides[4].gc_off and sides[5].tokens_factor == 4
    # unnamed variants: every ablation the mode allows (graph mode cannot change round length)
    assert [s.name for s in make_sides([0.05], None, "eager")][3:] == ["gc-on", "unpinned", "long"]
    assert [s.name for s in make_sides([0.05], None, "graph")][3:] == ["gc-on", "unpinned"]
    with pytest.raises(ConfigError, match="recompiles"):
        make_sides([0.05], ["long"], "graph")
    with pytest.raises(ConfigError, match="unknown noise variant"):
        make_sides([0.05], ["turbo"])
    with pytest.raises(ConfigError, match="between 0 and 0.9"):
        make_sides([5], [])


@given(st.floats(0.01, 100), st.floats(0.001, 0.8))
def test_injected_delay_lowers_tokens_per_second_by_the_slowdown(ms_per_token, slowdown):
    slowed = 1 / (ms_per_token + delay_for(ms_per_token, slowdown))
    assert slowed == pytest.approx((1 - slowdown) / ms_per_token, rel=1e-9)


def _raw(processes=6, noise=0.004, slow=(0.05, 0.10), between=0.0, seed=0):
    """A synthetic experiment: 100 tok/s, per-round noise `noise`, per-process offsets `between`."""
    rng = np.random.default_rng(seed)
    names = [CLEAN, AA] + [slow_name(s) for s in slow]
    procs = []
    for p in range(processes):
        level = 100 * (1 + rng.normal(0, between))
        sides = {}
        for name in names:
            factor = 1 - dict(zip([slow_name(s) for s in slow], slow)).get(name, 0.0)
            vals = (level * factor * (1 + rng.normal(0, noise, 5))).tolist()
            sides[name] = {"decode_tokens_per_s": vals, "prefill_ms": [1.0] * 5, "throttled_rounds": 0,
                           "retried_rounds": 0}
        procs.append({"index": p, "sides": sides})
    return {"status": "ok", "config": "cfg", "spec": {"model": "m", "backend": "b", "mode": "graph"}, "rounds": 5,
            "sides": names, "slowdowns": {slow_name(s): s for s in slow}, "processes": procs}


def test_steady_measurements_catch_slowdowns_beyond_tolerance_and_raise_no_false_alarm():
    ev = evaluate(_raw(), tolerance=0.03)
    for method in ("gate", "paired"):
        assert ev.detection(AA, method).flagged == 0
        assert ev.detection("slow-5%", method).rate == 1.0
        assert ev.detection("slow-10%", method).rate == 1.0
    clean = ev.side_noise(CLEAN)
    assert clean.cv_within < 0.01 and clean.min_detectable < 0.03 and clean.throttled_rounds == 0
    assert ev.detection("slow-5%", "gate").ratios[0] == pytest.approx(0.95, abs=0.01)


def test_a_slowdown_inside_the_tolerance_is_not_flagged():
    ev = evaluate(_raw(), tolerance=0.07)
    assert ev.detection("slow-5%", "gate").flagged == 0 and ev.detection("slow-10%", "gate").rate == 1.0


def test_run_to_run_wander_blunts_the_gate_but_not_the_paired_comparison():
    """Process-level offsets of 8% hide a 5% slowdown from a gate against other processes'
    runs; the interleaved comparison inside one process still sees it."""
    ev = evaluate(_raw(processes=10, between=0.08, seed=3), tolerance=0.03)
    assert ev.detection("slow-5%", "gate").rate < 0.9
    assert ev.detection("slow-5%", "paired").rate == 1.0
    assert ev.side_noise(CLEAN).cv_between > 0.04


def test_too_few_processes_for_gate_trials_is_said():
    ev = evaluate(_raw(processes=3), tolerance=0.03)
    assert ev.detection("slow-5%", "gate") is None and ev.detection("slow-5%", "paired").trials == 3
    assert "gate trials need >= 4 processes" in evaluation_table(ev)


def test_a_time_metric_is_gated_in_its_own_direction():
    """Kernel mode's metric is a time (lower is better): a 2% slowdown is a longer time, flagged at a
    1% tolerance by the run-level gate (other processes' clean runs as the baseline) and the paired check."""
    raw = _raw(processes=10, noise=0.001, slow=(0.02,), between=0.001, seed=3)
    raw["metric"], raw["higher_is_better"] = "kernel_decode_us_per_layer", False
    for p in raw["processes"]:
        for side in p["sides"].values():
            side["kernel_decode_us_per_layer"] = [1e4 / v for v in side.pop("decode_tokens_per_s")]
    ev = evaluate(raw, tolerance=0.01)
    assert ev.metric == "kernel_decode_us_per_layer"
    for method in ("gate", "paired"):
        assert ev.detection(AA, method).flagged == 0
        assert ev.detection("slow-2%", method).rate >= 0.9
    assert ev.detection("slow-2%", "gate").ratios[0] == pytest.approx(1 / 0.98, abs=0.005)


def test_a_failed_experiment_is_an_error_and_evaluations_round_trip():
    with pytest.raises(ConfigError, match="did not run: unavailable"):
        evaluate({"status": "unavailable", "reason": "no GPU"}, 0.03)
    from quantperf.experiments.sensitivity import Evaluation

    ev = evaluate(_raw(), tolerance=0.03)
    again = Evaluation.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert evaluation_table(again) == evaluation_table(ev)
    assert "| slow-5% |" in evaluation_table(ev, markdown=True)
