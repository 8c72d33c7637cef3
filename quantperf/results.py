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
    status: str = "ok"  # ok | unavailable | mode-unsupported | error
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
    injected_delay_ms: float = 0.0
    timestamp: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same directory, fsync, then rename: readers never see a torn
    file. The file keeps its mode (a new one gets the umask's), not the temp file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ResultLog:
    """Append-only JSON-lines log: each finished configuration is flushed and fsynced at once,
    so an interrupted run keeps everything already measured."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, result: RunResult) -> None:
        line = json.dumps(result.to_dict(), sort_keys=True, default=str)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rotate(self) -> Path | None:
        """Start a new session's log: an existing one moves beside it as `results-<time>.jsonl`
        (with its summary.json), so gating a log never re-gates an older session's results."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
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
        """Every result in the log. A torn last line (a killed run) is dropped; any other line that
        is not a result is a ResultsError naming the file and line."""
        from .errors import ResultsError

        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(RunResult.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                if n == len(lines) and out:  # a torn last line from a killed run is expected
                    break
                raise ResultsError(f"{self.path}: line {n} is not a quantperf result ({type(exc).__name__}: {exc}); "
                                   "a results file holds one JSON result per line, as the suite or `quantperf run --out` "
                                   "writes it") from None
        return out


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
