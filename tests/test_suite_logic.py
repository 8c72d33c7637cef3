"""Session logic without pytest: adaptive rounds, interleaving and version reporting, on the
deterministic fake backends in this process."""

import sys

import pytest

from quantperf import RunSpec, Workload, measure_many
from quantperf.baselines import BaselineStore
from quantperf.results import Metric, RunResult
from quantperf.status import Status
from quantperf.suite import Fail, SuiteSession
from quantperf.summary import ConfigOutcome

W = Workload(batch_size=1, prompt_tokens=4, new_tokens=6, warmup_rounds=0, rounds=3)


def _pair():
    return [RunSpec("fake:small", "fake-fp16", "cpu", "eager", W),
            RunSpec("fake:small", "fake-int8", "cpu", "eager", W)]


def test_interleaved_pair_records_its_partner_and_adds_rounds_while_inconclusive():
    calls = []

    def always_more(samples):
        calls.append({k: len(v) for k, v in samples.items()})
        return True

    a, b = measure_many(_pair(), isolation="inprocess", interleave=True, profile="cpu-test",
                        more_rounds=always_more, max_rounds=7)
    assert len(a.metrics["decode_tokens_per_s"].samples) == 7 == len(b.metrics["decode_tokens_per_s"].samples)
    assert a.timings["adaptive_extra_rounds"] == 4 and a.timings["interleaved_with"] == [b.spec.id]
    assert [c[a.spec.id] for c in calls] == [3, 5]  # asked after the first block and after one extra ABBA block


def test_decided_comparison_adds_no_rounds():
    a, _ = measure_many(_pair(), isolation="inprocess", interleave=True, profile="cpu-test",
                        more_rounds=lambda s: False, max_rounds=9)
    assert a.timings["adaptive_extra_rounds"] == 0 and len(a.metrics["decode_tokens_per_s"].samples) == 3


def test_fake_backends_are_deterministic_enough_to_order():
    a, b = measure_many(_pair(), isolation="inprocess", interleave=True, profile="cpu-test")
    # 2 ms vs 3 ms per token
    assert a.metrics["decode_tokens_per_s"].value > 1.3 * b.metrics["decode_tokens_per_s"].value


def test_regression_report_names_the_library_versions_that_changed(tmp_path):
    spec = _pair()[0]

    def result(samples, torch_version):
        return RunResult(spec=spec, metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", samples)},
                         backend_identity={"token_ms": 2.0}, environment={"packages": {"torch": torch_version}},
                         timestamp="2026-11-26T00:00:00+00:00")

    store = BaselineStore(tmp_path, "cpu-test")
    store.update(result([100, 101, 99, 100.5, 99.5], "2.11.0"), None)
    store.save()
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    outcome = session.gate_result(result([70, 71, 69, 70.5, 69.5], "2.12.0"), ("speed",))
    assert outcome.status == "regressed"
    assert "library versions differ from the baseline: torch 2.11.0 -> 2.12.0" in outcome.message
    assert outcome.version_changes == {"torch": ["2.11.0", "2.12.0"]}
    with pytest.raises(Fail, match="torch 2.11.0 -> 2.12.0"):
        session.raise_for(outcome)


def test_a_silent_worker_is_killed_with_a_clear_error(monkeypatch):
    from quantperf import workers

    monkeypatch.setattr(workers, "WORKER_TIMEOUT_S", 0.001)
    with pytest.raises(workers.WorkerCrashed, match="gave no answer to 'init' within"):
        workers.ProcessWorker(_pair()[0])


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "nan"])
def test_a_bad_worker_timeout_is_one_clear_error(raw):
    from quantperf import workers
    from quantperf.errors import ConfigError

    with pytest.raises(ConfigError, match=f"QUANTPERF_WORKER_TIMEOUT_S='{raw}': not a positive number of seconds"):
        workers.worker_timeout_s(raw)
    assert workers.worker_timeout_s(None) == workers.worker_timeout_s("") == 1800.0
    assert workers.worker_timeout_s("240") == 240.0


