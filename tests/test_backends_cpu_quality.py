"""Every quality backend marked cpu yields quality figures on the fixture model (a trained model,
the bundled corpus), each in a fresh worker process, as users run them. Apart from the speed
figures of tests/test_backends_cpu.py so that pytest-xdist runs the two measuring fixtures on
different workers."""

import math

import pytest

from quantperf import RunSpec, Workload
from quantperf.backends import entry
from quantperf.divergence import limit_violations
from quantperf.scheduler import measure_quality

WORKLOAD = Workload(batch_size=1, prompt_tokens=32, new_tokens=8, warmup_rounds=1, rounds=3)

QUALITY_BACKENDS = ["torch-fp32", "torch-bf16", "bnb-int8", "bnb-nf4", "bnb-fp4", "ort-fp32", "ort-int8", "ort-int4",
                    "torchao-int8wo", "bnb-int8-nodecomp"]


@pytest.fixture(scope="module")
def quality_results(model_cache):
    specs = [RunSpec("fixture", b, "cpu", "eager", WORKLOAD) for b in QUALITY_BACKENDS]
    res = measure_quality(specs, params={"context": 128, "max_windows": 4}, profile="cpu-test")
    return {r.spec.backend: r for r in res}


@pytest.mark.parametrize("backend", QUALITY_BACKENDS)
def test_cpu_backend_yields_quality_figures(quality_results, backend):
    r = quality_results[backend]
    assert r.status == "ok", r.reason
    q = r.quality
    assert q["reference_backend"] == "torch-fp32" and q["tokens"] == 4 * 128
    for key in ("ppl", "ln_ppl_ratio", "ln_ppl_ratio_se", "mean_kld", "top1_agreement", "rms_dp"):
        assert math.isfinite(q[key]), key
    assert 0 <= q["top1_agreement"] <= 1 and q["mean_kld"] >= 0
    assert q["ppl_ref"] < 300  # a trained model, not near-uniform random weights (vocab 2048)
    assert len(r.generations) == 3
    assert limit_violations(entry(backend).quality_class,
                            q) == [], "measured quality must sit inside the documented limits"


def test_reference_against_itself_and_export_against_reference(quality_results):
    ref = quality_results["torch-fp32"].quality
    assert ref["mean_kld"] == pytest.approx(0, abs=1e-9) and ref["top1_agreement"] == 1.0
    # the ONNX export computes the same function as PyTorch
    assert quality_results["ort-fp32"].quality["mean_kld"] < 1e-4
    # 4-bit costs more than 8-bit on a trained model
    assert quality_results["bnb-nf4"].quality["mean_kld"] > quality_results["bnb-int8"].quality["mean_kld"]
