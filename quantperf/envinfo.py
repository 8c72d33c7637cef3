"""Environment and hardware-profile detection. Imports heavy libraries only inside functions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from functools import lru_cache

LIBRARIES = (
    "torch", "transformers", "bitsandbytes", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript",
    "torchao", "optimum", "optimum-onnx", "accelerate", "safetensors", "numpy", "scipy", "nvidia-ml-py", "kernels",
)
# ISA features that change which kernels CPU backends pick.
CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "avx_vnni",
)


def package_versions(names=LIBRARIES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            flags = set(m.group(1).split())
    except OSError:
        pass
    return {
        "model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(f for f in CPU_FLAGS if f in flags),
    }


class Nvml:
    """A thin guard over nvidia-ml-py: `Nvml.get()` is None where NVML is missing (CPU machines)."""

    _instance: "Nvml | None" = None
    _failed: str | None = None

    def __init__(self, pynvml):
        self.nv = pynvml

    @classmethod
    def get(cls) -> "Nvml | None":
        if cls._instance is None and cls._failed is None:
            try:
                import pynvml  # provided by nvidia-ml-py

                pynvml.nvmlInit()
                cls._instance = cls(pynvml)
            except Exception as exc:  # NVMLError_LibraryNotFound on CPU machines, ImportError without the package
                cls._failed = f"{type(exc).__name__}: {exc}"
        return cls._instance

    def handle(self, index: int = 0):
        """NVML's handle of CUDA device `index`. NVML numbers every GPU of the host and ignores
        CUDA_VISIBLE_DEVICES, so CUDA device 0 of a process pinned to the third GPU is NVML
        device 2: the device is found by its UUID (or by CUDA_VISIBLE_DEVICES' own entry)."""
        entry = nvml_device_entry(index, os.environ.get("CUDA_VISIBLE_DEVICES"), cuda_uuid(index))
        if isinstance(entry, str):
            try:
                return self.nv.nvmlDeviceGetHandleByUUID(entry)
            except Exception:  # an unknown or MIG UUID: fall back to the visible index
                entry = index
        return self.nv.nvmlDeviceGetHandleByIndex(entry)

    def call(self, fn: str, *args, default=None):
        try:
            value = getattr(self.nv, fn)(*args)
        except Exception:
            return default
        return value.decode() if isinstance(value, bytes) else value


def cuda_uuid(index: int) -> str | None:
    """The NVML-style UUID ("GPU-...") of CUDA device `index`, where torch knows it and CUDA is
    already initialized in this process (never initializes CUDA itself)."""
    try:
        import torch

        if not torch.cuda.is_initialized():
            return None
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # no torch, no CUDA, or a torch without device UUIDs
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def nvml_device_entry(index: int, visible: str | None, uuid: str | None) -> int | str:
    """Which NVML device CUDA device `index` is: its UUID when known, else the `index`-th entry of
    CUDA_VISIBLE_DEVICES (an NVML index or a UUID), else `index` itself."""
    if uuid:
        return uuid
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    if index < len(entries):
        e = entries[index]
        return int(e) if e.isdigit() else e
    return index


def worker_gpu(worker_id: str, visible: str | None, uuids: list[str]) -> str | None:
    """The GPU a pytest-xdist worker (`gw3`) measures on: the workers are spread over the GPUs
    that are visible (CUDA_VISIBLE_DEVICES' entries, else every GPU NVML lists, by UUID), one GPU
    per worker when there are as many workers as GPUs. None: nothing to pin (one GPU or none)."""
    m = re.fullmatch(r"gw(\d+)", worker_id or "")
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()] or list(uuids)
    if m is None or len(entries) < 2:
        return None
    return entries[int(m.group(1)) % len(entries)]


def gpu_uuids() -> list[str]:
    """The UUIDs of every GPU NVML sees on this host (empty without NVML)."""
    nvml = Nvml.get()
    if nvml is None:
        return []
    n = nvml.call("nvmlDeviceGetCount", default=0) or 0
    return [u for u in (nvml.call("nvmlDeviceGetUUID", nvml.nv.nvmlDeviceGetHandleByIndex(i)) for i in range(n)) if u]


