"""Kernel mode from a one-layer load (issue #28), proved on the CPU for a tiny shape: layer 0's
linear modules are those a full load produces (module classes, weights, quantized data, scales and
quantization state bitwise, dtypes), the copies equal them in value and share no storage, and a
kernel-mode run through a worker process reports how its walk was built. The GPU side (timings
within the A/A floor of a full load's) is the lead's check: docs/measuring.md#kernel-modes-walk."""

import os
import time

import pytest

from quantperf.backends import get_backend
from quantperf.backends.layer import FULL_WALK, LAYER_WALK, WALK_ENV, kernel_walk, one_layer_overrides
from quantperf.errors import ConfigError
from quantperf.scenarios.kernel import LINEAR_TYPES, KernelScenario, linear_modules
from quantperf.scenarios.walk import CopyFailed, copies_of, layer_walk, module_tensors, storage_keys, walk_inputs
from quantperf.spec import RunSpec, Workload

WORKLOAD = Workload(batch_size=1, prompt_tokens=16, new_tokens=4, warmup_rounds=1, rounds=2)
# torch fp32, torchao int8 weight-only (CPU kernels), bitsandbytes 4-bit and LLM.int8 (both quantize on the CPU)
BACKENDS = ("torch-fp32", "torchao-int8wo", "bnb-nf4", "bnb-int8")


def test_the_walk_switch():
    assert kernel_walk(None) == kernel_walk("") == kernel_walk("layer") == "layer"
    assert kernel_walk("full") == "full"
    with pytest.raises(ConfigError, match="QUANTPERF_KERNEL_WALK='all'.*layer, full"):
        kernel_walk("all")



def test_the_walk_is_a_runtime_setting_and_a_baseline_of_the_other_walk_is_incomparable(monkeypatch):
    from quantperf.gate.runtime import check_runtime
    from quantperf.status import Status

    b = get_backend("torch-fp32")
    monkeypatch.delenv(WALK_ENV, raising=False)
    layer = b.identity("cpu", "kernel")
    monkeypatch.setenv(WALK_ENV, "full")
    # the backend identity does not change with the walk: every earlier kernel baseline still opens
    assert layer == b.identity("cpu", "kernel") == b.identity("cpu", "eager") == {"dtype": "float32"}
    now = {"settings": {"kernel_walk": "layer"}, "versions": {}}
    # a baseline recorded before walks were kept walked all layers: not gated against a layer walk
    old = check_runtime(None, now)
    assert old.status == Status.INCOMPARABLE and old.settings == {"kernel_walk": ("full", "layer")}
    assert check_runtime(None, {"settings": {"kernel_walk": "full"}}).status is None
    assert check_runtime({"settings": {"kernel_walk": "layer"}}, now).status is None
    assert check_runtime({"settings": {"attn_implementation": "sdpa"}}, now).status == Status.INCOMPARABLE


def test_per_layer_config_lists_are_cut_to_layer_zero():
    class Cfg:
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]

    assert one_layer_overrides(Cfg()) == {"num_hidden_layers": 1, "layer_types": ["sliding_attention"]}
    assert one_layer_overrides(object()) == {"num_hidden_layers": 1}


def _load(name, walk, monkeypatch):
    from quantperf.models import ensure_available, resolve

    backend = get_backend(name)
    reason = backend.unavailable_reason("cpu")
    if reason:
        pytest.skip(f"{name} on the CPU: {reason}")
    source = resolve("synthetic:llama-tiny")
    ensure_available(source)
    monkeypatch.setenv(WALK_ENV, walk)
    t0 = time.perf_counter()
    loaded = backend.load(source, "cpu", "kernel")
    return loaded, time.perf_counter() - t0


def _snapshot(module) -> dict:
    """Every tensor of a module (module_tensors and its state_dict, subclasses flattened) by name."""
    import torch

    out = {f"t:{k}": v for k, v in module_tensors(module).items()}
    for k, v in module.state_dict().items():
        if isinstance(v, torch.Tensor) and type(v) not in (torch.Tensor, torch.nn.Parameter) \
                and hasattr(v, "__tensor_flatten__"):
            for n in v.__tensor_flatten__()[0]:
                out[f"sd:{k}.{n}"] = getattr(v, n)
        elif isinstance(v, torch.Tensor):
            out[f"sd:{k}"] = v
    return out