@pytest.mark.skipif(sys.platform == "win32", reason="the stack request is a POSIX signal")
def test_a_stuck_worker_says_where_it_was_stuck(monkeypatch, tmp_path):
    """A worker that stops answering (here: blocked in a library's call) is asked for its
    threads' stacks before it is killed, and the error quotes them: a hang on a lent GPU
    names the call it hung in, not only the request."""
    from quantperf import workers

    (tmp_path / "qp_slowlib.py").write_text("import time\n\ndef work(ms):\n    time.sleep(600)\n")
    spec = RunSpec("fake:small", "fake-lib", "cpu", "eager", W)
    worker = workers.ProcessWorker(spec, env={"PYTHONPATH": str(tmp_path)})
    try:
        worker.load()
        monkeypatch.setattr(workers, "WORKER_TIMEOUT_S", 2.0)
        with pytest.raises(workers.WorkerCrashed) as info:
            worker.warmup(rounds=1)
    finally:
        worker.proc.kill()
    message = str(info.value)
    assert "gave no answer to 'warmup' within 2 s" in message
    assert "qp_slowlib.py" in message and "in work" in message
    assert worker.proc.wait(timeout=10) is not None


def test_onnx_export_is_cached(model_cache):
    from quantperf.backends.ort import export_fp32, quantize_variant
    from quantperf.models import resolve

    source = resolve("synthetic:llama-tiny", build_device="cpu")
    first, _ = export_fp32(source)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    again, meta = export_fp32(source)
    assert again == first and (again / "model.onnx").stat().st_mtime_ns == stamp
    assert meta["exporter"].startswith("torch.onnx.export")
    q1, _ = quantize_variant(first, "int8")
    q2, qmeta = quantize_variant(first, "int8")
    assert q1 == q2 and qmeta["quantize"]["method"] == "quantize_dynamic"


def test_one_time_builds_happen_outside_the_measured_process(tmp_path, monkeypatch):
    """On a cold cache the checkpoint build and the ONNX export run in a preparing process, and a
    fresh one measures: one-time memory never lands in the figures or trips the memory gate."""
    monkeypatch.setenv("QUANTPERF_CACHE", str(tmp_path / "cache"))
    spec = RunSpec("synthetic:llama-tiny", "ort-int8", "cpu", "eager",
                   Workload(prompt_tokens=8, new_tokens=4, warmup_rounds=0, rounds=2))
    cold = measure_many([spec], profile="cpu-test")[0]
    assert cold.ok, cold.reason
    assert cold.timings["prepared_first_s"] > 0
    warm = measure_many([spec], profile="cpu-test")[0]
    assert warm.ok and "prepared_first_s" not in warm.timings


def test_one_long_lived_process_prepares_and_each_measurement_gets_a_fresh_one(monkeypatch):
    """Preparing costs an interpreter start and imports (about 10 s on a GPU host) per configuration
    unless one process prepares them all: four configurations take one preparing process and four
    measuring ones (not eight), and no process both prepares and measures."""
    from quantperf import scheduler, workers

    scheduler.close_preparers()
    opened = []
    real = workers.ProcessWorker

    class Counting(real):
        def __init__(self, spec, *a, **k):
            super().__init__(spec, *a, **k)
            opened.append(self)

    monkeypatch.setattr(workers, "ProcessWorker", Counting)
    specs = _pair() + [RunSpec("fake:medium", b, "cpu", "eager", W) for b in ("fake-fp16", "fake-int8")]
    results = measure_many(specs, profile="cpu-test")
    assert all(r.ok for r in results), [r.reason for r in results]
    preparers = list(scheduler._PREPARERS.values())
    assert len(opened) == 5 and len(preparers) == 1 and preparers[0] in opened
    measuring = [w for w in opened if w is not preparers[0]]
    assert {w.spec.id for w in measuring} == {s.id for s in specs}
    assert all(w.proc.poll() is not None for w in measuring)  # each measuring process ended with its run
    scheduler.close_preparers()
    assert preparers[0].proc.poll() is not None and not scheduler._PREPARERS