def gpu_info(index: int = 0) -> dict | None:
    """Name, compute capability, memory, driver and peak bandwidth of CUDA device `index`."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from .roofline import datasheet_peak_gbps, peak_bandwidth_from_clock

    props = torch.cuda.get_device_properties(index)
    info = {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mib": props.total_memory // 2**20,
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
    }
    nvml = Nvml.get()
    peak, source = None, None
    if nvml is not None:
        h = nvml.handle(index)
        info["driver"] = nvml.call("nvmlSystemGetDriverVersion")
        bus = nvml.call("nvmlDeviceGetMemoryBusWidth", h)
        clock = nvml.call("nvmlDeviceGetMaxClockInfo", h, nvml.nv.NVML_CLOCK_MEM)
        if bus and clock:
            peak, source = peak_bandwidth_from_clock(bus, clock), f"nvml: {bus}-bit bus x {clock} MHz x 2"
    sheet = datasheet_peak_gbps(props.name)
    if sheet is not None and (peak is None or abs(peak - sheet) / sheet > 0.15):
        # NVML's memory clock on some HBM parts is not the data rate; trust the datasheet then.
        peak, source = sheet, "datasheet"
    info["peak_bandwidth_gbps"] = round(peak, 1) if peak else None
    info["peak_bandwidth_source"] = source
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_CPU_NOISE_WORDS = re.compile(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|\d+-core|@.*$|\bwith\b.*$", re.IGNORECASE)


def cpu_family(model_name: str) -> str:
    """`AMD EPYC 7B13 64-Core Processor` -> `amd-epyc-7b13`; `Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz`
    -> `intel-xeon-platinum-8480`: vendor and model family, without clocks and marketing words."""
    return _slug(_CPU_NOISE_WORDS.sub(" ", model_name)) or "unknown"


def profile_id(device: str = "auto") -> str:
    """Stable hardware-profile id: `nvidia-h100-80gb-hbm3`, `nvidia-tesla-t4`, and for CPUs the
    vendor and model family, the architecture, the widest vector ISA and the usable core count,
    e.g. `cpu-amd-epyc-x86_64-avx2-2c`: two AVX2 boxes of other models or sizes do not share a
    baseline."""
    if device in ("auto", "cuda"):
        gpu = gpu_info()
        if gpu is not None:
            name = _slug(gpu["name"])
            return name if name.startswith("nvidia") else f"nvidia-{name}"
        if device == "cuda":
            from .errors import DeviceUnavailable

            raise DeviceUnavailable("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
                                    "run on a GPU machine or use --device cpu")
    cpu = cpu_info()
    isa = set(cpu["isa"])
    parts = ["cpu", cpu_family(cpu["model"]), cpu["arch"]]
    if "avx512f" in isa:
        parts.append("avx512")
    elif "avx2" in isa:
        parts.append("avx2")
    if "amx_tile" in isa:
        parts.append("amx")
    parts.append(f"{cpu['usable_cores']}c")
    return "-".join(parts)


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def run_info() -> dict:
    """Who measured, when: one id per measuring process (a pytest session, a `quantperf run`),
    the machine's boot id and its host key (`host_key`). Baselines keep these per recorded run, so
    the gate can tell runs of one sitting from runs of different sessions (the unit of
    replication is the run, and the session it ran in)."""
    import uuid
    from datetime import datetime, timezone

    boot = _boot_id()
    return {
        "run_id": uuid.uuid4().hex[:12],
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "boot_id": boot,
        "host": host_key(platform.node() or "unknown", gpu_uuids()),
    }


def measured_host(results) -> str | None:
    """The host key of the machine that measured `results` (RunResults of one run; None when they
    do not say): gating stored results replays them as seen from where they were measured."""
    return next((h for r in results if (h := ((r.environment or {}).get("run") or {}).get("host"))), None)


def host_key(name: str, uuids: list[str]) -> str:
    """The host a run measured on, as the history and the host-aware gate key it: a hash of the
    host name and, on a GPU machine, of its GPUs' UUIDs (leased machines can all carry one host
    name; their GPUs tell them apart). A machine without GPUs keeps the hash of its name alone."""
    import hashlib

    text = name if not uuids else name + "|" + ",".join(sorted(uuids))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def environment() -> dict:
    """Everything recorded with every result: versions, GPU, CPU, Python."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "gpu": gpu_info(),
        "cpu": cpu_info(),
        "nvml": None if Nvml.get() is None else "ok",
        "run": run_info(),
    }
