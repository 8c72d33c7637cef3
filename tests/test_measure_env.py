import re

import pytest

from quantperf import envinfo
from quantperf import trackers as M
from quantperf.errors import ConfigError
from quantperf.spec import RunSpec, Workload


def test_cpu_token_clock_times_prefill_and_each_decode_step():
    clock = M.TokenClock("cpu", 4)
    clock.start()
    M._cpu_spin(5)
    for _ in range(4):
        clock.mark()
        M._cpu_spin(2)
    t = clock.finish()
    assert t.prefill_ms >= 5 and len(t.decode_ms) == 3
    assert all(d >= 2 for d in t.decode_ms)
    assert t.total_ms >= t.prefill_ms + sum(t.decode_ms) - 1e-6


def test_a_round_needs_marks():
    clock = M.TokenClock("cpu", 1)
    clock.start()
    with pytest.raises(RuntimeError, match="2 token marks"):
        clock.finish()


def test_injected_delay_is_per_backend(monkeypatch):
    monkeypatch.setenv(M.INJECT_ENV, "bnb-int8=0.5, ort-int8=2")
    assert M.injected_delay_ms("bnb-int8") == 0.5 and M.injected_delay_ms("ort-int8") == 2.0
    assert M.injected_delay_ms("torch-fp16") == 0.0
    monkeypatch.setenv(M.INJECT_ENV, "bnb-int8=fast")
    from quantperf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"BACKEND=MS\[,BACKEND=MS\]"):
        M.injected_delay_ms("bnb-int8")


def test_the_token_clock_times_real_work_on_the_cpu():
    """The fake backends' rounds run on a simulated clock; every other CPU round is timed with
    perf_counter, and an injected delay is spent in real time. A busy machine only adds time, so
    the bounds are: at least the delays, at most what an outside clock saw."""
    import time

    t0 = time.perf_counter()
    clock = M.TokenClock("cpu", 3, "", delay_ms=5.0)
    clock.start()
    for _ in range(3):
        clock.mark()
    timing = clock.finish()
    outside_ms = (time.perf_counter() - t0) * 1e3
    assert timing.prefill_ms >= 5.0 and len(timing.decode_ms) == 2 and min(timing.decode_ms) >= 5.0
    assert 15.0 <= timing.total_ms <= outside_ms


def test_worker_settings_change_between_rounds_of_one_loaded_model(monkeypatch):
    """The noise experiment's knobs: an explicit injected delay (beats the environment's), GC
    during timed regions, and rounds of another length."""
    from quantperf.workers import LocalWorker

    monkeypatch.setenv(M.INJECT_ENV, "fake-fp16=50")
    w = LocalWorker(RunSpec("fake:small", "fake-fp16", "cpu", "eager", Workload(prompt_tokens=8, new_tokens=6)))
    assert w.load()["status"] == "ok"
    assert w.configure(inject_ms=0.0, gc_off=False) == {"inject_ms": 0.0, "gc_off": False, "tokens_factor": 1,
                                                        "pin_cpu": True}
    quick = w.rounds(n=1)[0]
    assert len(quick["decode_ms"]) == 5 and max(quick["decode_ms"]) < 40
    w.configure(inject_ms=20.0, tokens_factor=2)
    slow = w.rounds(n=1)[0]
    assert len(slow["decode_ms"]) == 11 and min(slow["decode_ms"]) >= 20
    w.close()


def test_throttle_verdict():
    calm = M.GpuState(sm_clock_mhz=1980, throttle_reasons=[], thermal_violation_ns=10)
    assert M.throttle_verdict(calm, calm) == (False, [])
    hot = M.GpuState(sm_clock_mhz=1200, throttle_reasons=["sw_thermal", "sw_power_cap"], thermal_violation_ns=10)
    assert M.throttle_verdict(calm, hot) == (True, ["sw_thermal"])
    grew = M.GpuState(thermal_violation_ns=50)
    assert M.throttle_verdict(calm, grew)[0]
    assert M.throttle_verdict(None, None) == (False, [])


