"""Host-aware gating: eager and graph are gated against this host's runs when it has enough
sessions, else 'no runs from this host' with what it would take; kernel mode pools the hosts."""

import math

import numpy as np
import pytest

from quantperf.gate.history import gate_runs_on_host
from quantperf.gate.metric import gate_runs
from quantperf.gate.runlevel import MIN_HOST_SESSIONS, host_scope
from quantperf.status import Status

CONFIGS = [f"llama-1b-backend{i}-cuda-bs1-eager" for i in range(6)]
LEVELS = dict(zip(CONFIGS, [120.0, 95.0, 80.0, 60.0, 150.0, 45.0]))
HERE = "0123456789"


def _runs(rng, host, sessions, host_shift, config_spread, within=0.02, day0=1):
    """Recorded runs of every configuration on `host`: the host moves every figure by
    `host_shift`, each configuration by its own extra factor (sd `config_spread`, log scale), and
    runs of one host differ by `within` (log sd)."""
    effect = {c: host_shift * math.exp(rng.normal(0, config_spread)) for c in CONFIGS}
    out = {c: [] for c in CONFIGS}
    for s in range(sessions):
        when = f"2026-11-{day0 + s:02d}T02:00:00+00:00"
        for c in CONFIGS:
            out[c].append({"value": LEVELS[c] * effect[c] * math.exp(rng.normal(0, within)), "run_id": f"{host}-{s}",
                           "host": host, "boot_id": f"{host}-boot{s}", "started_at": when})
    return out


def _baseline(rng, here_sessions=4, others=((1.307, 0.15), (0.8, 0.15)), within=0.02):
    merged = {c: [] for c in CONFIGS}
    parts = [_runs(rng, HERE, here_sessions, 1.0, 0.0, within)]
    parts += [_runs(rng, f"other{i}", 4, shift, spread, within, day0=10 + 5 * i) for i, (shift, spread) in
              enumerate(others)]
    for part in parts:
        for c, runs in part.items():
            merged[c] += runs
    return merged


def _current(rng, regressed=None, factor=0.90, within=0.02):
    return {c: LEVELS[c] * math.exp(rng.normal(0, within)) * (factor if c == regressed else 1.0) for c in CONFIGS}


def _gate(current, baselines, mode="eager", host=HERE, tolerance=0.05, **kw):
    return gate_runs_on_host(current, baselines, "decode_tokens_per_s", True, tolerance, 0.01, len(CONFIGS), host,
                             mode, **kw)


@pytest.mark.parametrize("seed", range(5))
def test_a_10_percent_regression_on_this_host_is_caught_through_a_30_percent_cross_host_shift(seed):
    # runs of this host within about +-2% (log sd 1%); the other hosts 30.7% faster and 20% slower,
    # each configuration by its own extra 15%; graph mode, its 3% tolerance
    rng = np.random.default_rng(seed)
    baselines = _baseline(rng, here_sessions=8, within=0.01)
    current = _current(rng, regressed=CONFIGS[2], factor=1 / 1.10, within=0.01)
    aware = _gate(current, baselines, mode="graph", tolerance=0.03)
    assert aware.scope.sessions_here == 8 and not aware.scope.pooled
    assert aware.verdicts[CONFIGS[2]].status == Status.REGRESSED
    assert all(aware.verdicts[c].status != Status.REGRESSED for c in CONFIGS if c != CONFIGS[2])
    # pooled over hosts, the hosts' configuration-specific shifts swamp it: not caught, floor far above 10%
    pooled, _, model = gate_runs(current, baselines, "decode_tokens_per_s", True, 0.03, 0.01, len(CONFIGS))
    assert pooled[CONFIGS[2]].status != Status.REGRESSED
    assert pooled[CONFIGS[2]].noise_floor > 0.4 > 0.1 > aware.verdicts[CONFIGS[2]].noise_floor
    assert model.sigma > 5 * aware.model.sigma


def test_with_fewer_sessions_from_this_host_it_is_no_runs_from_this_host_with_the_count():
    rng = np.random.default_rng(11)
    baselines = _baseline(rng, here_sessions=2)
    result = _gate(_current(rng), baselines)
    assert result.verdicts == {}
    assert result.scope.status == Status.NO_BASELINE
    assert result.scope.sessions_here == 2 and result.scope.needed == MIN_HOST_SESSIONS == 3
    assert "no runs from this host: 2 sitting(s)" in result.scope.message
    assert "3 needed" in result.scope.message and "1 more sitting(s)" in result.scope.message
    assert "2 other host(s)" in result.scope.message
    # a host never seen: zero sittings
    assert "0 sitting(s)" in _gate(_current(rng), baselines, host="ffffffffff").scope.message
    # the threshold is a parameter
    assert _gate(_current(rng), baselines, min_sessions=2).scope.status is None


def test_a_baseline_of_this_host_alone_gates_with_however_many_sessions_it_has():
    rng = np.random.default_rng(7)
    everyone = _baseline(rng, here_sessions=1)
    baselines = {cid: [r for r in runs if r.get("host") == HERE] for cid, runs in everyone.items()}
    scope = host_scope(baselines, HERE, "eager")
    assert scope.status is None and scope.sessions_here == 1 and scope.runs == baselines
    # the same runs seen from another host: none of them are its
    assert host_scope(baselines, "ffffffffff", "eager").status == Status.NO_BASELINE


def test_graph_mode_is_host_aware_too_and_kernel_mode_pools_every_host():
    rng = np.random.default_rng(5)
    baselines = _baseline(rng, here_sessions=1)
    assert host_scope(baselines, HERE, "graph").status == Status.NO_BASELINE
    kernel = host_scope(baselines, HERE, "kernel")
    assert kernel.pooled and kernel.status is None and kernel.other_hosts == 2
    assert sum(len(r) for r in kernel.runs.values()) == sum(len(r) for r in baselines.values())


def test_kernel_mode_gates_across_hosts_whose_spread_is_a_few_tenths_of_a_percent():
    rng = np.random.default_rng(2)
    baselines = _baseline(rng, here_sessions=1, others=((1.002, 0.002), (0.998, 0.002)), within=0.002)
    current = _current(rng, regressed=CONFIGS[1], factor=0.93, within=0.002)
    result = _gate(current, baselines, mode="kernel")
    assert result.scope.pooled
    assert result.verdicts[CONFIGS[1]].status == Status.REGRESSED
    assert all(result.verdicts[c].status == Status.OK for c in CONFIGS if c != CONFIGS[1])
