"""The ONNX Runtime backends (quantperf/backends/ort/): the CPU decode loop, the IOBinding loop
that CUDA uses, the fp16 conversion, the unavailability reasons, the placement check and
kernel mode, all on the CPU with the tiny synthetic model."""

import json

import numpy as np
import pytest

from quantperf.backends import BackendEntry, get_backend
from quantperf.errors import BackendUnavailable

pytest.importorskip("onnxruntime")

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HIDDEN, INTERMEDIATE = 256, 768  # llama-tiny
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
          "o_proj": (HIDDEN, HIDDEN),
          "gate_proj": (HIDDEN, INTERMEDIATE), "up_proj": (HIDDEN, INTERMEDIATE), "down_proj": (INTERMEDIATE, HIDDEN)}


def expected_weight_bytes(variant: str, k: int, n: int) -> int:
    if variant == "fp32":
        return 4 * k * n
    if variant == "fp16":
        return 2 * k * n
    if variant == "int8":  # int8 weights + one fp32 scale + one int8 zero point
        return k * n + 4 + 1
    if variant == "int4":  # packed nibbles + one fp32 scale per block of 32
        return k * n // 2 + 4 * n * (k // 32)
    raise AssertionError(variant)


@pytest.fixture(scope="module")
def source(model_cache):
    from quantperf.models import resolve

    return resolve("synthetic:llama-tiny", build_device="cpu")


@pytest.fixture(scope="module")
def graphs(source):
    from quantperf.backends.ort import export_fp32, quantize_variant

    fp32, _ = export_fp32(source)
    return {"fp32": fp32} | {v: quantize_variant(fp32, v)[0] for v in ("int8", "int4", "fp16")}


@pytest.fixture(scope="module")
def prompt():
    return np.random.default_rng(1).integers(10, 8000, size=(2, 16))


class CountingClock:
    def __init__(self):
        self.starts = self.marks = 0

    def start(self):
        self.starts += 1

    def mark(self):
        self.marks += 1


def test_cpu_decode_matches_the_torch_model(source, prompt):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.path_or_id, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompt[:1]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
        ref_logits = model(torch.tensor(prompt[:1])).logits[0]
    loaded = get_backend("ort-fp32").load(source, "cpu")
    clock = CountingClock()
    assert loaded.run_round(prompt[:1], 6, "eager", clock) == ref[:, 16:].tolist()
    assert (clock.starts, clock.marks) == (1, 6)  # one start, one mark per generated token
    torch.testing.assert_close(loaded.logits(list(prompt[0])), ref_logits, atol=1e-4, rtol=1e-4)
    assert loaded.kv_bytes_per_element() == 4.0
    assert loaded.execution_report() == {"providers": ["CPUExecutionProvider"], "node_placement": {}}
    loaded.close()


@pytest.mark.parametrize("backend", ["ort-fp32", "ort-int4"])
def test_io_binding_loop_gives_the_numpy_loop_tokens(source, prompt, backend):
    """CUDA runs DeviceKV (KV cache as bound OrtValues, logits in a torch tensor); the same code
    on the CPU EP must generate exactly what the numpy loop does."""
    loaded = get_backend(backend).load(source, "cpu")
    host = loaded.run_round(prompt, 8, "eager", None)
    loaded.io_binding_device = "cpu"
    clock = CountingClock()
    assert loaded.run_round(prompt, 8, "eager", clock) == host
    assert clock.marks == 8
    bound_logits = loaded.logits(list(prompt[1]))
    loaded.io_binding_device = None
    assert np.array_equal(bound_logits.numpy(), loaded.logits(list(prompt[1])).numpy())
    loaded.close()


def test_cpu_identity_is_unchanged():
    base = {"providers": ["CPUExecutionProvider"], "intra_op_num_threads": 1, "allow_spinning": False}
    assert get_backend("ort-fp32").identity("cpu") == {"variant": "fp32"} | base
    assert get_backend("ort-int8").identity("cpu") == {"variant": "int8"} | base | {
        "method": "quantize_dynamic", "weight_type": "QInt8"}
    assert get_backend("ort-int4").identity("cpu") == {"variant": "int4"} | base | {
        "method": "MatMulNBits", "block_size": 32, "symmetric": True}


def _fp16_backend(devices=("cuda",)):
    from quantperf.backends.ort import OrtBackend

    return OrtBackend(BackendEntry("ort-fp16", "ort", "OrtBackend", devices, "fp16 ONNX", {"variant": "fp16"}, 16))


