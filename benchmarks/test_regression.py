"""The regression suite: each configuration of benchmarks/matrix.toml is measured once per
session and gated against the profile's baseline; each takeaway claim is checked by an
interleaved A/B run. Select tiers with `-m gpu` / `-m cpu`; record with `--qp-record`.

Each test is one call into quantperf's suite (quantperf/suite.py): the logic lives there."""

import pytest

from quantperf.plugin import run_check


def test_speed(qp_session, qp_config):
    """Decode tok/s, prefill ms and end-to-end tok/s against the baseline (speed tolerance)."""
    run_check(qp_session.check, qp_config, ("speed",))


def test_memory(qp_session, qp_config):
    """Weight footprint, allocator peak, NVML process memory and host RSS (memory tolerance)."""
    run_check(qp_session.check, qp_config, ("memory",))


def test_quality(qp_session, qp_quality_config):
    """PPL, ln(PPL ratio), KL divergence, top-1 agreement, RMS dp against the device's reference:
    within the backend class's limits, and not regressed against the baseline."""
    run_check(qp_session.check_quality, qp_quality_config)


def test_takeaway(qp_session, qp_claim):
    """A seed-study claim, re-checked on this profile with an in-run interleaved A/B measurement."""
    claim, workload = qp_claim
    run_check(qp_session.check_claim, claim, workload)


def test_repeatability(qp_session, qp_noise_config, request):
    """The suite's own noise, from N fresh-process runs (--qp-noise-runs N): within-run and
    between-run CV, the smallest detectable change, A/A false alarms and how often the gate
    catches an injected slowdown (quantperf.experiments.sensitivity). Fails when the tier's targets are missed."""
    runs = request.config.getoption("--qp-noise-runs")
    if runs < 2:
        pytest.skip("repeatability is measured on request: pass --qp-noise-runs 3 (or more)")
    spec, tier = qp_noise_config
    settings = dict(tier.noise_settings)
    variants = request.config.getoption("--qp-noise-variants")
    if variants is not None:
        settings["variants"] = [v for v in variants.split(",") if v]
    run_check(qp_session.repeatability, spec, runs, tier.noise_targets.get(spec.mode), settings)
