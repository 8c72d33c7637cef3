"""Baselines: one human-diffable JSON file per hardware profile under `baselines/`.

    {"schema": 2, "profile": "nvidia-h100-80gb-hbm3",
     "configs": {"llama-1b-bnb-int8-cuda-bs1-eager": {
         "recorded_at": ..., "git_revision": ..., "packages": {...}, "backend_identity": {...},
         "metrics": {"decode_tokens_per_s": {"samples": [...], "median": ..., "cv": ...,
                                             "runs": [{"value": 55.0, "run_id": ..., "host": ..., "boot_id": ...,
                                                       "started_at": ...}, ...]}}}},
     "takeaways": {"small-int8-slower-than-fp16": {"verdict": "holds", "ratio": ..., "ci": [...], ...}}}

The run is the unit of replication: each recorded run keeps its median with who measured it and
when (run id, host hash, boot id, start time), so the gate can separate run-to-run noise from
the shift of a whole session. Schema-1 files (one `run_medians` list, no session information)
are read as runs of one unknown session.

Files are written only by `record()` (the suite's explicit record flag), atomically, with
stable key order, under an exclusive lock (`<profile>.json.lock`): the file is read again inside
the lock and this process's new runs are added to it, so concurrent recorders lose no run.
A corrupt file, a file for another profile or a config recorded with other
backend options fails loudly with the file, field and value.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .config import BaselineFileModel, validate
from .errors import BaselineError, ConfigError
from .fidelity import as_recorded, setting_changes
from .results import RunResult, atomic_write_text, dump_json

SCHEMA = 2
MAX_RUNS = 20  # recorded runs kept per metric


def git_revision(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def profile_file(directory: Path, profile: str) -> Path:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", profile):
        raise BaselineError(
            f"profile id {profile!r} is not a safe file name (lower-case letters, digits, '.', '_', '-')"
        )
    return Path(directory) / f"{profile}.json"


class BaselineStore:
    def __init__(self, directory: str | Path, profile: str):
        self.directory = Path(directory)
        self.profile = profile
        self.path = profile_file(self.directory, profile)
        self.data = self._load()
        self._changed: dict[str, set[str]] = {"configs": set(), "takeaways": set()}  # what save() writes
        self._pending: list[tuple[RunResult, str | None, str]] = []  # update()s save() applies to the file

    def _load(self) -> dict:
        if not self.path.exists():
            return {"schema": SCHEMA, "profile": self.profile, "configs": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaselineError(
                f"{self.path}: not valid JSON ({exc}); restore it from git or delete it and re-record with --qp-record"
            ) from exc
        if not isinstance(data, dict):
            raise BaselineError(f"{self.path}: top level must be an object, got {type(data).__name__}")
        if data.get("schema") not in (1, SCHEMA):
            raise BaselineError(
                f"{self.path}: field 'schema' is {data.get('schema')!r}, this quantperf reads schemas 1 and {SCHEMA}"
            )
        if data.get("profile") != self.profile:
            raise BaselineError(
                f"{self.path}: field 'profile' is {data.get('profile')!r} "
                f"but this file is for profile {self.profile!r}; "
                "baselines never cross profiles: fix the field or re-record on the right hardware"
            )
        try:
            validate(BaselineFileModel, data, self.path)
        except ConfigError as exc:
            raise BaselineError(f"{exc}; restore the file from git or re-record it") from None
        if data["schema"] == 1:
            data = _upgrade_schema_1(data)
        return data

    def other_profiles(self) -> list[str]:
        """Profiles that have baselines in the directory (reported when this one has none)."""
        return sorted(p.stem for p in self.directory.glob("*.json") if p.stem != self.profile and p.stem != "takeaways")

    def entry(self, config_id: str) -> dict | None:
        return self.data["configs"].get(config_id)

    def check_identity(self, result: RunResult, config_id: str | None = None) -> None:
        """A configuration recorded with other backend options is not comparable: fail loudly."""
        cid = config_id or result.spec.id
        entry = self.entry(cid)
        if entry is None:
            return
        recorded = entry.get("backend_identity", {})
        now = json.loads(json.dumps(result.backend_identity))
        if recorded != now:
            raise BaselineError(
                f"{self.path}: configs.{cid}.backend_identity is {recorded} but the backend now runs with {now}; "
                "the figures are not comparable: re-record with --qp-record"
            )

    def method_change(self, result: RunResult, config_id: str | None = None) -> str | None:
        """Kernel mode: why this result's figures cannot be gated against the baseline's when they
        were timed otherwise (None: the same methods, or the baseline did not record them). On CUDA
        an ONNX Runtime projection is `host-bound` when its calls could not be queued ahead of the
        GPU; that can change with a library upgrade, and such a figure is not a GPU time."""
        recorded = (self.entry(config_id or result.spec.id) or {}).get("kernel_methods")
        now = result.timing_methods
        if not recorded or not now or recorded == now:
            return None
        return (f"{self.path}: configs.{config_id or result.spec.id}.kernel_methods is {recorded} but this run's "
                f"figures were timed as {now}: kernel figures are never compared across timing methods; "
                "see the result's per-module table for which changed, re-record with --qp-record if it is expected")

    def version_changes(self, result: RunResult, config_id: str | None = None) -> dict[str, tuple]:
        """Library versions that differ between the baseline and this result (the upgrade case)."""
        old = (self.entry(config_id or result.spec.id) or {}).get("packages", {})
        new = {k: v for k, v in (result.environment or {}).get("packages", {}).items() if v}
        return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}

    def runtime(self, config_id: str) -> dict | None:
        """The runtime identity the configuration's baseline was recorded with (quantperf.fidelity);
        None for a baseline recorded before it was kept."""
        return (self.entry(config_id) or {}).get("runtime") or None

    def runs(self, config_id: str, metric: str) -> list[dict]:
        """The recorded runs of one metric of one configuration (oldest first)."""
        return list(((self.entry(config_id) or {}).get("metrics", {}).get(metric) or {}).get("runs", []))

    def update(self, result: RunResult, revision: str | None, config_id: str | None = None) -> list[str]:
        """Add one run of a configuration -- all its metrics at once, so an interrupted recording
        never leaves a configuration half-updated -- to the in-memory data; returns human lines of
        what changed. A run with other backend options, another version of a library installed on
        both sides, kernel figures timed otherwise (`kernel_methods`), or other runtime settings
        (`runtime`, quantperf.fidelity: attention, KV cache, Hub kernels, TF32), starts the record anew.
        A library installed on one side only does not: the run of a torch backend is the same
        whether or not onnxruntime-gpu was installed beside it (a backend that needs a library
        cannot run without it, and its identity names what it used). save() applies the same
        update again to the file as it is then, so runs another process recorded meanwhile stay."""
        cid = config_id or result.spec.id
        old, metrics = self._apply(result, revision, cid)
        self._pending.append((result, revision, cid))
        lines = []
        for name in result.metrics:
            m = metrics[name]
            before = (old or {}).get("metrics", {}).get(name, {}).get("median")
            runs = f" ({len(m['runs'])} runs)" if len(m["runs"]) > 1 else ""
            if before is None:
                lines.append(f"{cid} {name}: new {m['median']:.4g}{runs}")
            elif before != m["median"]:
                lines.append(f"{cid} {name}: {before:.4g} -> {m['median']:.4g}{runs}")
        return lines

    def _apply(self, result: RunResult, revision: str | None, cid: str) -> tuple[dict | None, dict]:
        """update()'s change to `self.data`: (the entry before, the metrics now)."""
        old = self.entry(cid)
        packages = {k: v for k, v in (result.environment or {}).get("packages", {}).items() if v}
        recorded = (old or {}).get("packages", {})
        same_setup = bool(old) and old.get("backend_identity") == json.loads(json.dumps(result.backend_identity)) \
            and all(recorded[k] == packages[k] for k in recorded.keys() & packages.keys()) \
            and old.get("kernel_methods", result.timing_methods) == result.timing_methods \
            and not setting_changes(as_recorded(old.get("runtime")), result.runtime)
        run = (result.environment or {}).get("run") or {}
        who = {"run_id": run.get("run_id"), "host": run.get("host"), "boot_id": run.get("boot_id"),
               "started_at": run.get("started_at") or result.timestamp}
        metrics = {}
        for name, m in result.metrics.items():
            s = m.summary
            runs = self.runs(cid, name) if same_setup else []
            runs = [r for r in runs if not (who["run_id"] and r.get("run_id") == who["run_id"])]  # re-record: replace
            runs = (runs + [{"value": round(s.median, 6), **who}])[-MAX_RUNS:]
            metrics[name] = {"samples": [round(x, 6) for x in m.samples], "median": round(s.median, 6),
                             "cv": round(s.cv, 6), "unit": m.unit, "higher_is_better": m.higher_is_better,
                             "kind": m.kind, "runs": runs, **({"stderr": m.stderr} if m.stderr is not None else {})}
        if same_setup:
            for name, kept in old.get("metrics", {}).items():
                metrics.setdefault(name, kept)
        self.data["configs"][cid] = {
            "recorded_at": result.timestamp,
            "git_revision": revision,
            "packages": packages,
            "gpu": ((result.environment or {}).get("gpu") or {}).get("name"),
            "backend_identity": result.backend_identity,
            **({"kernel_methods": result.timing_methods} if result.timing_methods else {}),
            **({"runtime": json.loads(json.dumps(result.runtime))} if result.runtime else {}),
            "spec": result.spec.to_dict(),
            "metrics": metrics,
        }
        return old, metrics

    def takeaway(self, claim_id: str) -> dict | None:
        """The verdict recorded for a claim on this profile (None: never recorded here)."""
        return self.data.get("takeaways", {}).get(claim_id)

    def record_takeaway(self, claim_id: str, verdict: str, ratio: float | None, ci: list, packages: dict,
                        recorded_at: str | None) -> str:
        takeaways = self.data.setdefault("takeaways", {})
        self._changed["takeaways"].add(claim_id)
        published = (takeaways.get(claim_id) or {}).get("published")
        takeaways[claim_id] = {
            "verdict": verdict, "ratio": ratio, "ci": ci, "packages": packages, "recorded_at": recorded_at}
        if published:  # a published profile's verdict is replaced by the measured one, its source kept
            takeaways[claim_id]["published"] = published
        return f"takeaway {claim_id}: {verdict}" + (
            "" if ratio is None else f" ({ratio:.3g} [{ci[0]:.3g}, {ci[1]:.3g}])"
        )

    def save(self) -> None:
        """Write what this store recorded into the file as it is now, under an exclusive lock
        (`<profile>.json.lock` beside it): the file is read again inside the lock, each run
        recorded since the last save is added to it as update() added it (so several processes
        recording into one profile at once -- pytest-xdist workers, two sessions -- each keep
        every run, theirs and the others'), each recorded takeaway replaces its claim's, and the
        result replaces the file atomically (temp file + rename).

        A write that fails (read-only file or directory, disk full) is one StoreWriteError naming
        the file, the OS error and what to do; the file keeps its previous contents and this
        store's unsaved runs are dropped (the caller reports the configuration as not recorded)."""
        import fcntl

        from .results import write_error

        pending, changed = self._pending, self._changed
        self._pending, self._changed = [], {"configs": set(), "takeaways": set()}
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "a")
        except OSError as exc:
            raise write_error(self.path, exc, "baseline file") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            mine = self.data
            self.data = self._load()
            for result, revision, cid in pending:
                self._apply(result, revision, cid)
            for key in changed["takeaways"]:
                self.data.setdefault("takeaways", {})[key] = mine["takeaways"][key]
            for key, value in mine.items():  # anything else (profile, provenance) as this store has it
                if key not in ("configs", "takeaways", "schema"):
                    self.data[key] = value
            self.data["schema"] = SCHEMA
            try:
                atomic_write_text(self.path, dump_json(self.data), "baseline file")
            except BaseException:
                self.data = mine  # what this store had read and recorded; the unsaved runs are not pending any more
                raise


def _upgrade_schema_1(data: dict) -> dict:
    """Schema 1 kept `run_medians` without saying who measured them: read them as runs of one
    session named after the recording date (the honest reading: nothing separates them)."""
    data = json.loads(json.dumps(data))
    for cid, entry in data["configs"].items():
        day = (entry.get("recorded_at") or "unknown")[:10]
        for m in entry["metrics"].values():
            medians = m.pop("run_medians", None) or [m["median"]]
            m["runs"] = [{"value": v, "run_id": f"schema1-{i}", "host": None, "boot_id": f"schema1-{day}",
                          "started_at": None} for i, v in enumerate(medians)]
    data["schema"] = SCHEMA
    return data