def test_fp16_on_cpu_is_unavailable_with_its_reason(source):
    reason = _fp16_backend().unavailable_reason("cpu")
    assert "runs on: cuda" in reason and "few float16 kernels" in reason
    # even if registered for the CPU, the variant's own reason stands
    assert "few float16 kernels" in _fp16_backend(("cpu", "cuda")).unavailable_reason("cpu")
    with pytest.raises(BackendUnavailable, match="few float16 kernels"):
        _fp16_backend(("cpu", "cuda")).load(source, "cpu")


def test_int8_on_cuda_is_unavailable_with_its_reason():
    from quantperf.backends.ort import OrtBackend

    reason = get_backend("ort-int8").unavailable_reason("cuda")
    assert "runs on: cpu" in reason and "MatMulInteger" in reason and "no CUDA kernels" in reason
    # registered for cuda by mistake, it still says why (not "no GPU here")
    both = OrtBackend(BackendEntry("ort-int8", "ort", "OrtBackend", ("cpu", "cuda"), "int8", {"variant": "int8"}, 8))
    assert "MatMulInteger" in both.unavailable_reason("cuda")
    assert get_backend("ort-int4").unavailable_reason("cpu") is None


def test_fp16_graph_keeps_norms_in_fp32_and_its_kv_cache_in_fp16(source, graphs, prompt):
    """keep_io_types=False: past/present/logits are float16, so the KV cache dtype follows;
    RMSNorm and rotary nodes stay float32 without fp16 round trips between them."""
    import onnx

    from quantperf.backends.ort import OrtLoaded

    model = onnx.load(str(graphs["fp16"] / "model.onnx"), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert types["past_key_0"] == types["present_value_3"] == types["logits"] == onnx.TensorProto.FLOAT16
    assert types["input_ids"] == onnx.TensorProto.INT64
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type == "ReduceMean"):  # the RMSNorm variance
        upstream = producers[node.input[0]]
        while upstream.op_type == "Cast":  # float32 -> float32 casts are left for ORT to drop
            assert upstream.attribute[0].i == onnx.TensorProto.FLOAT, "an fp16 round trip inside RMSNorm"
            upstream = producers[upstream.input[0]]
        assert upstream.op_type == "Pow"
        into_norm = producers[upstream.input[0]]  # the fp16 residual stream enters the norm through a cast
        assert into_norm.op_type == "Cast" and into_norm.attribute[0].i == onnx.TensorProto.FLOAT
    meta = json.loads((graphs["fp16"] / "meta.json").read_text())
    assert meta["quantize"]["keep_io_types"] is False and meta["quantize"]["fp32_nodes"] > 0
    # run on the CPU EP only to check the graph computes the same function (not a figure)
    options = _fp16_backend().identity("cpu")
    fp16 = OrtLoaded("ort-fp16", "cpu", graphs["fp16"], meta, options, ["CPUExecutionProvider"])
    fp32 = get_backend("ort-fp32").load(source, "cpu")
    assert fp16.kv_bytes_per_element() == 2.0 and fp32.kv_bytes_per_element() == 4.0
    diff = (fp16.logits(list(prompt[0])) - fp32.logits(list(prompt[0]))).abs().max().item()
    assert diff < 0.02
    fp16.close()
    fp32.close()


def _profile(tmp_path, runs):
    """A synthetic ORT profile: runs = [[(op, provider), ...], ...], one model_run each."""
    events, ts = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 10}], 100
    for nodes in runs:
        start = ts
        for i, (op, provider) in enumerate(nodes):
            ts += 10
            events.append({"cat": "Node", "name": f"n{i}_kernel_time", "ts": ts, "dur": 5,
                           "args": {"op_name": op, "provider": provider}})
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts + 5 - start})
        ts += 100
    path = tmp_path / "ort_profile.json"
    path.write_text(json.dumps(events))
    return str(path)


CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def test_placement_flags_a_cpu_compute_node_and_reports_input_copies(tmp_path):
    from quantperf.backends.ort import node_placement, placement_problems
    from quantperf.backends.ort.session import host_copies

    clean = [("Shape", CPU), ("Gather", CPU), ("Concat", CPU), ("MatMul", CUDA), ("MatMulNBits", CUDA),
             ("Softmax", CUDA)]
    bad = [("Shape", CPU), ("MatMulInteger", CPU), ("DynamicQuantizeLinear", CPU), ("MemcpyToHost", CUDA),
           ("MemcpyFromHost", CUDA), ("MatMul", CUDA), ("MatMul", CUDA)]
    placement = node_placement(_profile(tmp_path, [clean, bad]), last_run_only=True)
    assert placement == {CPU: {"Shape": 1, "MatMulInteger": 1, "DynamicQuantizeLinear": 1},
                         CUDA: {"MemcpyToHost": 1, "MemcpyFromHost": 1, "MatMul": 2}}
    assert placement_problems(placement, CUDA) == [
        "DynamicQuantizeLinear on CPUExecutionProvider (x1)", "MatMulInteger on CPUExecutionProvider (x1)"]
    # the CUDA EP copying host-fed inputs (token ids) is reported, not disqualifying; a Memcpy on the CPU EP is
    assert host_copies(placement, CUDA) == {"MemcpyToHost": 1, "MemcpyFromHost": 1}
    assert placement_problems({CPU: {"MemcpyFromHost": 1}, CUDA: {"MatMul": 2}}, CUDA) == [
        "MemcpyFromHost on CPUExecutionProvider (x1)"]
    # shape plumbing on the CPU is fine; only the last run (the decode step) is judged
    assert placement_problems(node_placement(_profile(tmp_path, [bad, clean]), last_run_only=True), CUDA) == []
    assert placement_problems(node_placement(_profile(tmp_path, [bad, clean])), CUDA) != []


