"""Result objects: plain dataclasses that round-trip to JSON. Figures keep their raw samples."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .spec import RunSpec
from .stats import Summary
from .status import Status

RESULT_SCHEMA = 1

# name -> (unit, higher_is_better, kind). `kind` picks the tolerance family in the gate.
METRICS: dict[str, tuple[str, bool, str]] = {
    "decode_tokens_per_s": ("tok/s", True, "speed"),
    "e2e_tokens_per_s": ("tok/s", True, "speed"),
    "prefill_ms": ("ms", False, "speed"),
    "weight_mib": ("MiB", False, "memory"),
    "peak_allocated_mib": ("MiB", False, "memory"),
    "nvml_process_mib": ("MiB", False, "memory"),
    "host_peak_rss_mib": ("MiB", False, "memory"),
    "ppl": ("", False, "quality"),
    "ln_ppl_ratio": ("", False, "quality"),
    "mean_kld": ("nats", False, "quality"),
    "top1_agreement": ("", True, "quality"),
    "rms_dp": ("", False, "quality"),
    "kernel_decode_us_per_layer": ("us", False, "speed"),
    "kernel_prefill_us_per_layer": ("us", False, "speed"),
}


@dataclass
class Metric:
    name: str
    samples: list[float]
    unit: str = ""
    higher_is_better: bool = True
    kind: str = "speed"
    stderr: float | None = None  # for metrics whose samples are not i.i.d. rounds (quality)

    @classmethod
    def of(cls, name: str, samples: list[float], stderr: float | None = None) -> "Metric":
        unit, hib, kind = METRICS[name]
        return cls(name, [float(s) for s in samples], unit, hib, kind, stderr)

    @property
    def summary(self) -> Summary:
        return Summary.from_values(self.samples)

    @property
    def value(self) -> float:
        return self.summary.median

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Metric":
        d = {k: v for k, v in d.items() if k != "summary"}
        return cls(**d)


@dataclass
class RunResult:
    """Everything measured for one configuration, or why it was not measured."""

    spec: RunSpec
    status: str = Status.OK  # ok | unavailable | mode-unsupported | error
    reason: str | None = None
    profile: str | None = None
    backend_identity: dict = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    roofline: dict = field(default_factory=dict)
    validity: dict = field(default_factory=dict)
    arch: dict = field(default_factory=dict)
    execution: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # scenario figures beyond the metrics (kernel tables)
    generations: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    # what really ran (quantperf.fidelity): {"settings": {...}, "versions": {...}}; {} in results written
    # before it was recorded
    runtime: dict = field(default_factory=dict)
    injected_delay_ms: float = 0.0
    timestamp: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def timing_methods(self) -> list[str]:
        """Kernel mode: how its figures were timed (cuda-graph, eager-timed, `cuda-graph,
        gpu-queued`, `cuda-graph, host-bound`, ...); empty for other modes."""
        types = ((self.figures or {}).get("kernel") or {}).get("types") or {}
        return sorted({t.get("method") for t in types.values() if t.get("method")})

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("spec", "metrics")}
        d["schema"] = RESULT_SCHEMA
        d["config_id"] = self.spec.id
        d["spec"] = self.spec.to_dict()
        d["metrics"] = {k: m.to_dict() for k, m in sorted(self.metrics.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        d = dict(d)
        d.pop("schema", None)
        d.pop("config_id", None)
        spec = RunSpec.from_dict(d.pop("spec"))
        metrics = {k: Metric.from_dict(v) for k, v in d.pop("metrics", {}).items()}
        return cls(spec=spec, metrics=metrics, **d)


def write_error(path: str | os.PathLike, exc: OSError, what: str = "file", outcome: str = "nothing was written"):
    """The one-line StoreWriteError for a failed write of `path`: the path, the OS error and what
    to do about it."""
    import errno as errno_

    from .errors import StoreWriteError

    path = Path(path)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno_.ENOSPC or exc.errno == getattr(errno_, "EDQUOT", None):
        hint = f"free disk space on the file system of {path.parent}"
    else:
        hint = f"make {path.parent} and {path.name} writable by this user"
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in (str(path), str(path.parent)) else ""
    return StoreWriteError(f"cannot write the {what} {path}: {reason}{where}; {outcome}: {hint}, then "
                           "run again")


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Write via a temp file in the same directory, fsync, then rename: readers never see a torn
    file. The file keeps its mode (a new one gets the umask's), not the temp file's 0600. A
    failed write (read-only file or directory, full disk) is one StoreWriteError naming the path
    and the OS error; the file keeps its old contents and the temp file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise write_error(path, exc, what) from None
        raise


class ResultLog:
    """Append-only JSON-lines log: each finished configuration is flushed and fsynced at once,
    so an interrupted run keeps everything already measured."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.path, exc, "results file") from None

    def append(self, result: RunResult) -> None:
        """Append one result as one line. A file that does not end with a newline (a torn last
        line: a killed run, a full disk) gets one first, so this result never merges into it. A
        failed write is one StoreWriteError naming the file."""
        line = json.dumps(result.to_dict(), sort_keys=True, default=str)
        try:
            with open(self.path, "a+b") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = "\n" + line
                fh.write((line + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(self.path, exc, "results file", "this result was not recorded") from None

    def rotate(self) -> Path | None:
        """Start a new session's log: an existing one moves beside it as `results-<time>.jsonl`
        (with its summary.json), so gating a log never re-gates an older session's results."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        try:
            return self._rotate()
        except OSError as exc:
            raise write_error(self.path, exc, "results file", "the previous session's results were not moved aside"
                              ) from None

    def _rotate(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.path.stat().st_mtime))
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.stem}-{stamp}-{n}{self.path.suffix}")
        os.replace(self.path, target)
        summary = self.path.with_name("summary.json")
        if summary.exists():
            os.replace(summary, target.with_name(target.stem.replace(self.path.stem, "summary", 1) + ".json"))
        return target

    def read(self) -> list[RunResult]:
        """Every result in the log. A torn line -- a result cut off mid-write by a killed run or
        a full disk, last in the file or followed by later results -- is skipped with a
        TornLineWarning naming the file and line; any other line that is not a result is a
        ResultsError naming the file and line."""
        import warnings

        from .errors import ConfigError, ResultsError, TornLineWarning

        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ResultsError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        lines = text.splitlines()
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                if line.lstrip().startswith("{") or n == len(lines):  # the start of a result, cut off
                    warnings.warn(TornLineWarning(
                        f"{self.path}: line {n} is a torn result (cut off mid-write: {exc}); skipped, the other "
                        "results are read"), stacklevel=2)
                    continue
                raise ResultsError(self._not_a_result(n, exc)) from None
            try:
                out.append(_checked(RunResult.from_dict(_require_object(data))))
            except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as exc:
                raise ResultsError(self._not_a_result(n, exc)) from None
        return out

    def _not_a_result(self, n: int, exc: Exception) -> str:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return (f"{self.path}: line {n} is not a quantperf result ({detail}); a results file holds one JSON result "
                "per line, as the suite or `quantperf run --out` writes it")


def _require_object(data: Any) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"a result is a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("spec"), dict):
        raise TypeError(f"field 'spec' must be an object, got {data.get('spec')!r}"[:200])
    if not isinstance(data.get("metrics", {}), dict):
        raise TypeError(f"field 'metrics' must be an object, got {data.get('metrics')!r}"[:200])
    return data


def _checked(result: RunResult) -> RunResult:
    """The fields every reader touches have their types: a wrong one is a TypeError here (the
    caller names the file and line), not in the middle of a report."""
    spec = result.spec
    for name in ("model", "backend", "device", "mode"):
        if not isinstance(getattr(spec, name), str):
            raise TypeError(f"spec.{name} must be a string, got {getattr(spec, name)!r}")
    if not isinstance(result.status, str):
        raise TypeError(f"status must be a string, got {result.status!r}")
    for field_name in ("reason", "profile", "timestamp"):
        value = getattr(result, field_name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{field_name} must be a string or null, got {value!r}")
    for field_name in ("backend_identity", "memory", "roofline", "validity", "arch", "execution", "quality",
                       "figures", "environment", "timings"):
        if not isinstance(getattr(result, field_name), dict):
            raise TypeError(f"{field_name} must be an object, got {getattr(result, field_name)!r}")
    if not isinstance(result.generations, list):
        raise TypeError(f"generations must be a list, got {result.generations!r}")
    if isinstance(result.injected_delay_ms, bool) or not isinstance(result.injected_delay_ms, (int, float)):
        raise TypeError(f"injected_delay_ms must be a number, got {result.injected_delay_ms!r}")
    for key, m in result.metrics.items():
        if not isinstance(m.name, str) or not isinstance(m.unit, str) or not isinstance(m.kind, str):
            raise TypeError(f"metrics.{key}: name, unit and kind must be strings")
        if not isinstance(m.higher_is_better, bool):
            raise TypeError(f"metrics.{key}.higher_is_better must be true or false, got {m.higher_is_better!r}")
        if not isinstance(m.samples, list) or not m.samples or \
                not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m.samples):
            raise TypeError(f"metrics.{key}.samples must be a non-empty list of numbers, got {m.samples!r}"[:200])
        if m.stderr is not None and (isinstance(m.stderr, bool) or not isinstance(m.stderr, (int, float))):
            raise TypeError(f"metrics.{key}.stderr must be a number or null, got {m.stderr!r}")
    return result


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def measured_line(res: RunResult, key: str = "") -> str:
    """One line for a configuration just measured: its headline figures, or why it was not."""
    label = ("quality " if key.startswith("quality:") else "") + res.spec.id
    if not res.ok:
        return f"{label}: {res.status} ({(res.reason or '')[:200]})"
    m = res.metrics
    parts = []
    if "decode_tokens_per_s" in m:
        d = m["decode_tokens_per_s"]
        parts.append(f"decode {d.value:.4g} tok/s (CV {d.summary.cv * 100:.1f}%, {d.summary.n} rounds)")
    if "prefill_ms" in m:
        parts.append(f"prefill {m['prefill_ms'].value:.4g} ms")
    if "kernel_decode_us_per_layer" in m:
        parts.append(f"kernels {m['kernel_decode_us_per_layer'].value:.4g} us/layer at decode, "
                     f"{m['kernel_prefill_us_per_layer'].value:.4g} at prefill")
    if "mean_kld" in m:
        parts.append(f"KLD {m['mean_kld'].value:.3g}")
    if "top1_agreement" in m:
        parts.append(f"top-1 {m['top1_agreement'].value:.3f}")
    if "weight_mib" in m and not key.startswith("quality:"):
        parts.append(f"weights {m['weight_mib'].value:.4g} MiB")
    wall = (res.timings or {}).get("wall_s")
    return f"{label}: " + ", ".join(parts) + (f" [{wall:.0f} s]" if wall else "")
