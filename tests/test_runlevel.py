"""The run-level gate: the run is the unit of replication, session shifts are removed, each
verdict states its noise floor."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantperf.errors import ConfigError
from quantperf.gate.runlevel import (
    RunRecord,
    assign_sessions,
    confirm,
    fit_noise,
    gate,
    noise_floor,
    session_shift,
)

CONFIGS = [f"c{i}" for i in range(10)]


def _simulate_run(rng, levels, session_shift_log, slow: dict | None = None, within=0.12, run=0.05, rounds=5):
    """One run's medians: rounds with 12% CV around a run level that carries a 5% run effect
    and the session's common shift."""
    out = {}
    for c, level in levels.items():
        run_level = level * math.exp(session_shift_log + rng.normal(0, run)) * (slow or {}).get(c, 1.0)
        out[c] = float(np.median(run_level * (1 + rng.normal(0, within, rounds))))
    return out


def _baseline(rng, levels, sessions=3, session_cv=0.20):
    records = []
    for s in range(sessions):
        shift = rng.normal(0, session_cv)
        for r in range(1 + s % 2):  # 1 or 2 runs per sitting
            for c, v in _simulate_run(rng, levels, shift).items():
                records.append(RunRecord(c, "decode_tokens_per_s", v, f"s{s}", f"s{s}r{r}"))
    return records


def _gate_run(records, current, tolerance=0.05, alpha=0.01):
    model = fit_noise(records)
    means = {c: np.mean([math.log(r.value) for r in records if r.config_id == c]) for c in current}
    runs = len(records) / len(current)
    shift = session_shift(current, means, model.sigma, runs)
    return {c: gate(v, [r for r in records if r.config_id == c], model, shift, tolerance, alpha, len(current), True)
            for c, v in current.items()}


@pytest.mark.parametrize("slowdown", [None, 2.0])
def test_todays_noise_shape_gives_under_one_percent_false_alarms_and_catches_a_2x_slowdown(slowdown):
    """Within-run CV 12%, run-to-run 5%, session-to-session 20% (the shape measured on the CPU
    box): a fresh session with nothing changed flags <= 1% of runs; one backend slowed 2x is
    caught in >= 99% of runs."""
    rng = np.random.default_rng(7)
    levels = {c: float(rng.uniform(50, 1500)) for c in CONFIGS}
    flagged_runs = caught = trials = 0
    for trial in range(400):
        records = _baseline(rng, levels)
        current = _simulate_run(rng, levels, rng.normal(0, 0.20), {"c3": 1 / slowdown} if slowdown else None)
        verdicts = _gate_run(records, current)
        trials += 1
        others = [v for c, v in verdicts.items() if not (slowdown and c == "c3")]
        flagged_runs += any(v.status == "regressed" for v in others)
        caught += bool(slowdown) and verdicts["c3"].status == "regressed"
    assert flagged_runs / trials <= 0.01
    if slowdown:
        assert caught / trials >= 0.99


def test_a_whole_machine_running_40_percent_slower_is_a_session_shift_not_a_regression():
    rng = np.random.default_rng(3)
    levels = {c: float(rng.uniform(50, 1500)) for c in CONFIGS}
    records = _baseline(rng, levels)
    current = _simulate_run(rng, levels, math.log(0.6))
    verdicts = _gate_run(records, current)
    assert not any(v.status == "regressed" for v in verdicts.values())
    v = verdicts["c0"]
    assert v.shift == pytest.approx(0.6, rel=0.15) and v.raw_ratio < 0.8
    model = fit_noise(records)
    line = session_shift(current,
                         {c: np.mean([math.log(r.value) for r in records if r.config_id == c]) for c in CONFIGS},
                         model.sigma).line()
    assert "slower than when the baseline was recorded" in line and "median over 10 configurations" in line


def test_with_fewer_than_three_configurations_no_shift_is_removed_and_it_says_so():
    shift = session_shift({"a": 10.0, "b": 20.0}, {"a": math.log(12), "b": math.log(21)})
    assert shift.log_shift == 0 and "3 needed" in shift.notes[0]


