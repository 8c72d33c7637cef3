"""The regression suite: each configuration of benchmarks/matrix.toml is measured once per
session and gated against the profile's baseline; each takeaway claim is checked by an
interleaved A/B run. Select tiers with `-m gpu` / `-m cpu`; record with `--qp-record`."""

import warnings

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
    from quantperf.quality import limit_violations

    result = qp_session.measure(qp_quality_config, quality=True)
    if result.ok:
        broken = limit_violations(qp_quality_config.backend, result.quality)
        if broken:
            pytest.fail(f"QUALITY {qp_quality_config.backend} on {qp_quality_config.device}: " + "; ".join(broken)
                        + f" (reference {result.quality['reference_backend']})", pytrace=False)
    run_check(qp_session.check, qp_quality_config, ("quality",), quality=True)


def test_takeaway(qp_session, qp_claim, request):
    """A seed-study claim, re-checked on this profile with an in-run interleaved A/B measurement."""
    claim, workload = qp_claim
    result = run_check(qp_session.check_claim, claim, workload)
    if result.verdict == "inconclusive":
        if request.config.getoption("--qp-strict"):
            pytest.fail(result.message(), pytrace=False)
        warnings.warn(result.message())
        return
    if not result.passed:
        pytest.fail(result.message(), pytrace=False)


def test_repeatability(qp_session, qp_noise_config, request):
    """The suite's own noise, from N fresh-process runs (--qp-noise-runs N): within-run and
    between-run CV, the smallest detectable change, A/A false alarms and how often the gate
    catches an injected slowdown (quantperf.sensitivity). Fails when the tier's targets are missed."""
    runs = request.config.getoption("--qp-noise-runs")
    if runs < 2:
        pytest.skip("repeatability is measured on request: pass --qp-noise-runs 3 (or more)")
    spec, tier = qp_noise_config
    settings = dict(tier.noise_settings)
    variants = request.config.getoption("--qp-noise-variants")
    if variants is not None:
        settings["variants"] = [v for v in variants.split(",") if v]
    run_check(qp_session.repeatability, spec, runs, tier.noise_targets.get(spec.mode), settings)