@pytest.mark.parametrize("variant, ops", [("fp32", ["MatMul"]), ("int4", ["MatMulNBits"]),
                                          ("int8", ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"]),
                                          ("fp16", ["MatMul"])])
def test_projection_mapping_finds_all_seven_linears(graphs, variant, ops):
    from quantperf.backends.ort.kernel import find_linears

    for layer in (0, 3):
        found = find_linears(graphs[variant], layer)
        assert tuple(found) == LINEARS
        for kind, lin in found.items():
            assert (lin.in_features, lin.out_features) == SHAPES[kind]
            assert lin.op_types == ops
            assert lin.weight_bytes == expected_weight_bytes(variant, *SHAPES[kind])
    assert find_linears(graphs[variant], 0)["q_proj"].output != find_linears(graphs[variant], 3)["q_proj"].output
    with pytest.raises(ValueError, match=r"decoder layer 4 \(layers with projections: \[0, 1, 2, 3\]\)"):
        find_linears(graphs[variant], 4)


@pytest.mark.parametrize("variant", ["fp32", "int4", "fp16"])
def test_kernel_mode_export_of_one_layer_holds_the_same_projections(source, graphs, variant):
    """Kernel mode loads a one-decoder-layer export (the whole one does not fit a disk at 8B
    shapes): layer 0's projections cut from it are the whole export's, node for node and byte
    for byte, so the figures are the same measurement."""
    import onnx
    from onnx import numpy_helper

    from quantperf.backends.ort import export_fp32, quantize_variant
    from quantperf.backends.ort.kernel import find_linears

    one_fp32, meta = export_fp32(source, layers=1)
    one = one_fp32 if variant == "fp32" else quantize_variant(one_fp32, variant)[0]
    assert one.parent != graphs[variant].parent and meta["export_layers"] == 1
    assert meta["arch"]["num_layers"] == 4  # the whole model's arch
    model = onnx.load(str(one / "model.onnx"))
    assert sum(i.name.startswith("past_key_") for i in model.graph.input) == 1
    with pytest.raises(ValueError, match=r"layers with projections: \[0\]"):
        find_linears(one, 1)
    cut, whole = find_linears(one, 0), find_linears(graphs[variant], 0)
    full = onnx.load(str(graphs[variant] / "model.onnx"))
    data = {m: {t.name: numpy_helper.to_array(t) for t in g.graph.initializer}
            for m, g in (("one", model), ("whole", full))}
    for kind in LINEARS:
        a, b = cut[kind], whole[kind]
        assert (a.op_types, a.in_features, a.out_features, a.weight_bytes) == \
               (b.op_types, b.in_features, b.out_features, b.weight_bytes)
        assert [n.attribute for n in a.nodes] == [n.attribute for n in b.nodes]
        for ta, tb in zip(a.initializers, b.initializers):
            np.testing.assert_array_equal(data["one"][ta.name], data["whole"][tb.name])


def test_a_layer_count_the_model_does_not_have_is_refused(source):
    from quantperf.backends.ort.export import truncated_config

    config = source.config()
    with pytest.raises(ValueError, match="cannot export 5 decoder layers of a model with 4"):
        truncated_config(config, 5)
    config.layer_types = ["full_attention"] * 4
    cut = truncated_config(config, 2)
    assert cut.num_hidden_layers == 2 and cut.layer_types == ["full_attention"] * 2 and config.num_hidden_layers == 4


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_kernel_timing_on_cpu(graphs, variant):
    from quantperf.backends.ort.kernel import time_linears

    options = get_backend(f"ort-{variant}").identity("cpu")
    for tokens in (1, 8):  # decode and prefill shapes
        timings = time_linears(graphs[variant], "cpu", options, layer=0, tokens=tokens, samples=3, runs_per_sample=4)
        assert tuple(timings) == LINEARS
        for kind, t in timings.items():
            assert t["us_per_call"] > 0 and len(t["samples_us"]) == 3 and all(s > 0 for s in t["samples_us"])
            assert t["method"] == "cpu-iobinding" and t["tokens"] == tokens
            assert t["weight_bytes"] == expected_weight_bytes(variant, *SHAPES[kind])


def test_kernel_timing_uses_the_callers_timer_and_refuses_fp16_on_cpu(graphs):
    from quantperf.backends.ort.kernel import time_linears

    calls = []

    def timer(fn):
        fn()
        calls.append(1)
        return 2.0  # ms per sample

    t = time_linears(graphs["fp32"], "cpu", get_backend("ort-fp32").identity("cpu"), samples=2, runs_per_sample=4,
                     timer=timer)
    # one untimed call per projection sizes its samples (trackers.fit_replays), then 2 samples
    assert len(calls) == 3 * 7 and t["down_proj"]["us_per_call"] == pytest.approx(500.0)
    with pytest.raises(BackendUnavailable, match="few float16 kernels"):
        time_linears(graphs["fp16"], "cpu", {"intra_op_num_threads": 1})


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_a_walk_model_runs_every_copy_on_its_own_weights_and_the_optimizer_keeps_them_all(graphs, variant, tmp_path):
    """Kernel mode times a projection once per decoder layer in one session call (as the torch walk
    does, so the working set is not one layer's). Each copy must compute what the projection alone
    computes, and ORT's optimizer must not merge copies (int8's activation quantization included)."""
    import onnx
    import onnxruntime as ort

    from quantperf.backends.ort.kernel import (
        LINEAR_OPS,
        copy_name,
        find_linears,
        linear_model,
    )

    lin = find_linears(graphs[variant])["gate_proj"]
    model = onnx.load_from_string(linear_model(graphs[variant], lin, copies=3))
    assert len(model.graph.node) == 3 * len(lin.nodes) and len(model.graph.initializer) == 3 * len(lin.initializers)
    assert len({t.name for t in model.graph.initializer}) == len(model.graph.initializer)
    assert [i.name for i in model.graph.input] == [copy_name(lin.input, c) for c in range(3)]
    assert [o.name for o in model.graph.output] == [copy_name(lin.output, c) for c in range(3)]
    readers = sum(lin.input in n.input for n in lin.nodes)  # each copy reads its own input, as the projection does
    assert [sum(i.name in n.input for n in model.graph.node) for i in model.graph.input] == [readers] * 3
    def session(blob, name):  # optimized as kernel mode's sessions are, and the result kept
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / name)
        return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])

    def linear_nodes(name):  # after fusion (int8: DynamicQuantizeLinear + MatMulInteger -> DynamicQuantizeMatMul)
        return [n for n in onnx.load(str(tmp_path / name)).graph.node if n.op_type in LINEAR_OPS]

    walk = session(model.SerializeToString(), "walk.onnx")
    alone = session(linear_model(graphs[variant], lin), "alone.onnx")
    x = np.random.default_rng(1).standard_normal((1, 4, lin.in_features)).astype(np.float32)
    outs = walk.run(None, {i.name: x for i in model.graph.input})
    for out in outs:
        np.testing.assert_array_equal(out, alone.run(None, {lin.input: x})[0])
    assert len(linear_nodes("walk.onnx")) == 3 * len(linear_nodes("alone.onnx")) >= 3


def test_a_walk_is_one_copy_per_decoder_layer_up_to_its_byte_budget():
    from quantperf.backends.ort.kernel import WALK_BYTES, walk_copies

    assert walk_copies(2**20, 22) == 22  # llama-1b's k_proj: every layer, as the torch walk
    assert walk_copies(117 * 2**20, 32) == WALK_BYTES // (117 * 2**20) == 4  # llama-8b's gate_proj in fp16
    assert walk_copies(2 * WALK_BYTES, 32) == 1 and walk_copies(0, 3) == 3 and walk_copies(10, 0) == 1