def test_one_run_per_configuration_is_inconclusive_with_unknown_noise():
    records = [RunRecord(c, "decode_tokens_per_s", 100.0, "s0", "r0") for c in CONFIGS]
    model = fit_noise(records)
    assert model.sigma is None and "record more runs" in model.notes[0]
    v = gate(50.0, [records[0]], model, session_shift({"c0": 50.0}, {"c0": math.log(100)}), 0.05, 0.01, 1, True)
    assert v.status == "inconclusive" and v.noise_floor is None


@given(st.floats(0.2, 5.0), st.floats(0.01, 0.3))
def test_the_printed_ratio_lies_inside_its_own_interval(factor, noise):
    rng = np.random.default_rng(0)
    records = [RunRecord(c, "m", 100 * math.exp(rng.normal(0, noise)), f"s{r % 2}", f"r{r}")
               for c in CONFIGS for r in range(3)]
    v = _gate_run(records, {c: 100 * factor for c in CONFIGS})["c0"]
    assert v.ci[0] <= v.ratio <= v.ci[1]


def test_lower_is_better_metrics_regress_upwards():
    records = [RunRecord("p", "prefill_ms", 20 * (1 + 0.01 * i), "s0", f"r{i}", False) for i in range(4)]
    records += [RunRecord(f"q{j}", "prefill_ms", 30 * (1 + 0.01 * i), "s0", f"q{j}r{i}",
                          False) for j in range(3) for i in range(4)]
    model = fit_noise(records)
    shift = session_shift({"p": 40.0}, {"p": np.mean([math.log(r.value) for r in records[:4]])})
    slower = gate(40.0, records[:4], model, shift, 0.05, 0.01, 1, higher_is_better=False)
    faster = gate(10.0, records[:4], model, shift, 0.05, 0.01, 1, higher_is_better=False)
    assert slower.status == "regressed" and faster.status == "improved"


def test_noise_floor_shrinks_with_degrees_of_freedom_and_grows_with_the_family():
    assert noise_floor(0.05, 5, 0.05, 0.01) > noise_floor(0.05, 50, 0.05, 0.01)
    assert noise_floor(0.05, 50, 0.05, 0.01, family_size=20) > noise_floor(0.05, 50, 0.05, 0.01)
    assert noise_floor(0.0, 10, 0.05, 0.01) == pytest.approx(0.05)


def test_a_single_flag_is_not_confirmed_by_a_clean_second_run():
    records = [RunRecord(c, "m", 100 * (1 + 0.01 * (i % 3)), "s0", f"{c}{i}") for c in CONFIGS for i in range(3)]
    model = fit_noise(records)
    shift = session_shift({c: 101.0 for c in CONFIGS}, {c: math.log(101) for c in CONFIGS}, model.sigma)
    first = gate(50.0, records[:3], model, shift, 0.05, 0.01, 10, True)
    second = gate(101.0, records[:3], model, shift, 0.05, 0.01, 10, True)
    assert first.status == "regressed"
    final = confirm(first, second)
    assert final.status != "regressed" and "not confirmed" in final.notes[-1]


def test_sessions_split_on_boot_or_on_a_gap():
    runs = [{"host": "h", "boot_id": "b1", "started_at": "2026-11-28T10:00:00+00:00"},
            {"host": "h", "boot_id": "b1", "started_at": "2026-11-28T10:10:00+00:00"},
            {"host": "h", "boot_id": "b1", "started_at": "2026-11-28T11:30:00+00:00"},
            {"host": "h", "boot_id": "b2", "started_at": "2026-11-28T11:31:00+00:00"},
            {"host": None, "boot_id": "schema1-2026-11-26", "started_at": None}]
    ids = assign_sessions(runs)
    assert ids[0] == ids[1] and len(set(ids)) == 4


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_values_are_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="field 'value'"):
        RunRecord("c", "decode_tokens_per_s", value, "s", "r1")