def test_memory_snapshot_on_cpu_has_host_figures():
    snap = M.memory_snapshot("cpu")
    assert snap["host_rss_mib"] > 0 and snap["host_peak_rss_mib"] >= snap["host_rss_mib"] * 0.5


def test_cpu_profile_id_is_stable_and_safe():
    pid = envinfo.profile_id("cpu")
    assert re.fullmatch(r"cpu-[a-z0-9-]+-[a-z0-9_]+(-avx512|-avx2)?(-amx)?-\d+c", pid)
    assert pid == envinfo.profile_id("cpu")


def test_environment_records_versions_and_cpu():
    env = envinfo.environment()
    assert env["packages"]["torch"] and "transformers" in env["packages"] and "bitsandbytes" in env["packages"]
    assert env["cpu"]["model"] and isinstance(env["cpu"]["isa"], list)


def test_nvml_absence_is_handled(monkeypatch):
    monkeypatch.setattr(envinfo.Nvml, "_instance", None)
    monkeypatch.setattr(envinfo.Nvml, "_failed", "NVMLError_LibraryNotFound: NVML Shared Library Not Found")
    assert envinfo.Nvml.get() is None
    assert M.gpu_state() is None and M.nvml_process_mib() == (None, [])


def test_a_sample_reads_the_sm_clock_in_one_nvml_call(monkeypatch):
    """Kernel mode reads the SM clock at every timed sample: one NVML query, not gpu_state's seven."""
    import types

    asked = []

    class FakeNvml:
        NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

        def nvmlDeviceGetHandleByIndex(self, i):
            return f"gpu{i}"

        def __getattr__(self, fn):
            def call(*args):
                asked.append(fn)
                if fn == "nvmlDeviceGetViolationStatus":
                    return types.SimpleNamespace(violationTime=0)
                return {"nvmlDeviceGetClockInfo": 1980}.get(fn, 0)
            return call

    monkeypatch.setattr(envinfo.Nvml, "_instance", envinfo.Nvml(FakeNvml()))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert M.sm_clock_mhz() == 1980 and asked == ["nvmlDeviceGetClockInfo"]
    asked.clear()
    assert M.gpu_state().sm_clock_mhz == 1980 and len(asked) > 1


@pytest.mark.parametrize("kwargs, match", [
    ({"new_tokens": 1}, "new_tokens must be >= 2"),
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"warmup_rounds": -1}, "warmup_rounds"),
])
def test_bad_workloads_say_which_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Workload(**kwargs)


def test_bad_device_and_mode():
    with pytest.raises(ConfigError, match="device"):
        RunSpec("synthetic:llama-tiny", "torch-fp32", device="tpu")
    with pytest.raises(ConfigError, match="mode"):
        RunSpec("synthetic:llama-tiny", "torch-fp32", mode="turbo")


def test_nvml_finds_the_cuda_device_by_uuid_or_by_the_visible_entry():
    """NVML numbers every GPU of the host; CUDA device 0 of a process pinned to GPU 2 is NVML's 2."""
    assert envinfo.nvml_device_entry(0, "2,3", None) == 2
    assert envinfo.nvml_device_entry(1, "GPU-aaa,GPU-bbb", None) == "GPU-bbb"
    assert envinfo.nvml_device_entry(0, "2", "GPU-ccc") == "GPU-ccc"  # torch's UUID wins
    assert envinfo.nvml_device_entry(0, None, None) == 0


def test_xdist_workers_are_spread_over_the_visible_gpus_one_each():
    uuids = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
    assert [envinfo.worker_gpu(f"gw{i}", None, uuids) for i in range(4)] == uuids
    assert envinfo.worker_gpu("gw5", "4,6", uuids) == "6"  # CUDA_VISIBLE_DEVICES narrows the set; wraps around
    assert envinfo.worker_gpu("gw1", None, ["GPU-a"]) is None  # one GPU: nothing to pin
    assert envinfo.worker_gpu("", None, uuids) is None  # not an xdist worker
