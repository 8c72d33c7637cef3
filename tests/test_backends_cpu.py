"""Every backend marked cpu runs on the tiny synthetic model (speed and memory figures), each in a
fresh worker process, as users run them; their quality figures: tests/test_backends_cpu_quality.py."""


import pytest

from quantperf import RunSpec, Workload, measure_many
from quantperf.backends import BACKENDS, entry, get_backend
from quantperf.errors import ConfigError
from quantperf.workers import LocalWorker

CPU_BACKENDS = [n for n, e in BACKENDS.items() if "cpu" in e.devices and not n.startswith("fake")]
# the smallest workload that still has a prefill, several decode steps and more than one measured
# round: these tests check that each backend yields figures, not what the figures are
WORKLOAD = Workload(batch_size=1, prompt_tokens=16, new_tokens=4, warmup_rounds=1, rounds=2)


@pytest.fixture(scope="module")
def cpu_results(model_cache):
    specs = [RunSpec("synthetic:llama-tiny", b, "cpu", "eager", WORKLOAD) for b in CPU_BACKENDS]
    return {r.spec.backend: r for r in measure_many(specs, profile="cpu-test")}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backend_yields_speed_and_memory(cpu_results, backend):
    r = cpu_results[backend]
    assert r.status == "ok", r.reason
    dec = r.metrics["decode_tokens_per_s"]
    assert len(dec.samples) == WORKLOAD.rounds and all(s > 0 for s in dec.samples)
    assert r.metrics["prefill_ms"].value > 0 and r.metrics["weight_mib"].value > 0
    assert r.metrics["host_peak_rss_mib"].value > 0
    assert r.backend_identity, "options that change results must be recorded"
    assert r.roofline["bytes_per_decode_step"] > 0 and r.roofline["fraction_of_peak"] is None  # no CPU peak claimed
    assert r.environment["packages"]["torch"]


def test_quantized_weights_are_smaller_than_fp32(cpu_results):
    fp32 = cpu_results["torch-fp32"].metrics["weight_mib"].value
    for b in ("torch-bf16", "bnb-int8", "bnb-nf4", "ort-int8", "ort-int4", "torchao-int8wo"):
        assert cpu_results[b].metrics["weight_mib"].value < fp32, b
    # the same weights counted two ways (PyTorch parameters, ONNX initializers) agree
    assert cpu_results["ort-fp32"].metrics["weight_mib"].value == pytest.approx(fp32, rel=0.02)


def test_ort_records_where_nodes_ran(cpu_results):
    assert cpu_results["ort-int8"].execution["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("backend, device, match", [
    ("torch-fp16", "cpu", "runs on: cuda"),
    ("torchao-int4wo", "cpu", "runs on: cuda"),
    ("ort-int8", "cuda", "runs on: cpu"),
    ("torchao-fp8wo", "cpu", "runs on: cuda"),
    ("torchao-fp8dq", "cpu", "runs on: cuda"),
])
def test_unavailable_backends_say_why(backend, device, match):
    assert match in get_backend(backend).unavailable_reason(device)


def test_fp8_needs_compute_capability_8_9_and_says_which_card_has_what():
    from quantperf.backends.torchao import fp8_reason

    assert fp8_reason((9, 0), "NVIDIA H200") is None and fp8_reason((8, 9), "NVIDIA L4") is None
    reason = fp8_reason((7, 5), "Tesla T4")
    assert "compute capability >= 8.9" in reason and "(Tesla T4) is 7.5" in reason
    assert "8.0" in fp8_reason((8, 0), "NVIDIA A100-SXM4-80GB")


def test_cuda_request_without_gpu_is_one_clear_line(model_cache):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = measure_many([RunSpec("synthetic:llama-tiny", "torch-fp16", "cuda", "eager", WORKLOAD)], isolation="inprocess",
                     profile="cpu-test")[0]
    assert r.status == "unavailable" and "torch.cuda.is_available() is False" in r.reason


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backend 'bnb-int3'"):
        get_backend("bnb-int3")


def test_graph_mode_on_cpu_is_reported_not_faked(model_cache):
    r = measure_many([RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "graph", WORKLOAD)], isolation="inprocess",
                     profile="cpu-test")[0]
    assert r.status == "mode-unsupported" and "needs CUDA" in r.reason


def test_weights_go_to_one_gpu_when_they_fit_and_are_spread_when_they_do_not():
    """A 70B model's weights do not fit one GPU: spread over the host's GPUs (device_map "auto",
    nothing offloaded to the CPU), or unavailable when they do not fit them all."""
    from quantperf.backends.hf import effective_bits, estimate_weight_bytes, plan_placement
    from quantperf.models import arch_info, synthetic_config

    gib = 2**30
    assert plan_placement(10 * gib, [80 * gib]) == {"device_map": {"": 0}}
    assert plan_placement(10 * gib, [80 * gib, 80 * gib]) == {"device_map": {"": 0}}
    spread = plan_placement(131 * gib, [139 * gib, 139 * gib])  # llama-70b bf16 on two H200s
    assert spread["device_map"] == "auto" and set(spread["max_memory"]) == {0, 1}  # no "cpu": no offload
    assert plan_placement(131 * gib, [139 * gib]) is None and plan_placement(300 * gib, [79 * gib] * 2) is None
    # the estimate against what the H200 measured for llama-8b (MiB: fp16 15317, NF4 5749 with its
    # fp32 absmax per 64 weights, LLM.int8 8666)
    arch = arch_info(synthetic_config("llama-8b"))
    assert effective_bits(entry("bnb-nf4")) == 4.5 and effective_bits(entry("torch-fp16")) == 16
    for name, mib in (("torch-fp16", 15317), ("bnb-nf4", 5749), ("bnb-int8-nodecomp", 8666)):
        assert estimate_weight_bytes(arch, effective_bits(entry(name)),
                                     2) / 2**20 == pytest.approx(mib, rel=0.005), name
    big = arch_info(synthetic_config("llama-70b"))
    assert estimate_weight_bytes(big, 16, 2) > 139 * gib * 0.9 > estimate_weight_bytes(big, 4, 2)


def test_a_model_spread_over_devices_runs_eager_mode_only(model_cache):
    """graph and kernel modes capture one GPU's work: a model whose modules sit on several
    devices says so instead of being timed on one of them."""
    from quantperf.backends.hf import HFLoaded
    from quantperf.scenarios.kernel import KernelScenario
    from quantperf.spec import RunSpec

    w = LocalWorker(RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "kernel", WORKLOAD))
    try:
        w.prepare()
        assert w.load()["status"] == "ok" and isinstance(w.loaded, HFLoaded)
        assert w.loaded.spread_reason() is None and w.loaded.execution_report() == {}
        w.loaded.model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
        reason = w.loaded.spread_reason()
        assert "spread over 2 devices (0, 1)" in reason and w.loaded.supports_mode("graph") == reason
        assert w.loaded.supports_mode("eager") is None and w.loaded.execution_report() == {"devices": ["0", "1"]}
        assert KernelScenario(w.spec, w.loaded).unsupported() == reason
    finally:
        w.close()