@pytest.mark.parametrize("reply, kept", [({"built": False, "cuda_context": False}, True),
                                          ({"built": True, "prepare_s": 1.0, "cuda_context": False}, False),
                                          ({"built": False, "cuda_context": True}, False)])
def test_a_preparer_that_built_or_opened_a_cuda_context_is_replaced(monkeypatch, reply, kept):
    from quantperf import scheduler

    scheduler.close_preparers()
    closed = []

    class Preparer:
        def prepare_for(self, spec):
            return dict(reply)

        def close(self):
            closed.append(self)

    monkeypatch.setattr(scheduler, "open_worker", lambda *a, **k: Preparer())
    assert scheduler.prepare_in_process(_pair()[0]) == reply
    assert bool(scheduler._PREPARERS) == kept and bool(closed) != kept
    if kept:  # the environment changed (another QUANTPERF_CACHE): the old preparer is not asked again
        monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")  # pytest's own bookkeeping is no change
        scheduler.prepare_in_process(_pair()[0])
        assert not closed
        monkeypatch.setenv("QUANTPERF_CACHE", "/elsewhere")
        first = next(iter(scheduler._PREPARERS.values()))
        scheduler.prepare_in_process(_pair()[0])
        assert closed == [first] and first not in scheduler._PREPARERS.values() and len(scheduler._PREPARERS) == 1
    scheduler.close_preparers()


def test_out_of_memory_load_is_one_clear_line(monkeypatch):
    from quantperf.backends.fake import FakeBackend

    def boom(self, source, device, mode="eager"):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(FakeBackend, "load", boom)
    r = measure_many([_pair()[0]], isolation="inprocess", profile="cpu-test")[0]
    assert r.status == "error" and r.reason == "fake-fp16: out of memory loading fake:small on cpu"


def test_missing_library_is_unavailable_not_a_traceback(monkeypatch):
    import importlib.util

    from quantperf.backends import get_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "bitsandbytes" else real(name, *a))
    reason = get_backend("bnb-nf4").unavailable_reason("cpu")
    assert reason.startswith("bitsandbytes is not installed: pip install bitsandbytes")


def _noise_session(tmp_path, monkeypatch, raw):
    import quantperf.experiments.sensitivity as sens

    seen = {}

    def fake_experiment(spec, **kwargs):
        seen.update(kwargs)
        kwargs["checkpoint"](raw)
        return raw

    monkeypatch.setattr(sens, "run_experiment", fake_experiment)
    return SuiteSession(baselines_dir=tmp_path / "bl", profiles={"cpu": "cpu-test"},
                        results_path=tmp_path / "out" / "results.jsonl"), seen


def test_noise_benchmark_passes_a_sharp_gate_and_keeps_the_raw_experiment(tmp_path, monkeypatch):
    from test_sensitivity import _raw

    raw = _raw(processes=6)
    raw["spec"]["mode"] = "eager"
    session, seen = _noise_session(tmp_path, monkeypatch, raw)
    spec = RunSpec("fake:small", "fake-fp16", "cpu", "eager", W)
    ev = session.repeatability(spec, 6, 0.05, {"variants": [], "detect": {"eager": 0.10}})
    assert seen["processes"] == 6 and seen["slowdowns"] == [0.05, 0.10] and seen["variants"] == []
    assert ev.tolerance == 0.05 and ev.detection("slow-10%", "gate").rate == 1.0
    assert (tmp_path / "out" / f"noise-{spec.id}.json").exists()
    assert session.noise_rows[0]["runs"] == 6 and session.sensitivity[0]["evaluation"]["processes"] == 6


