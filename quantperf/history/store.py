"""The results store: every sitting's run medians and identities, kept append-only, one JSON file
per sitting, keyed by profile and host:

    <root>/<profile>/<host>/<YYYYmmddTHHMMSSZ>-<run_id>-<part>.json

(`part` tells apart the results files one run wrote for different configurations; the parts of
a run are merged into one sitting when read).

A sitting is one run of the suite on one machine: its run id, start time, profile, host hash, boot
id, git revision, environment (packages, driver, GPU, CPU) and, per configuration, its spec, mode,
status, backend identity, any `runtime` identity, and each metric's median with its spread, a 95%
interval of the median and the raw round samples.

A sitting is written whole or not at all (temp file, fsync, then a hard link that never replaces
an existing file, then fsync of the directory) under an exclusive lock (`<root>/.lock`), so two
writers never interleave and an interrupted write leaves nothing behind. A file written by a newer
schema, or one that is not a sitting, is a HistoryError naming the file; reports read with
`strict=False`, which skips such a file and says so.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import QuantperfError
from ..results import RunResult, dump_json, write_error
from ..status import Status

SCHEMA_VERSION = 1
KIND = "quantperf-sitting"
_SAFE = re.compile(r"[a-z0-9][a-z0-9._-]*")


class HistoryError(QuantperfError):
    """A results store that cannot be read or written as asked: names the file and what to do."""


@dataclass
class Sitting:
    """One run of the suite on one machine, as the store keeps it (plain data, round-trips to JSON)."""

    run_id: str
    started_at: str  # ISO 8601, UTC
    profile: str
    host: str
    boot_id: str | None = None
    git_revision: str | None = None
    source_branch: str | None = None  # the code's branch (baselines derive from the default branch's sittings)
    environment: dict = field(default_factory=dict)  # python, packages, driver, gpu, cpu
    configs: dict[str, dict] = field(default_factory=dict)  # config key -> its record (see from_results)
    run_ids: list[str] = field(default_factory=list)  # every measuring process of the sitting (xdist workers)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in ("profile", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _SAFE.fullmatch(value):
                raise HistoryError(f"sitting {self.run_id}: field '{name}' must be a safe name (lower-case letters, "
                                   f"digits, '.', '_', '-'), got {value!r}")
        if not isinstance(self.run_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", self.run_id):
            raise HistoryError(f"a sitting's field 'run_id' must be letters, digits, '_' or '-', got {self.run_id!r}")
        _when(self.started_at, f"sitting {self.run_id}: field 'started_at'")

    @property
    def when(self) -> datetime:
        return _when(self.started_at, "started_at")

    @property
    def part(self) -> str:
        """Which part of its run this is: a digest of its configuration keys. One run can write
        several results files (one per group of configurations); each is a part of one sitting,
        stored beside the others and merged when read."""
        import hashlib

        return hashlib.sha256("\n".join(sorted(self.configs)).encode()).hexdigest()[:8]

    @property
    def relpath(self) -> str:
        """Where the sitting lives under a store's root."""
        return f"{self.profile}/{self.host}/{self.when.strftime('%Y%m%dT%H%M%SZ')}-{self.run_id}-{self.part}.json"

    @property
    def packages(self) -> dict:
        return {k: v for k, v in (self.environment.get("packages") or {}).items() if v}

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "sitting") -> "Sitting":
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise HistoryError(f"{where}: not a quantperf sitting (field 'kind' must be {KIND!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise HistoryError(f"{where}: field 'schema_version' must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{where}: written by a newer quantperf (schema_version {version}; this one reads up "
                               f"to {SCHEMA_VERSION}): upgrade quantperf to read this store; nothing was changed")
        known = set(cls.__dataclass_fields__)
        try:
            sitting = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise HistoryError(f"{where}: not a quantperf sitting ({exc})") from None
        for key, cfg in sitting.configs.items():
            if not isinstance(cfg, dict) or not isinstance(cfg.get("metrics", {}), dict):
                raise HistoryError(f"{where}: configs.{key} must be an object with a 'metrics' object")
            for name, m in cfg.get("metrics", {}).items():
                median = m.get("median") if isinstance(m, dict) else None
                if isinstance(median, bool) or not isinstance(median, (int, float)) or not math.isfinite(median):
                    raise HistoryError(f"{where}: configs.{key}.metrics.{name}.median must be a finite number, got "
                                       f"{median!r}")
        return sitting


def _when(text, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise HistoryError(f"{what} must be an ISO 8601 time, got {text!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def median_interval(samples: list[float], confidence: float = 0.95) -> list[float]:
    """A distribution-free interval of the median from order statistics (binomial): the widest
    pair of ranks whose coverage is at least `confidence`; the sample range when n is too small."""
    from scipy.stats import binom

    xs = sorted(samples)
    n = len(xs)
    k = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # ranks k+1 .. n-k (1-based) cover >= confidence
    while k > 0 and binom.cdf(n - k - 1, n, 0.5) - binom.cdf(k - 1, n, 0.5) < confidence:
        k -= 1
    lo, hi = (xs[k - 1], xs[n - k]) if k >= 1 else (xs[0], xs[-1])
    return [lo, hi]


def _metric_record(m: dict) -> dict:
    samples = [float(x) for x in m["samples"]]
    s = m.get("summary") or {}
    from ..stats import Summary

    if not s:
        s = Summary.from_values(samples).to_dict()
    out = {"median": s["median"], "unit": m.get("unit", ""), "higher_is_better": m.get("higher_is_better", True),
           "kind": m.get("kind", "speed"), "n": s["n"], "cv": s["cv"], "q1": s["q1"], "q3": s["q3"],
           "ci": median_interval(samples), "samples": samples}
    if m.get("stderr") is not None:
        out["stderr"] = m["stderr"]
    return out


def config_key(result: dict) -> str:
    """The key a result is kept under: its config id, prefixed `quality-` for a quality run (as
    baselines key them)."""
    return ("quality-" if result.get("quality") else "") + result.get("config_id", "")


def summary_configs(summary: dict | None) -> list[dict]:
    """A summary.json's configuration outcomes as a list of dicts with `key` and `config_id` (a
    quality configuration's prefixed `quality-`, as the store and baselines key it): a schema-2
    summary's list, or a schema-1 summary's object keyed by `<config id>:<kinds>`."""
    configs = (summary or {}).get("configs") or []
    if isinstance(configs, dict):
        configs = [{**(v or {}), "key": k, "config_id": k.removeprefix("quality:").rsplit(":", 1)[0]}
                   for k, v in configs.items() if isinstance(v, dict)]
    out = []
    for c in configs:
        if isinstance(c, dict):
            cid = str(c.get("config_id", ""))
            if str(c.get("key", "")).startswith("quality:") and not cid.startswith("quality-"):
                cid = "quality-" + cid
            out.append({**c, "config_id": cid})
    return out


def from_results(results, summary: dict | None = None, source_branch: str | None = None,
                 git_revision: str | None = None, host: str | None = None) -> list["Sitting"]:
    """Sittings from what quantperf writes: a results.jsonl path, or RunResults or their dicts.
    One sitting per profile in the results (a machine's CPU and GPU tiers are separate
    histories); a configuration measured twice (a confirmation re-run) keeps its last result.
    `summary` (a summary.json's dict) adds each configuration's gate outcome as `outcome`.
    `host` replaces the results' host hash as the sitting's host key (a leased machine's host
    name can be the same on every lease: key such hosts by something that tells them apart,
    e.g. a hash of the GPU's UUID, and gate with the same key)."""
    from ..results import ResultLog

    if isinstance(results, (str, os.PathLike)):
        results = ResultLog(results).read()  # torn lines are skipped with a warning naming the file
    dicts = []
    for r in results:
        d = r.to_dict() if isinstance(r, RunResult) else dict(r)
        if "config_id" not in d:
            d["config_id"] = RunResult.from_dict(d).spec.id
        dicts.append(d)
    statuses: dict[str, list[str]] = {}
    for c in summary_configs(summary):
        statuses.setdefault(c["config_id"], []).append(c.get("status"))
    # a configuration's outcome: regressed if any of its kinds (speed, memory, quality) is, else its first
    outcomes = {cid: next((w for w in words if w == Status.REGRESSED), words[0]) for cid, words in statuses.items()}
    by_profile: dict[str, list[dict]] = {}
    for d in dicts:
        if not d.get("profile"):
            raise HistoryError(f"result {d.get('config_id')!r} names no profile: a sitting is kept per profile")
        by_profile.setdefault(d["profile"], []).append(d)
    sittings = []
    for profile, group in by_profile.items():
        runs = [(d.get("environment") or {}).get("run") or {} for d in group]
        first = min((r for r in runs if r.get("started_at")), key=lambda r: r["started_at"], default={})
        env = (group[-1].get("environment") or {})
        gpu = env.get("gpu") or {}
        configs = {}
        for d in group:
            run = (d.get("environment") or {}).get("run") or {}
            types = ((d.get("figures") or {}).get("kernel") or {}).get("types") or {}
            rec = {"spec": d["spec"], "mode": d["spec"].get("mode"), "status": d.get("status"),
                   "reason": d.get("reason"), "backend_identity": d.get("backend_identity") or {},
                   "timing_methods": sorted({t.get("method") for t in types.values() if t.get("method")}),
                   "run_id": run.get("run_id"), "started_at": run.get("started_at") or d.get("timestamp"),
                   "metrics": {n: _metric_record(m) for n, m in sorted((d.get("metrics") or {}).items())}}
            runtime = d.get("runtime") or (d.get("environment") or {}).get("runtime")
            if isinstance(runtime, dict):
                rec["runtime"] = runtime
            if config_key(d) in outcomes:
                rec["outcome"] = outcomes[config_key(d)]
            configs[config_key(d)] = rec
        sittings.append(Sitting(
            run_id=first.get("run_id") or "unknown", started_at=first.get("started_at") or group[0]["timestamp"],
            profile=profile, host=host or first.get("host") or "unknown", boot_id=first.get("boot_id"),
            git_revision=git_revision, source_branch=source_branch,
            environment={"python": env.get("python"), "platform": env.get("platform"),
                         "packages": env.get("packages") or {}, "driver": gpu.get("driver"),
                         "gpu": {k: gpu.get(k) for k in ("name", "compute_capability", "cuda", "memory_mib")}
                         if gpu else None,
                         "cpu": env.get("cpu")},
            configs=configs, run_ids=sorted({r.get("run_id") for r in runs if r.get("run_id")})))
    return sittings


def parse_sitting(text: str, where: str) -> Sitting:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{where}: a corrupt sitting (not valid JSON: {exc}); move it aside or restore it from "
                           "the store's backup or branch") from None
    return Sitting.from_dict(data, where)


@dataclass
class Loaded:
    """Sittings read from a store, oldest first, and the files skipped (strict=False) with why."""

    sittings: list[Sitting]
    skipped: list[str] = field(default_factory=list)


def sort_sittings(sittings: list[Sitting]) -> list[Sitting]:
    """Oldest first, the parts of one run (same profile, host, run id and start) merged into one
    sitting: the union of their configurations (a later part's record of a key wins)."""
    merged: dict[tuple, Sitting] = {}
    for s in sorted(sittings, key=lambda s: (s.when, s.run_id, s.relpath)):
        key = (s.profile, s.host, s.run_id, s.when)
        if key not in merged:
            merged[key] = Sitting.from_dict(json.loads(json.dumps(s.to_dict())))
            continue
        into = merged[key]
        into.configs.update(s.configs)
        into.run_ids = sorted(set(into.run_ids) | set(s.run_ids))
    return list(merged.values())


class DirectoryStore:
    """A results store in a directory (a mounted volume, an artifact folder, a checked-out branch)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_of(self, sitting: Sitting) -> Path:
        return self.root / sitting.relpath

    def append(self, sitting: Sitting) -> Path:
        """Add one sitting. Append-only: a sitting already stored with the same content is a no-op,
        one stored with other content is a HistoryError (nothing is overwritten)."""
        import fcntl

        path = self.path_of(sitting)
        text = dump_json(sitting.to_dict())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".lock", "a")
        except OSError as exc:
            raise write_error(path, exc, "sitting", "this sitting was not stored") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                if path.read_text(encoding="utf-8") == text:
                    return path
                raise HistoryError(f"{path}: a different sitting with this run id and time is already stored; the "
                                   "store is append-only: nothing was written")
            _write_new(path, text)
        return path

    def profiles(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def hosts(self, profile: str) -> list[str]:
        d = self.root / profile
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def read(self, profile: str, host: str | None = None, strict: bool = True) -> Loaded:
        """The sittings of a profile (all hosts, or one), oldest first. strict=False skips a corrupt
        or newer-schema file and names it in `skipped` (what reports use)."""
        if not _SAFE.fullmatch(profile):
            raise HistoryError(f"profile {profile!r} is not a safe name")
        out, skipped = [], []
        for h in ([host] if host else self.hosts(profile)):
            for f in sorted((self.root / profile / h).glob("*.json")):
                try:
                    s = parse_sitting(f.read_text(encoding="utf-8", errors="replace"), str(f))
                    if (s.profile, s.host) != (profile, h):
                        raise HistoryError(f"{f}: holds a sitting of profile {s.profile!r}, host {s.host!r}, but lies "
                                           f"under {profile}/{h}: move it where it belongs")
                except HistoryError as exc:
                    if strict:
                        raise
                    skipped.append(str(exc))
                    continue
                out.append(s)
        return Loaded(sort_sittings(out), skipped)


def _write_new(path: Path, text: str) -> None:
    """Write `text` to a new file `path`, whole or not at all: a temp file beside it is written and
    fsynced, then hard-linked to `path` (which fails rather than replace a file), then removed."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except FileExistsError:
        raise HistoryError(f"{path}: already exists; the store is append-only: nothing was written") from None
    except OSError as exc:
        raise write_error(path, exc, "sitting", "this sitting was not stored") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
