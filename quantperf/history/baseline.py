"""Baselines derived from the results store: a rolling window of recent sittings of a profile
becomes the data a baselines file holds (`baselines.py`'s schema 2), so the gate reads a derived
baseline as it reads a recorded one.

Per configuration and metric the runs are the window's run medians, each with who measured it
and when (value, run_id, host, boot_id, started_at), oldest first: the run-level gate separates
sessions by them, and the host-aware rule (`quantperf.gate.runlevel.host_scope`) picks this
host's. As with `--qp-record`, a configuration whose backend identity or kernel timing methods
changed, or whose runtime settings changed (quantperf.fidelity: attention, KV cache, Hub kernels,
matmul precision), starts anew from the sitting that changed them (figures timed otherwise are not
comparable); a package upgrade does not (that is what the gate is for). A configuration whose
gate outcome in its sitting was `regressed` is left out, so a regression does not become the
baseline by being stored.
"""

from __future__ import annotations

from ..fidelity import as_recorded, setting_changes
from ..status import Status
from .store import Sitting, sort_sittings

DEFAULT_WINDOW = 20  # sittings per host, as baselines.MAX_RUNS keeps 20 runs per metric
BASELINE_SCHEMA = 2


def window(sittings: list[Sitting], size: int = DEFAULT_WINDOW, source_branch: str | None = None) -> list[Sitting]:
    """The last `size` sittings of each host (oldest first), of `source_branch` when given."""
    chosen = [s for s in sort_sittings(sittings) if source_branch is None or s.source_branch == source_branch]
    by_host: dict[str, list[Sitting]] = {}
    for s in chosen:
        by_host.setdefault(s.host, []).append(s)
    kept = {id(s) for group in by_host.values() for s in group[-size:]} if size > 0 else set()
    return [s for s in chosen if id(s) in kept]


def _setup(cfg: dict) -> tuple:
    import json

    return json.dumps(cfg.get("backend_identity") or {}, sort_keys=True), tuple(cfg.get("timing_methods") or ())


def derive_baseline(sittings: list[Sitting], profile: str, size: int = DEFAULT_WINDOW,
                    source_branch: str | None = None) -> dict:
    """The baselines-file data of `profile` from its sittings' rolling window:
    {"schema": 2, "profile", "provenance": {...}, "configs": {key: entry}} where each entry holds
    recorded_at, git_revision, packages, gpu, backend_identity, kernel_methods, spec and
    metrics.<name> = {samples, median, cv, unit, higher_is_better, kind, runs: [{value, run_id, host,
    boot_id, started_at}]} (samples: the rounds of the latest sitting, as `update()` keeps them)."""
    chosen = window([s for s in sittings if s.profile == profile], size, source_branch)
    configs: dict[str, dict] = {}
    for s in chosen:
        for key, cfg in s.configs.items():
            if cfg.get("status") != Status.OK or cfg.get("outcome") == Status.REGRESSED or not cfg.get("metrics"):
                continue
            entry = configs.get(key)
            if entry is not None and (entry["_setup"] != _setup(cfg)
                                      or setting_changes(as_recorded(entry.get("runtime")), cfg.get("runtime") or {})):
                entry = None  # other backend options, timing methods or runtime settings: the record starts anew
            who = {"run_id": cfg.get("run_id") or s.run_id, "host": s.host, "boot_id": s.boot_id,
                   "started_at": cfg.get("started_at") or s.started_at}
            metrics = dict(entry["metrics"]) if entry else {}
            for name, m in cfg["metrics"].items():
                runs = list((metrics.get(name) or {}).get("runs", [])) + [{"value": round(m["median"], 6), **who}]
                metrics[name] = {"samples": [round(x, 6) for x in m.get("samples") or [m["median"]]],
                                 "median": round(m["median"], 6), "cv": round(m.get("cv") or 0.0, 6),
                                 "unit": m.get("unit", ""), "higher_is_better": m.get("higher_is_better", True),
                                 "kind": m.get("kind", "speed"), "runs": runs,
                                 **({"stderr": m["stderr"]} if m.get("stderr") is not None else {})}
            configs[key] = {
                "_setup": _setup(cfg), "recorded_at": s.started_at, "git_revision": s.git_revision,
                "packages": s.packages, "gpu": ((s.environment or {}).get("gpu") or {}).get("name"),
                "backend_identity": cfg.get("backend_identity") or {},
                **({"kernel_methods": cfg["timing_methods"]} if cfg.get("timing_methods") else {}),
                "spec": cfg.get("spec"), "metrics": metrics,
                **({"runtime": cfg["runtime"]} if cfg.get("runtime") else {})}
    for entry in configs.values():
        del entry["_setup"]
    return {"schema": BASELINE_SCHEMA, "profile": profile, "configs": configs,
            "provenance": {"derived_from_sittings": len(chosen), "hosts": sorted({s.host for s in chosen}),
                             "window_per_host": size, "source_branch": source_branch,
                             "first": chosen[0].started_at if chosen else None,
                             "last": chosen[-1].started_at if chosen else None}}


def apply_derived(store, history, size: int = DEFAULT_WINDOW, of_record: str | None = "main") -> str | None:
    """Put the baseline derived from the results store `history` into `store` (a
    baselines.BaselineStore, in memory only: the file is never written here): the configurations
    the store's window holds replace the file's; the file's others (a first sitting recorded with
    --qp-record) stay. Sittings of the branch `of_record` count, and those that name no branch.
    A corrupt or newer-schema sitting is a HistoryError naming its file. Returns the session note
    (None when the store holds no sitting of the profile)."""
    sittings = [s for s in history.read(store.profile, strict=True).sittings
                if of_record is None or s.source_branch in (of_record, None)]
    if not sittings:
        return None
    derived = derive_baseline(sittings, store.profile, size)
    store.data["configs"].update(derived["configs"])
    prov = derived["provenance"]
    store.derived = prov
    return (f"baseline of {store.profile}: {len(derived['configs'])} configuration(s) derived from "
            f"{prov['derived_from_sittings']} sitting(s) of the results store ({len(prov['hosts'])} host(s), the last "
            f"{size} of each{f', branch {of_record}' if of_record else ''}); the baselines file's other "
            "configurations kept")