def test_an_injected_delay_follows_every_sample_in_proportion_to_its_calls(graphs, monkeypatch):
    """The noise experiment's slowdown for ORT kernel mode: `inject_us` per projection call, added
    to every timed sample (runs x copies calls), and nothing when no delay is asked for."""
    from quantperf import trackers
    from quantperf.backends.ort.kernel import time_linears

    spins = []
    monkeypatch.setattr(trackers, "_cpu_spin", spins.append)
    options = get_backend("ort-fp32").identity("cpu", "kernel")

    def timer(fn):
        fn()
        return 2.0

    t = time_linears(graphs["fp32"], "cpu", options, samples=2, runs_per_sample=4, timer=timer, walk_layers=3,
                     inject_us=10.0)
    assert {r["copies"] for r in t.values()} == {3} and {r["runs_per_sample"] for r in t.values()} == {4}
    assert spins == [pytest.approx(10.0 * 4 * 3 / 1e3)] * (2 * 7)  # ms per sample, after the timed calls
    assert t["q_proj"]["us_per_call"] == pytest.approx(2000.0 / (4 * 3))
    spins.clear()
    time_linears(graphs["fp32"], "cpu", options, samples=2, runs_per_sample=4, timer=timer, walk_layers=3)
    assert spins == []


def test_gpu_queued_samples_retry_with_a_longer_sleep_until_every_call_was_queued(monkeypatch):
    """QUANTPERF_ORT_KERNEL_TIMING=gpu-queued (CUDA; here with torch.cuda faked): a sample counts
    as GPU time only if the host queued every call before the GPU reached the start event; else
    its sleep doubles and it is taken again, QUEUE_TRIES times at most, then reported not queued."""
    import contextlib

    import torch

    from quantperf import trackers
    from quantperf.backends.ort import kernel as K

    reached = []  # per try: had the GPU passed the start event when the host finished queueing?
    sleeps, events = [], []

    class Event:
        def __init__(self, enable_timing=False):
            events.append(self)

        def record(self, stream=None):
            pass

        def query(self):
            return reached.pop(0)

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 1.5

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", sleeps.append)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(trackers, "sleep_cycles_per_us", lambda: 1000.0)
    runner = object.__new__(K._Runner)
    runner.stream, runner.sleep_cycles, runner.host_bound, runner.enqueue_us, calls = object(), None, False, None, []
    runner.run = calls.append
    reached[:] = [False]
    assert runner.gpu_sample_ms(50) == (1.5, True)
    first = runner.sleep_cycles
    assert calls == [50, 50] and sleeps == [first] and first > 0  # one untimed enqueue measured the host
    reached[:] = [True, True, False]
    assert runner.gpu_sample_ms(50) == (1.5, True)
    assert sleeps[1:] == [first, 2 * first, 4 * first] and runner.sleep_cycles == 4 * first
    reached[:] = [True] * K.QUEUE_TRIES
    assert runner.gpu_sample_ms(50) == (1.5, False)
    assert not reached and runner.host_bound
    assert runner.enqueue_us is not None and runner.enqueue_us >= 0
    # calls that wait for the GPU are never queued, however long the sleep: it stops at
    # MAX_SLEEP_US, and a projection found host-bound takes each later sample in one try
    cap = int(K.MAX_SLEEP_US * 1000.0)
    sleeps.clear()
    reached[:] = [True] * 40
    for _ in range(20):
        assert runner.gpu_sample_ms(50) == (1.5, False)
    assert len(sleeps) == 20 and max(sleeps) <= cap and runner.sleep_cycles == cap
    assert len(reached) == 20  # one try per sample
    reached[:] = [False]  # a sample that is queued after all counts as GPU time again
    assert runner.gpu_sample_ms(50) == (1.5, True)