def _same(a, b) -> list[str]:
    """What differs between two modules: classes, the weight's class/dtype, any tensor bitwise."""
    import torch

    diff = []
    if type(a) is not type(b) or type(a.weight) is not type(b.weight) or a.weight.dtype != b.weight.dtype:
        diff.append(f"{type(a).__name__}/{type(a.weight).__name__}/{a.weight.dtype} vs "
                    f"{type(b).__name__}/{type(b.weight).__name__}/{b.weight.dtype}")
    sa, sb = _snapshot(a), _snapshot(b)
    if sa.keys() != sb.keys():
        diff.append(f"tensors {sorted(sa)} vs {sorted(sb)}")
    for k in sa.keys() & sb.keys():
        x, y = sa[k], sb[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            diff.append(f"{k}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)} or values")
    qa, qb = getattr(a.weight, "quant_state", None), getattr(b.weight, "quant_state", None)
    if qa is not None or qb is not None:  # bitsandbytes 4-bit: the non-tensor state too
        fields = ("blocksize", "quant_type", "dtype", "shape", "nested")
        if [getattr(qa, f, None) for f in fields] != [getattr(qb, f, None) for f in fields]:
            diff.append("quant_state fields")
    return diff


@pytest.mark.parametrize("name", BACKENDS)
def test_layer_zero_of_a_one_layer_load_is_a_full_loads_and_its_copies_are_distinct(name, model_cache, monkeypatch):
    one, first_s = _load(name, "layer", monkeypatch)  # the first load of a library pays its lazy set-up
    full, full_s = _load(name, "full", monkeypatch)
    one.close()
    one, one_s = _load(name, "layer", monkeypatch)
    print(f"\n{name}: kernel-mode load on the CPU, one layer {one_s:.2f} s, full {full_s:.2f} s (llama-tiny, 4 "
          f"layers; the first load {first_s:.2f} s)")
    assert one.kernel_walk == "layer" and full.kernel_walk == "full"
    assert len(one.model.model.layers) == 1 and len(full.model.model.layers) == full.arch.num_layers == 4
    assert one.arch == full.arch  # the checkpoint's own shape, all layers
    assert one.weight_bytes() == full.weight_bytes()
    assert one.streamed_weight_bytes() == full.streamed_weight_bytes()
    mods1, head1 = linear_modules(one.model)
    modsf, headf = linear_modules(full.model)
    for t in LINEAR_TYPES:
        assert _same(mods1[t][0], modsf[t][0]) == [], t
    assert _same(head1, headf) == []
    walk = layer_walk({t: ms[0] for t, ms in mods1.items()}, one.arch.num_layers)
    seen: set[int] = set()
    for t, ms in walk.items():
        assert len(ms) == 4 and ms[0] is mods1[t][0]
        for m in ms:
            assert _same(m, ms[0]) == [], t
            assert getattr(m.weight, "module", m) is m  # bitsandbytes 4-bit: each weight names its own module
            keys = storage_keys(m)
            assert keys and not keys & seen, f"{t}: a copy shares storage"
            seen |= keys
    one.close()
    full.close()


def test_a_copy_sharing_storage_or_failing_is_one_clear_error(monkeypatch):
    import copy

    import torch

    m = torch.nn.Linear(4, 4)
    monkeypatch.setattr(copy, "deepcopy", lambda x: x)
    with pytest.raises(CopyFailed, match="shares storage.*QUANTPERF_KERNEL_WALK=full"):
        copies_of(m, 1)

    def refuse(x):
        raise TypeError("no deepcopy for this tensor subclass")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    with pytest.raises(CopyFailed, match="Linear .*cannot be copied .*TypeError.*QUANTPERF_KERNEL_WALK=full"):
        copies_of(m, 1)


def test_a_one_layer_load_of_a_model_with_per_layer_types(tmp_path, monkeypatch):
    """Qwen2's config lists a type per layer: cut to layer 0's, the one-layer load is layer 0 of the full one."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from quantperf.models import ModelSource

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    source = ModelSource(ref=str(tmp_path), path_or_id=str(tmp_path), local_files_only=True)
    backend = get_backend("torch-fp32")
    monkeypatch.setenv(WALK_ENV, "layer")
    one = backend.load(source, "cpu", "kernel")
    monkeypatch.setenv(WALK_ENV, "full")
    full = backend.load(source, "cpu", "kernel")
    assert one.model.config.layer_types == full.model.config.layer_types[:1]
    assert one.arch == full.arch and one.arch.num_layers == 3 and one.weight_bytes() == full.weight_bytes()
    for t in LINEAR_TYPES:
        assert _same(linear_modules(one.model)[0][t][0], linear_modules(full.model)[0][t][0]) == [], t


def test_each_copy_gets_its_own_clone_of_layer_zeros_input():
    import torch

    x = torch.arange(6.0).reshape(1, 2, 3)
    xs = walk_inputs(x, 3)
    assert xs[0] is x and all(torch.equal(y, x) for y in xs)
    assert len({y.untyped_storage().data_ptr() for y in xs}) == 3


@pytest.mark.parametrize("walk", ["layer", "full"])
def test_a_kernel_run_in_a_worker_process_reports_its_walk(walk, model_cache):
    from quantperf.workers import ProcessWorker

    spec = RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "kernel", WORKLOAD)
    w = ProcessWorker(spec, env={WALK_ENV: walk})
    try:
        t0 = time.perf_counter()
        info = w.load()
        t1 = time.perf_counter()
        assert info["status"] == "ok", info
        assert w.warmup()["status"] == "ok"
        t2 = time.perf_counter()
        rounds = w.rounds(n=2)
        t3 = time.perf_counter()
        runtime = w.runtime()
    finally:
        w.close()
    print(f"\nworker process ({walk} walk): load request {t1 - t0:.2f} s (load_ms {info['load_ms']:.0f}), "
          f"warm-up {t2 - t1:.2f} s, 2 rounds {t3 - t2:.2f} s")
    assert "kernel_walk" not in info["identity"]
    assert runtime["settings"]["kernel_walk"] == walk
    assert info["arch"]["num_layers"] == 4
    table = KernelScenario.table(rounds)
    assert table["walk"] == (LAYER_WALK if walk == "layer" else FULL_WALK)
    assert {r["layers"] for r in rounds[0]["types"].values() if r} == {4, 1}  # four per type, one lm_head
    notes = {k: v["note"] for k, v in table["types"].items()}
    assert (notes["decode:q_proj"] == "layer 0 + 3 copies") == (walk == "layer")
    assert all(m.value > 0 for m in KernelScenario.metrics(spec, rounds).values())


# -- on a GPU (the lead's check): a layer walk times like a full load's, in less wall time ----------------------
GPU_MODEL = "synthetic:llama-1b"
GPU_BACKENDS = ("torch-fp16", "bnb-nf4", "bnb-int8-nodecomp", "torchao-int8wo")
FLOOR = {"kernel_decode_us_per_layer": 0.01, "kernel_prefill_us_per_layer": 0.02}  # the A/A floors of kernel mode


def _process_run(spec, walk: str) -> dict:
    """One fresh worker process of one walk: its phases' wall times and its per-run metric medians."""
    import statistics

    from quantperf.workers import ProcessWorker

    t0 = time.perf_counter()
    w = ProcessWorker(spec, env={WALK_ENV: walk})
    try:
        w.hello()
        t1 = time.perf_counter()
        info = w.load()
        assert info["status"] == "ok", info
        t2 = time.perf_counter()
        assert w.warmup()["status"] == "ok"
        t3 = time.perf_counter()
        rounds = w.rounds(n=spec.workload.rounds)
        t4 = time.perf_counter()
    finally:
        w.close()
    metrics = KernelScenario.metrics(spec, rounds)
    return {"start_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2, "measure_s": t4 - t3,
            "total_s": time.perf_counter() - t0, "walk": KernelScenario.table(rounds).get("walk"),
            "methods": sorted({v["method"] for v in rounds[0]["types"].values()}),
            **{k: statistics.median(m.samples) for k, m in metrics.items()}}


@pytest.mark.gpu
@pytest.mark.parametrize("name", os.environ.get("QUANTPERF_WALK_BACKENDS", " ".join(GPU_BACKENDS)).split())
def test_gpu_a_layer_walk_times_as_a_full_load_does(name):
    """Fresh processes of each walk in ABBA order (QUANTPERF_WALK_PAIRS pairs, default 3): the
    median per-layer times of the layer walk are within kernel mode's A/A floor of the full walk's
    (1% decode, 2% prefill), timed the same way, in less wall time per process. Prints the figures."""
    import statistics

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the lead's GPU check of issue #28")
    from quantperf.workers import ProcessWorker

    spec = RunSpec(os.environ.get("QUANTPERF_WALK_MODEL", GPU_MODEL), name, "cuda", "kernel", Workload())
    prep = ProcessWorker(spec)  # the synthetic checkpoint built once, outside the timed processes
    try:
        prep.prepare()
    finally:
        prep.close()
    runs: dict[str, list[dict]] = {"full": [], "layer": []}
    for p in range(int(os.environ.get("QUANTPERF_WALK_PAIRS", "3"))):
        for walk in (("full", "layer") if p % 2 == 0 else ("layer", "full")):
            runs[walk].append(_process_run(spec, walk))
    print(f"\n{spec.id}")
    for walk, rs in runs.items():
        print(f"  {walk:5s} walk {rs[0]['walk']!r} methods {rs[0]['methods']}")
        for r in rs:
            print("    " + "  ".join(f"{k} {v:.2f}" for k, v in r.items() if isinstance(v, float)))
    for metric, floor in FLOOR.items():
        full = [r[metric] for r in runs["full"]]
        layer = [r[metric] for r in runs["layer"]]
        ratio = statistics.median(layer) / statistics.median(full)
        spread = max(full) / min(full) - 1
        print(f"  {metric}: full {statistics.median(full):.3f} us (between processes {spread * 100:.2f}%), layer "
              f"{statistics.median(layer):.3f} us, layer/full {ratio:.4f}")
        assert abs(ratio - 1) <= max(floor, spread), f"{metric}: layer/full {ratio:.4f} beyond the A/A floor"
    assert runs["full"][0]["methods"] == runs["layer"][0]["methods"]
    load = {w: statistics.median(r["load_s"] + r["warmup_s"] for r in rs) for w, rs in runs.items()}
    print(f"  load + warm-up per process: full {load['full']:.1f} s, layer {load['layer']:.1f} s")
    assert load["layer"] < load["full"]