def test_noise_benchmark_fails_on_noise_false_alarms_and_a_blunt_gate(tmp_path, monkeypatch):
    from test_sensitivity import _raw

    raw = _raw(processes=10, between=0.08, seed=3)
    raw["spec"]["mode"] = "eager"
    raw["processes"][4]["sides"]["clean-b"]["decode_tokens_per_s"] = [50.0, 51, 49, 50.5, 49.5]  # an A/A outlier
    session, _ = _noise_session(tmp_path, monkeypatch, raw)
    with pytest.raises(Fail) as exc:
        session.repeatability(RunSpec("fake:small", "fake-fp16", "cpu", "eager", W), 10, 0.001,
                              {"detect": {"eager": 0.05}, "detect_rate": 0.9})
    msg = str(exc.value)
    assert "NOISY small-fake-fp16-cpu-bs1-p4-n6-eager [cpu-test]" in msg
    assert "FALSE ALARM" in msg and "A/A trials" in msg
    assert "BLUNT" in msg and "injected 5% slowdown in" in msg and "target 90%" in msg


def _kernel_result(us_per_layer, methods, run_id):
    """A kernel-mode result whose per-module figures were timed by `methods` (one per module)."""
    spec = RunSpec("synthetic:llama-1b", "ort-int4", "cuda", "kernel", W)
    types = {f"decode:{kind}": {"us_per_call": us_per_layer / 2,
                                "method": m} for kind, m in zip(("k_proj", "v_proj"), methods)}
    samples = [us_per_layer * f for f in (1.0, 1.001, 0.999, 1.0005, 0.9995)]
    return RunResult(spec=spec,
                     metrics={"kernel_decode_us_per_layer": Metric.of("kernel_decode_us_per_layer", samples)},
                     backend_identity={"variant": "int4", "kernel_timing": "gpu-queued"},
                     figures={"kernel": {"types": types}}, timestamp="2026-12-06T00:00:00+00:00",
                     environment={"packages": {"onnxruntime-gpu": "1.31.1"},
                                  "run": {"run_id": run_id, "boot_id": "b", "host": "h",
                                          "started_at": "2026-12-06T00:00:00+00:00"}})


def test_kernel_figures_timed_otherwise_than_the_baseline_are_never_gated_against_it(tmp_path):
    """An ONNX Runtime projection that could not be queued ahead of the GPU is `host-bound`, not a
    GPU time: a run whose figures were timed otherwise than the baseline's gets no verdict either
    way (inconclusive, naming the methods), on both gate paths; re-recording starts the record anew."""
    queued = ["cuda-graph, gpu-queued"] * 2
    store = BaselineStore(tmp_path, "gpu-test")
    for i, us in enumerate((50.0, 50.1, 49.9)):
        store.update(_kernel_result(us, queued, f"r{i}"), None)
    store.save()
    cid = _kernel_result(50.0, queued, "x").spec.id
    assert (store.entry(cid)["kernel_methods"] == ["cuda-graph, gpu-queued"]
            and len(store.runs(cid, "kernel_decode_us_per_layer")) == 3)
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cuda": "gpu-test"})
    slower = _kernel_result(60.0, queued, "now")  # same methods, 20% slower: a verdict
    assert session.gate_result(slower, ("speed",)).status == "regressed"
    assert session.gate_speed([slower])[cid].status == "regressed"
    host_bound = _kernel_result(60.0, ["cuda-graph, gpu-queued", "cuda-graph, host-bound"], "now")
    for outcome in (session.gate_result(host_bound, ("speed",)), session.gate_speed([host_bound])[cid]):
        assert outcome.status == "inconclusive"
        assert "kernel_methods is ['cuda-graph, gpu-queued']" in outcome.message
        assert "'cuda-graph, host-bound'" in outcome.message and "--qp-record" in outcome.message
    store.update(host_bound, None)
    assert [r["run_id"] for r in store.runs(cid, "kernel_decode_us_per_layer")] == ["now"]
    # a baseline recorded before the methods were kept: gated as before
    del store.data["configs"][cid]["kernel_methods"]
    assert store.method_change(host_bound, cid) is None


