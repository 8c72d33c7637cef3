"""The one place that owns clocks, memory readings and GPU validity checks.

GPU work is timed with CUDA events recorded on the stream (so kernel time, not launch
time, is measured); CPU work with `time.perf_counter`. Nothing else in quantperf reads
a clock around device work.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from .envinfo import Nvml

MIB = 2**20
# Test-only hook: `QUANTPERF_INJECT_DELAY_MS="bnb-int8=0.5,ort-int8=0.2"` adds that many
# milliseconds of device time per generated token to the named backends. It exists so the
# suite can show its gate bites; it is recorded in every result it touches.
INJECT_ENV = "QUANTPERF_INJECT_DELAY_MS"


def injected_delay_ms(backend: str) -> float:
    """The milliseconds QUANTPERF_INJECT_DELAY_MS adds per token to `backend` (0 when unnamed).
    A malformed value is one ConfigError naming the variable, the value and the accepted form."""
    import math

    from .errors import ConfigError

    spec = os.environ.get(INJECT_ENV, "").strip()
    if not spec:
        return 0.0
    delays = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        try:
            ms = float(value) if sep and name.strip() else math.nan
        except ValueError:
            ms = math.nan
        if not (math.isfinite(ms) and ms >= 0):
            raise ConfigError(f"{INJECT_ENV}={spec!r}: {item.strip()!r} is not BACKEND=MS; the accepted form is "
                              "BACKEND=MS[,BACKEND=MS] with MS a non-negative number of milliseconds per token")
        delays[name.strip()] = ms
    return delays.get(backend, 0.0)


@dataclass
class RoundTiming:
    """One round's times in milliseconds: prefill (time to first token) and each decode step."""

    prefill_ms: float
    decode_ms: list[float]
    total_ms: float


# One sample's time budget: a walk slow enough that `replays` of it would exceed this gets fewer
# replays (decided once per walk before its first sample, so every round does the same work;
# never fewer than MIN_REPLAYS). Every walk of the committed baselines fits 50 replays; the
# budget keeps a slow backend on 8B shapes from turning one round into minutes.
SAMPLE_BUDGET_US = 50_000.0
MIN_REPLAYS = 3


