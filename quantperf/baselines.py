"""Baselines: one human-diffable JSON file per hardware profile under `baselines/`.

    {"schema": 1, "profile": "nvidia-h100-80gb-hbm3",
     "configs": {"llama-1b-bnb-int8-cuda-bs1-eager": {
         "recorded_at": ..., "git_revision": ..., "packages": {...}, "backend_identity": {...},
         "metrics": {"decode_tokens_per_s": {"samples": [...], "median": ..., "cv": ..., ...}}}}}

Files are written only by `record()` (the suite's explicit record flag), atomically, with
stable key order. A corrupt file, a file for another profile or a config recorded with other
backend options fails loudly with the file, field and value.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .errors import BaselineError
from .results import RunResult, atomic_write_text, dump_json

SCHEMA = 1
MAX_RUNS = 10  # run medians kept per metric for the run-to-run spread


def git_revision(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def profile_file(directory: Path, profile: str) -> Path:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", profile):
        raise BaselineError(f"profile id {profile!r} is not a safe file name (lower-case letters, digits, '.', '_', '-')")
    return Path(directory) / f"{profile}.json"


class BaselineStore:
    def __init__(self, directory: str | Path, profile: str):
        self.directory = Path(directory)
        self.profile = profile
        self.path = profile_file(self.directory, profile)
        self.data = self._load()

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
        if data.get("schema") != SCHEMA:
            raise BaselineError(f"{self.path}: field 'schema' is {data.get('schema')!r}, this quantperf reads schema {SCHEMA}")
        if data.get("profile") != self.profile:
            raise BaselineError(
                f"{self.path}: field 'profile' is {data.get('profile')!r} but this file is for profile {self.profile!r}; "
                "baselines never cross profiles: fix the field or re-record on the right hardware"
            )
        configs = data.get("configs")
        if not isinstance(configs, dict):
            raise BaselineError(f"{self.path}: field 'configs' must be an object, got {type(configs).__name__}")
        for cid, entry in configs.items():
            metrics = entry.get("metrics") if isinstance(entry, dict) else None
            if not isinstance(metrics, dict):
                raise BaselineError(f"{self.path}: configs.{cid}.metrics is missing or not an object")
            for name, m in metrics.items():
                samples = m.get("samples") if isinstance(m, dict) else None
                if not isinstance(samples, list) or not samples or not all(isinstance(x, (int, float)) for x in samples):
                    raise BaselineError(
                        f"{self.path}: configs.{cid}.metrics.{name}.samples must be a non-empty list of numbers, got {samples!r}"
                    )
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

    def version_changes(self, result: RunResult, config_id: str | None = None) -> dict[str, tuple]:
        """Library versions that differ between the baseline and this result (the upgrade case)."""
        old = (self.entry(config_id or result.spec.id) or {}).get("packages", {})
        new = {k: v for k, v in (result.environment or {}).get("packages", {}).items() if v}
        return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}

    def update(self, result: RunResult, revision: str | None, config_id: str | None = None) -> list[str]:
        """Put a result into the in-memory data; returns human lines of what changed."""
        cid = config_id or result.spec.id
        old = self.entry(cid)
        packages = {k: v for k, v in (result.environment or {}).get("packages", {}).items() if v}
        # the same options and library versions: this run adds to the run-to-run record
        same_setup = bool(old) and old.get("backend_identity") == json.loads(json.dumps(result.backend_identity)) \
            and old.get("packages") == packages
        metrics = {}
        for name, m in result.metrics.items():
            s = m.summary
            runs = list((old or {}).get("metrics", {}).get(name, {}).get("run_medians", [])) if same_setup else []
            runs = (runs + [round(s.median, 6)])[-MAX_RUNS:]
            metrics[name] = {"samples": [round(x, 6) for x in m.samples], "median": round(s.median, 6),
                             "cv": round(s.cv, 6), "unit": m.unit, "higher_is_better": m.higher_is_better,
                             "kind": m.kind, "run_medians": runs,
                             **({"stderr": m.stderr} if m.stderr is not None else {})}
        # metric kinds recorded by the config's other tests (speed and memory share an entry)
        # stay as they are when this result does not carry them
        if same_setup:
            for name, kept in old.get("metrics", {}).items():
                metrics.setdefault(name, kept)
        self.data["configs"][cid] = {
            "recorded_at": result.timestamp,
            "git_revision": revision,
            "packages": packages,
            "gpu": ((result.environment or {}).get("gpu") or {}).get("name"),
            "backend_identity": result.backend_identity,
            "spec": result.spec.to_dict(),
            "metrics": metrics,
        }
        lines = []
        for name in result.metrics:
            m = metrics[name]
            before = (old or {}).get("metrics", {}).get(name, {}).get("median")
            runs = f" ({len(m['run_medians'])} runs)" if len(m["run_medians"]) > 1 else ""
            if before is None:
                lines.append(f"{cid} {name}: new {m['median']:.4g}{runs}")
            elif before != m["median"]:
                lines.append(f"{cid} {name}: {before:.4g} -> {m['median']:.4g}{runs}")
        return lines

    def save(self) -> None:
        atomic_write_text(self.path, dump_json(self.data))