def test_the_kernel_timing_is_part_of_a_cuda_kernel_identity(monkeypatch):
    """A baseline recorded with wall timing must not gate GPU-timed figures (they differ by 5-10x
    on fast GPUs): the timing is in the identity of ORT kernel configurations on CUDA, and only there."""
    from quantperf.backends.ort.kernel import WALK

    backend = get_backend("ort-int4")
    monkeypatch.delenv("QUANTPERF_ORT_KERNEL_TIMING", raising=False)
    assert backend.identity("cuda", "kernel")["kernel_timing"] == "gpu-queued"
    assert "kernel_timing" not in backend.identity("cuda",
                                                   "eager") and "kernel_timing" not in backend.identity("cpu", "kernel")
    monkeypatch.setenv("QUANTPERF_ORT_KERNEL_TIMING", "wall")
    assert backend.identity("cuda", "kernel")["kernel_timing"] == "wall"
    # the walk (weight copies per call) is part of every kernel identity, and of no other mode's
    assert backend.identity("cpu", "kernel")["kernel_walk"] == backend.identity("cuda", "kernel")["kernel_walk"] == WALK
    assert "kernel_walk" not in backend.identity("cpu", "eager")


def test_the_ort_kernel_timing_variable_is_checked():
    from quantperf.backends.ort.kernel import cuda_timing
    from quantperf.errors import ConfigError

    assert cuda_timing(None) == cuda_timing("") == "gpu-queued" and cuda_timing("wall") == "wall"
    with pytest.raises(ConfigError,
                       match="QUANTPERF_ORT_KERNEL_TIMING='events': not a timing method; use one of gpu-queued, wall"):
        cuda_timing("events")


class FakeSession:
    """Stands in for onnxruntime.InferenceSession on a machine without CUDA."""

    refuse_strict, providers, made = True, ["CUDAExecutionProvider", "CPUExecutionProvider"], []

    def __init__(self, model, so, providers):
        try:
            strict = so.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
        except RuntimeError:  # the key was never set
            strict = False
        FakeSession.made.append((strict, providers))
        if strict and self.refuse_strict:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : This session contains graph nodes that are assigned to "
                               "the default CPU EP, but fallback to CPU EP has been explicitly disabled by the user.")

    def get_providers(self):
        return self.providers


def test_cuda_sessions_disable_cpu_fallback_and_say_when_ort_refuses(monkeypatch):
    import onnxruntime

    from quantperf.backends.ort import session as S

    monkeypatch.setattr(S, "preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(S, "cuda_device_id", lambda: 0)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    options = {"intra_op_num_threads": 1, "allow_spinning": False}
    monkeypatch.setattr(FakeSession, "made", [])
    _, note = S.create_session("m.onnx", options, "cuda", {"enable_cuda_graph": "1"})
    assert [strict for strict, _ in FakeSession.made] == [True, False]  # strict first, then without it
    assert FakeSession.made[0][1] == [("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1"})]
    assert "shape plumbing only" in note
    # a single-linear model has no shape plumbing: a refusal there means a node without CUDA kernels
    with pytest.raises(RuntimeError, match="fallback to CPU EP has been explicitly disabled"):
        S.create_session(b"linear", options, "cuda", allow_shape_plumbing=False)
    monkeypatch.setattr(FakeSession, "refuse_strict", False)
    assert S.create_session("m.onnx", options, "cuda")[1] == "disabled (session.disable_cpu_ep_fallback=1)"
    monkeypatch.setattr(FakeSession, "providers", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="could not start the CUDA execution provider"):
        S.create_session("m.onnx", options, "cuda")


def test_a_cast_the_fp16_converter_emits_twice_is_dropped_and_the_graph_loads():
    """Seen on an H200 with onnxruntime-gpu 1.31.1 on synthetic llama-1b: the converter emitted
    `embedding_cast_to_fp32_node` twice; onnxruntime refused the model (duplicate node, then
    duplicate value). The repair drops an identical repeat and refuses two different definitions."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantperf.backends.ort.quantize import repair_converted_graph

    w = numpy_helper.from_array(np.arange(40, dtype=np.float16).reshape(10, 4), "W")
    cast = lambda: helper.make_node("Cast", ["e"], ["e32"], name="e_cast_to_fp32_node",  # noqa: E731
                                    to=TensorProto.FLOAT)
    nodes = [helper.make_node("Gather", ["W", "ids"], ["e"], name="embedding"), cast(), cast(),
             helper.make_node("Relu", ["e32"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="[Dd]uplicate|same node name"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert repair_converted_graph(model.graph) == {"duplicate_nodes_dropped": 1, "nodes_renamed": 0}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"ids": np.array([[0, 1, 2]], dtype=np.int64)})[0]
    assert out.shape == (1, 3, 4) and float(out[0, 2, 3]) == 11.0
    model.graph.node.append(helper.make_node("Relu", ["e"], ["e32"], name="other"))
    with pytest.raises(ValueError, match="defined by two different nodes"):
        repair_converted_graph(model.graph)