def test_the_group_started_ahead_is_the_next_one_this_group_does_not_measure(tmp_path, monkeypatch):
    """_speed_outcome starts the next group's processes while a group loads: the next is the first
    configuration after it that is neither in its group (a takeaway partner) nor measured already."""
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    a, b, c, d = (RunSpec("synthetic:llama-tiny", x, "cpu") for x in ("torch-fp32", "torch-bf16", "bnb-nf4",
                                                                       "bnb-int8"))
    monkeypatch.setattr(session, "_partners", lambda s: [a, b] if s in (a, b) else [s])
    todo = [a, b, c, d]
    assert [session._next_group(todo, i) for i in range(4)] == [c, c, d, None]
    session.results[c.id] = object()
    assert session._next_group(todo, 0) == d


def test_the_first_speed_test_starts_the_second_group_ahead_too(tmp_path, monkeypatch):
    """The first speed test measures its own group through `check` before the session's gating
    pass: that measurement starts the next group's processes as every later one does (on an H100
    sitting the second group waited 11.7 s for its processes, every later group none). With a
    results store and no baseline each test measures alone, and starts the next one too."""
    import quantperf.scheduler as scheduler

    asked = []

    def fake_measure_many(group, **kwargs):
        asked.append([s.id for s in kwargs.get("ahead") or []])
        return [RunResult(spec=s, status="ok") for s in group]

    monkeypatch.setattr(scheduler, "measure_many", fake_measure_many)
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    a, b, c = (RunSpec("synthetic:llama-tiny", x, "cpu") for x in ("torch-fp32", "torch-bf16", "bnb-nf4"))
    session.selected = [a, b, c]
    monkeypatch.setattr(session, "has_baseline", lambda spec, quality=False: True)
    monkeypatch.setattr(session, "gate_speed", lambda results, note_prefix="": {
        r.spec.id: ConfigOutcome(r.spec.id, r.spec.id, ["speed"], Status.OK) for r in results})
    session.check(a, ("speed",))
    assert asked == [[b.id], [c.id], []]  # a's own measurement starts b's group; b starts c's
    asked.clear()
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    session.selected, session.history = [a, b, c], object()
    monkeypatch.setattr(session, "store", lambda device: BaselineStore(tmp_path, "cpu-test"))
    monkeypatch.setattr(session, "_no_baseline", lambda outcome, spec, store: outcome)
    for spec in (a, b):
        session.check(spec, ("speed",))
    assert asked == [[b.id], [c.id]]


def test_after_the_last_group_the_quality_pass_processes_are_started_ahead(tmp_path, monkeypatch):
    """The last speed group (nothing after it) starts the quality pass's first processes: its
    reference and the next ones (scheduler.quality_first); a group with a next starts that one's."""
    import quantperf.scheduler as scheduler

    asked = []

    def fake_measure_many(group, **kwargs):
        asked.append(kwargs.get("ahead"))
        return [RunResult(spec=s, status="ok") for s in group]

    monkeypatch.setattr(scheduler, "measure_many", fake_measure_many)
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    quality = [RunSpec("fixture", b, "cpu") for b in ("torch-bf16", "bnb-nf4", "bnb-int8")]
    session.quality_specs = quality
    a, b = (RunSpec("synthetic:llama-tiny", x, "cpu") for x in ("torch-fp32", "torch-bf16"))
    session.measure(a, then=b)
    session.measure(b)
    assert asked == [[b], scheduler.quality_first(quality)]
    session.shard_of = lambda s: "0"  # sharded: another worker may run the quality pass
    session.measure(RunSpec("synthetic:llama-tiny", "bnb-nf4", "cpu"))
    assert asked[-1] == []