def fit_replays(replays: int, walk_us: float, budget_us: float = SAMPLE_BUDGET_US) -> int:
    """Replays per sample: `replays`, or as many walks of `walk_us` as fit the sample budget,
    at least MIN_REPLAYS (or `replays` itself when that is fewer)."""
    if not walk_us > 0:
        return replays
    return max(min(MIN_REPLAYS, replays), min(replays, int(budget_us // walk_us)))


_CYCLES_PER_US: float | None = None


def sleep_cycles_per_us() -> float:
    """GPU clock cycles `torch.cuda._sleep` spins per microsecond (measured once per process)."""
    global _CYCLES_PER_US
    import torch

    if _CYCLES_PER_US is None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 10_000_000
        torch.cuda._sleep(cycles // 10)  # warm
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _CYCLES_PER_US = cycles / (start.elapsed_time(end) * 1e3)
    return _CYCLES_PER_US


def _gpu_spin(ms: float) -> None:
    """Keep the current CUDA stream busy for about `ms` milliseconds (for the injection hook)."""
    import torch

    torch.cuda._sleep(int(ms * 1e3 * sleep_cycles_per_us()))


def _cpu_spin(ms: float) -> None:
    deadline = time.perf_counter() + ms / 1e3
    while time.perf_counter() < deadline:
        pass


class TokenClock:
    """Timestamps one round: `start()` before generation, `mark()` after each token's logits.

    On CUDA, marks are events on the current stream, read after one synchronize at `finish()`;
    elsewhere `perf_counter` (CPU backends compute synchronously, so the clock is honest).
    """

    def __init__(self, device: str, expected_marks: int, backend: str = "", delay_ms: float | None = None):
        self.cuda = device == "cuda"
        # an explicit delay (the sensitivity experiment's) replaces the environment's
        self.delay_ms = injected_delay_ms(backend) if delay_ms is None else delay_ms
        # what a CPU mark reads and what spends an injected delay: a test double on a simulated clock
        # (quantperf/backends/fake.py) replaces both for its round
        self.now, self.wait = time.perf_counter, (_gpu_spin if self.cuda else _cpu_spin)
        self._marks: list = []
        if self.cuda:
            import torch

            self._torch = torch
            self._pool = [torch.cuda.Event(enable_timing=True) for _ in range(expected_marks + 1)]

    def start(self) -> None:
        self._marks = []
        self._record()

    def _record(self) -> None:
        if self.cuda:
            if len(self._marks) >= len(self._pool):
                self._pool.append(self._torch.cuda.Event(enable_timing=True))
            ev = self._pool[len(self._marks)]
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(self.now())

    def mark(self) -> None:
        if self.delay_ms:
            self.wait(self.delay_ms)
        self._record()

    def finish(self) -> RoundTiming:
        if len(self._marks) < 3:
            raise RuntimeError(f"a round needs a start and >= 2 token marks, got {len(self._marks)} marks")
        if self.cuda:
            self._marks[-1].synchronize()
            t = [0.0] + [self._marks[0].elapsed_time(ev) for ev in self._marks[1:]]
        else:
            t = [(m - self._marks[0]) * 1e3 for m in self._marks]
        decode = [b - a for a, b in zip(t[1:-1], t[2:])]
        return RoundTiming(prefill_ms=t[1], decode_ms=decode, total_ms=t[-1])


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def wall_ms(fn, device: str) -> tuple[float, object]:
    """Time a whole call (load, export) with device synchronization on both sides."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, out


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def host_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def host_peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nvml_process_mib(index: int = 0) -> tuple[float | None, list[dict]]:
    """This process's GPU memory as NVML sees it (CUDA context and non-PyTorch allocations
    included), and the other processes on the device."""
    nvml = Nvml.get()
    if nvml is None:
        return None, []
    h = nvml.handle(index)
    procs = nvml.call("nvmlDeviceGetComputeRunningProcesses", h, default=[]) or []
    mine, others = None, []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        used_mib = None if used is None else used / MIB
        if p.pid == os.getpid():
            mine = used_mib
        else:
            others.append({"pid": p.pid, "used_mib": used_mib})
    return mine, others


def memory_snapshot(device: str) -> dict:
    """Allocator, NVML and host readings, in MiB."""
    snap: dict = {"host_rss_mib": round(host_rss_mib(), 1), "host_peak_rss_mib": round(host_peak_rss_mib(), 1)}
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        snap.update(
            allocated_mib=round(torch.cuda.memory_allocated() / MIB, 1),
            peak_allocated_mib=round(torch.cuda.max_memory_allocated() / MIB, 1),
            reserved_mib=round(torch.cuda.memory_reserved() / MIB, 1),
            peak_reserved_mib=round(torch.cuda.max_memory_reserved() / MIB, 1),
        )
        mine, others = nvml_process_mib(torch.cuda.current_device())
        snap["nvml_process_mib"] = None if mine is None else round(mine, 1)
        snap["other_gpu_processes"] = others
    return snap


class HostLoad:
    """What else the host did during a round, from /proc/stat: CPU time stolen by the
    hypervisor and CPU time other processes used, in cores (1.0 = one core busy the whole
    round). On a 2-core box a round that shares its cores is a different measurement; it is
    marked, not silently averaged in."""

    STEAL_MAX = 0.05  # fraction of all CPU time
    OTHER_MAX = 0.5  # cores busy with other processes

    def __init__(self):
        self._t0 = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat", encoding="utf-8") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        t = os.times()
        return fields, t.user + t.system, time.perf_counter()

    def finish(self) -> dict:
        end = self._read()
        if self._t0 is None or end is None:
            return {}
        (a, own_a, w_a), (b, own_b, w_b) = self._t0, end
        d = [y - x for x, y in zip(a, b)]
        total = sum(d[:8]) or 1
        hz = os.sysconf("SC_CLK_TCK")
        idle = d[3] + d[4]
        busy_s = (total - idle - d[7]) / hz
        wall = max(w_b - w_a, 1e-9)
        steal = d[7] / total if len(d) > 7 else 0.0
        other = max(busy_s - (own_b - own_a), 0.0) / wall
        return {"steal_fraction": round(steal, 4), "other_load_cores": round(other, 3),
                "contended": steal > self.STEAL_MAX or other > self.OTHER_MAX}


# NVML clock-event (throttle) reasons that slow the SM clock for reasons other than idling
# or the application's own clock setting.
_THROTTLE_BITS = {
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}
INVALIDATING = {"hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}


@dataclass
class GpuState:
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    thermal_violation_ns: int | None = None
    power_violation_ns: int | None = None


def gpu_state(index: int = 0) -> GpuState | None:
    nvml = Nvml.get()
    if nvml is None:
        return None
    nv, h = nvml.nv, nvml.handle(index)
    reasons = nvml.call("nvmlDeviceGetCurrentClocksEventReasons", h)
    if reasons is None:
        reasons = nvml.call("nvmlDeviceGetCurrentClocksThrottleReasons", h, default=0)
    power = nvml.call("nvmlDeviceGetPowerUsage", h)

    def violation(policy):
        v = nvml.call("nvmlDeviceGetViolationStatus", h, policy)
        return None if v is None else int(v.violationTime)

    return GpuState(
        sm_clock_mhz=nvml.call("nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM),
        mem_clock_mhz=nvml.call("nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM),
        temperature_c=nvml.call("nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU),
        power_w=None if power is None else power / 1000,
        throttle_reasons=[name for name, bit in _THROTTLE_BITS.items() if (reasons or 0) & bit],
        thermal_violation_ns=violation(getattr(nv, "NVML_PERF_POLICY_THERMAL", 1)),
        power_violation_ns=violation(getattr(nv, "NVML_PERF_POLICY_POWER", 0)),
    )


def sm_clock_mhz(index: int = 0) -> int | None:
    """The SM clock alone: one NVML call (gpu_state makes seven), for a reading per timed sample."""
    nvml = Nvml.get()
    return None if nvml is None else nvml.call("nvmlDeviceGetClockInfo", nvml.handle(index), nvml.nv.NVML_CLOCK_SM)


def throttle_verdict(before: GpuState | None, after: GpuState | None) -> tuple[bool, list[str]]:
    """(throttled, reasons): invalidating clock-event reasons at either end, or thermal
    violation time that grew during the measurement."""
    if before is None or after is None:
        return False, []
    reasons = sorted((set(before.throttle_reasons) | set(after.throttle_reasons)) & INVALIDATING)
    if (
        before.thermal_violation_ns is not None
        and after.thermal_violation_ns is not None
        and after.thermal_violation_ns > before.thermal_violation_ns
    ):
        reasons.append("thermal_violation_time_grew")
    return bool(reasons), reasons
