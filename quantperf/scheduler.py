"""The scheduler: the only place that opens sides (prepare, load, warm up), interleaves their
rounds (ABBA) and turns what workers return into results. The suite, the takeaways, the
noise experiment, quality and upgrade checks all go through it.

    >>> from quantperf import RunSpec, Workload, measure
    >>> r = measure(RunSpec("synthetic:llama-1b", "bnb-int8", device="cuda",
    ...                     workload=Workload(batch_size=1, prompt_tokens=128, new_tokens=64)))
    >>> r.metrics["decode_tokens_per_s"].summary.median
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from . import phases as P
from . import progress
from .errors import QuantperfError
from .results import Metric, RunResult
from .spec import RunSpec
from .starting import (
    Starting,
    identity_of,
    known_unavailable,
    remember_unavailable,
    start_ahead,
    take_ahead,
    unavailable,
    wait_ahead,
)
from .stats import interleaved_order
from .status import Status
from .trackers import MIB
from .workers import is_oom, open_worker


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def not_measured(spec: RunSpec, status: str, reason: str, identity: dict | None, environment: dict,
                 profile: str | None) -> RunResult:
    return RunResult(spec=spec, status=status, reason=reason, backend_identity=identity or {},
                     environment=environment, profile=profile, timestamp=now())


@dataclass
class Side:
    """One configuration loaded in a worker, warmed up and ready for rounds (or why not)."""

    spec: RunSpec
    worker: Any = None
    info: dict = field(default_factory=dict)  # what load() returned
    timings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)  # the worker's own (its interpreter's versions)
    failed: RunResult | None = None
    phases: dict = field(default_factory=dict)  # wall seconds per phase (quantperf.phases), this side's

    @property
    def ok(self) -> bool:
        return self.failed is None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


_PREPARERS: dict[str, Any] = {}  # long-lived preparing processes, by interpreter, environment and options


def prepare_in_process(spec: RunSpec, model_options: dict | None = None, python: str | None = None,
                       env: dict | None = None, keep: bool = False) -> dict:
    """Prepare `spec` (build its checkpoint and exports if missing) in a preparing process that
    serves configuration after configuration, so each one costs no interpreter start and imports
    (about 10 s on a GPU host) when everything is cached. A process that built something (its
    memory is the build's), opened a CUDA context (an FP8 backend asks the card its compute
    capability; an idle context would sit beside every measurement) or failed is closed: the next
    one is fresh.
    Never the measuring process: that one is always new and only reads the cache. A preparer
    serves only while this process's environment is the one it was started with (a changed
    QUANTPERF_CACHE, say, means another cache): else it is closed and a new one started.
    `keep`: the preparer stays after a build or a CUDA context too (a caller preparing many
    configurations before anything is measured, which then calls close_preparers)."""
    import hashlib
    import json

    if nothing_to_prepare(spec, env):
        return {"built": False, "prepare_s": 0.0}
    # (pytest renames PYTEST_CURRENT_TEST for every test: not a change of environment that matters)
    environ = hashlib.sha256(json.dumps(sorted((k, v) for k, v in os.environ.items()
                                               if k != "PYTEST_CURRENT_TEST")).encode()).hexdigest()
    key = json.dumps([model_options or {}, python, sorted((env or {}).items()), environ], sort_keys=True, default=str)
    for stale in [k for k in _PREPARERS if json.loads(k)[3] != environ]:
        _PREPARERS.pop(stale).close()
    worker = _PREPARERS.get(key)
    if worker is None:
        worker = _PREPARERS[key] = open_worker(spec, "process", dict(model_options or {}), python, env)
    try:
        prepared = worker.prepare_for(spec=spec.to_dict())
    except BaseException:
        _PREPARERS.pop(key, None)
        worker.close()
        raise
    if not keep and (prepared.get("built") or prepared.get("cuda_context")):  # a build's memory, or a CUDA context
        _PREPARERS.pop(key, None)
        worker.close()
    return prepared


def nothing_to_prepare(spec: RunSpec, env: dict | None = None) -> bool:
    """A CUDA configuration of a synthetic model whose checkpoint is cached, on a backend that
    builds nothing ahead (it quantizes at load): no preparing process is started for it, which saves
    that process's start and imports (about 10 s on a GPU host, beside the measuring processes'
    own). A damaged checkpoint is still found, by the load. On a CUDA host a worker builds
    synthetic weights with the CUDA generator, so the cached checkpoint is the CUDA one; an overlay
    with its own cache (QUANTPERF_CACHE in `env`) is always prepared."""
    from .backends import get_backend
    from .backends.base import Backend
    from .models import CACHE_ENV, synthetic_cached, synthetic_target

    if spec.device != "cuda" or not spec.model.startswith("synthetic:") or CACHE_ENV in (env or {}):
        return False
    try:
        backend = get_backend(spec.backend, dict(spec.backend_options))
    except QuantperfError:
        return False
    if type(backend).prepare is not Backend.prepare:  # it exports or converts ahead (ONNX Runtime)
        return False
    return synthetic_cached(synthetic_target(spec.model.split(":", 1)[1], "cuda"))


def close_preparers() -> None:
    """End the preparing processes (at exit, and whenever a caller wants them gone)."""
    while _PREPARERS:
        _PREPARERS.popitem()[1].close()


atexit.register(close_preparers)


def open_side(spec: RunSpec, *, isolation: str = "process", model_options: dict | None = None,
              python: str | None = None, env: dict | None = None, environment: dict | None = None,
              profile: str | None = None, warm: bool = True, worker: Any = None, prepare: bool = True,
              keep_worker: bool = False) -> Side:
    """Prepare, load and (with `warm`) warm up `spec` in a worker. Preparing (a checkpoint build,
    an export, or only finding them cached) inflates a process's peak memory, so with process
    isolation the side is always loaded in a fresh process that only reads the cached result;
    the preparing is done by a long-lived process (`prepare_in_process`).

    `worker`: a fresh process worker started ahead (`open_worker`, its imports perhaps done) to
    load this side in, or a `Starting` one, taken once the configuration is prepared;
    `prepare=False`: the configuration was prepared already (by this caller, for an earlier side
    of it); `keep_worker`: a configuration that loads with a status other than ok
    (unavailable, mode unsupported) leaves its worker open, for the next configuration of a shared
    process pair (quantperf.experiments.shared). Each phase's wall seconds go to `side.phases`."""
    from .envinfo import environment as parent_environment

    parent = environment or parent_environment()
    side = Side(spec, None)
    starting = worker if isinstance(worker, Starting) else None

    def unavailable_side(reason: str, environment: dict) -> Side:
        """No process loads this configuration: its backend is unavailable here (`reason`)."""
        if starting is not None:
            starting.close()
        elif worker is not None and not keep_worker:
            worker.close()
        side.worker = worker if keep_worker and starting is None else None
        side.environment = dict(environment)
        side.info = {"status": Status.UNAVAILABLE, "reason": reason, "identity": identity_of(spec)}
        side.failed = not_measured(spec, Status.UNAVAILABLE, reason, side.info["identity"], side.environment, profile)
        return side

    known = unavailable(spec, python, env)
    if known is not None:  # found unavailable by an earlier configuration's worker: no process for this one
        return unavailable_side(*known)
    name = f"{spec.model_label} {spec.backend} {spec.mode}"
    try:
        with progress.step(f"{name}: prepare (one-time builds: checkpoint, export, quantization)"), \
                P.timed(side.phases, "prepare"):
            if isolation == "process":
                # the measuring process never prepares: whether or not this run had to build something
                # (a checkpoint, an export), its peak memory is that of load + rounds alone, so a first
                # run on a fresh machine and every later run measure the same process
                prepared = prepare_in_process(spec, model_options, python, env) if prepare else {"built": False}
            else:
                side.worker = open_worker(spec, isolation, dict(model_options or {}), python, env)
                prepared = side.worker.prepare() if prepare else {"built": False}
        if isolation == "process" and prepared.get("unavailable") and not (python or env):
            # the preparing process (this interpreter and environment) found the backend unavailable
            remember_unavailable(spec, python, env, prepared["unavailable"], parent)
            return unavailable_side(prepared["unavailable"], parent)
        if isolation == "process":
            if starting is not None:
                worker = starting.take(side.phases)
                side.timings["overlapped"] = {k: round(v, 3) for k, v in starting.hidden.items()}
            side.worker = worker
            if side.worker is None:
                with P.timed(side.phases, "start"):
                    side.worker = open_worker(spec, isolation, dict(model_options or {}), python, env)
            if prepared["built"]:
                side.timings["prepared_first_s"] = prepared["prepare_s"]
        worker = side.worker
        with P.timed(side.phases, "imports"):  # nothing left to do in a worker started ahead that imported
            worker.imports()
            # the worker reports its own interpreter's environment; the run is the parent's
            side.environment = (worker.environment() if (python or env) else dict(parent)) | {"run": parent.get("run")}
        with progress.step(f"{name}: load"), P.timed(side.phases, "load"):
            info = worker.load()
        if info["status"] == Status.OK and warm:
            with progress.step(f"{name}: warm-up" + (" (compile)" if spec.mode == "graph" else "")), \
                    P.timed(side.phases, "warmup"):
                wu = worker.warmup()
            if wu["status"] != Status.OK:
                info = {"status": wu["status"], "reason": wu["reason"], "identity": info["identity"]}
            else:
                side.timings.update({k: v for k, v in wu.items() if k != "status"})
        side.info = info
        if info["status"] == Status.UNAVAILABLE and info.get("scope") == "environment":
            remember_unavailable(spec, python, env, info["reason"], side.environment)
        if info["status"] != Status.OK:
            side.failed = not_measured(spec, info["status"], info["reason"], info.get("identity"), side.environment,
                                       profile)
            if not keep_worker:
                side.close()
    except Exception as exc:
        side.close()
        if starting is not None:  # not taken: prepare failed before it was needed
            starting.close()
        reason = (f"{spec.backend}: out of memory running {spec.model} on {spec.device}" if is_oom(exc)
                  else f"{type(exc).__name__}: {exc}")
        side.failed = not_measured(spec, Status.ERROR, reason, side.info.get("identity"), side.environment or parent,
                                   profile)
    return side


def warm_group(sides: list[Side], profile: str | None) -> None:
    """Warm up sides loaded each in its own process (open_side(warm=False)): an interleaved group's,
    an A/B pair's. Their warm-ups' untimed work (worker.build: kernel mode's layer copies and inputs)
    is built in all at once, then the warm-ups run all at once where none times anything (generation's
    rounds, thrown away), else in order (kernel mode times its copy bandwidth and replays); on a CPU
    all in order (its cores are shared). Side-by-side seconds are shared out. A failing side is closed."""
    from concurrent.futures import ThreadPoolExecutor

    def each(what: str, together: bool, todo: list[Side]) -> dict:
        def one(side: Side) -> dict:
            try:
                return getattr(side.worker, what)()
            except Exception as exc:  # noqa: BLE001 -- this side's failure
                doing = "building its warm-up" if what == "build" else "in its warm-up"
                return {"status": Status.ERROR, "reason": f"crashed {doing}: {type(exc).__name__}: {exc}"}

        t0 = P.clock()
        if together and len(todo) > 1:
            with ThreadPoolExecutor(len(todo), thread_name_prefix="quantperf-warm") as pool:
                out = dict(zip((id(s) for s in todo), pool.map(one, todo)))
            for side in todo:
                P.add(side.phases, "warmup", (P.clock() - t0) / len(todo))
            return out
        out = {}
        for side in todo:
            with progress.step(f"{side.spec.model_label} {side.spec.backend} {side.spec.mode}: warm-up"), \
                    P.timed(side.phases, "warmup"):
                out[id(side)] = one(side)
        return out

    def keep(todo: list[Side], got: dict) -> list[Side]:
        ok = []
        for side in todo:
            out = got[id(side)]
            if out["status"] == Status.OK:
                side.timings.update({k: v for k, v in out.items() if k not in ("status", "warmup_times")})
                ok.append(side)
                continue
            side.info = {"status": out["status"], "reason": out.get("reason"), "identity": side.info.get("identity")}
            side.failed = not_measured(side.spec, out["status"], out.get("reason") or "", side.info["identity"],
                                       side.environment, profile)
            side.close()
        return ok

    gpu = all(s.spec.device == "cuda" for s in sides)  # on a CPU the processes would share its cores
    with progress.step(f"{' | '.join(s.spec.backend for s in sides)}: build" + (", side by side" if gpu else "")):
        built = each("build", gpu, sides)
    live = keep(sides, built)
    together = gpu and not any(built[id(s)].get("warmup_times") for s in live)
    with progress.step(f"{' | '.join(s.spec.backend for s in live)}: warm-up, side by side") if together \
            else contextlib.nullcontext():
        keep(live, each("warmup", together, live))


def interleave_rounds(runners: dict[str, Callable[[], dict]], rounds: int) -> dict[str, list[dict]]:
    """Run `rounds` rounds of each runner in ABBA order (round-robin with alternating direction
    for more than two), so drift hits every side alike. The one interleaving loop of quantperf."""
    collected: dict[str, list[dict]] = {name: [] for name in runners}
    for name in interleaved_order(list(runners), rounds):
        collected[name].append(runners[name]())
    return collected


def build_result(side: Side, rounds: list[dict], memory: dict, profile: str | None,
                 runtime: dict | None = None) -> RunResult:
    """Turn one side's raw rounds and memory into a RunResult: the scenario's metrics and
    figures, memory metrics, validity (throttled and contended rounds)."""
    from .scenarios import scenario_for

    spec, loaded = side.spec, side.info
    scenario = scenario_for(spec.mode)
    metrics = scenario.metrics(spec, rounds)
    if loaded["weight_bytes"] is not None:  # None: what was loaded is not the model's footprint (ORT kernel mode)
        metrics["weight_mib"] = Metric.of("weight_mib", [loaded["weight_bytes"] / MIB])
    metrics["host_peak_rss_mib"] = Metric.of("host_peak_rss_mib", [memory["host_peak_rss_mib"]])
    if spec.device == "cuda":
        metrics["peak_allocated_mib"] = Metric.of("peak_allocated_mib", [memory["peak_allocated_mib"]])
        if memory.get("nvml_process_mib") is not None:
            metrics["nvml_process_mib"] = Metric.of("nvml_process_mib", [memory["nvml_process_mib"]])
    figures = scenario.figures(spec, loaded, rounds, metrics, side.environment)
    throttled = [i for i, r in enumerate(rounds) if r.get("throttled")]
    validity = {
        "valid": not throttled,
        "throttled_rounds": throttled,
        "retried_rounds": [i for i, r in enumerate(rounds) if r.get("retried_after_throttle")],
        "contended_rounds": [i for i, r in enumerate(rounds) if (r.get("host") or {}).get("contended")],
        "invalid_rounds": {i: r["invalid"] for i, r in enumerate(rounds) if r.get("invalid")},
        "host_load": [r.get("host") or {} for r in rounds],
        "sm_clock_mhz": [r.get("sm_clock_mhz") for r in rounds],
        "temperature_c": [r.get("temperature_c") for r in rounds],
        "other_gpu_processes": memory.get("other_gpu_processes", []),
    }
    per_round = [sorted(r["decode_ms"])[len(r["decode_ms"]) // 2] for r in rounds if "decode_ms" in r]
    return RunResult(
        spec=spec, status=Status.OK, profile=profile, backend_identity=loaded["identity"], metrics=metrics,
        memory={"after_load": loaded["load_memory"], "after_rounds": memory}, roofline=figures.get("roofline", {}),
        figures={k: v for k, v in figures.items() if k != "roofline"},
        validity=validity, arch=loaded["arch"] | {"source": loaded.get("source_meta", {})},
        execution=loaded.get("execution", {}), environment=side.environment,
        timings={"load_ms": loaded["load_ms"], **side.timings, "per_round_decode_ms_median": per_round,
                 "phases": P.rounded(side.phases)},
        injected_delay_ms=loaded.get("injected_delay_ms", 0.0), timestamp=now(), runtime=runtime or {},
    )


def measure_many(specs: list[RunSpec], *, isolation: str = "process", interleave: bool = False,
                 model_options: dict | None = None, environment: dict | None = None, profile: str | None = None,
                 more_rounds: Callable[[dict], bool] | None = None, max_rounds: int | None = None,
                 python: str | None = None, env: dict | None = None,
                 ahead: list[RunSpec] | None = None) -> list[RunResult]:
    """Measure configurations. With `interleave`, all are loaded at once and their rounds
    alternate in ABBA order (what A/B claims need).

    `ahead`: the configurations the caller measures next (process isolation): their fresh
    processes are spawned and do their imports (no CUDA context) while these load and warm up,
    and are waited for before the first measured round, so they sit idle while anything is timed;
    the next measure_many call takes them.

    Adaptive rounds: with `more_rounds(samples_by_config_id) -> bool` and `max_rounds`, an
    interleaved comparison that is still undecided gets more ABBA blocks of 2 rounds per side,
    up to `max_rounds` per side; results record how many were added (`adaptive_extra_rounds`),
    so figures extended adaptively are never gated as if they had a fixed size."""
    from .envinfo import environment as env_fn
    from .envinfo import profile_id
    from .scenarios import scenario_for

    environment = environment or env_fn()
    profile = profile or profile_id("cuda" if any(s.device == "cuda" for s in specs) else "cpu")
    results: dict[str, RunResult] = {}
    sides: dict[str, Side] = {}

    def finish(side: Side, rounds: list[dict]) -> None:
        with P.timed(side.phases, "readback"):
            memory, runtime = side.worker.memory(), side.worker.runtime()
        results[side.spec.id] = build_result(side, rounds, memory, profile, runtime)
        side.close()

    # with process isolation each configuration's fresh process is spawned and does its imports
    # while the configuration is prepared (and, interleaved, while the group's other sides open):
    # nothing is measured until every side is open, so the overlap costs no accuracy
    starting: dict[str, Starting] = {}

    def start(spec: RunSpec):
        if isolation != "process" or known_unavailable(spec, python, env):
            return None
        starting[spec.id] = take_ahead(spec, model_options, python, env) or Starting(spec, model_options, python, env)
        return starting[spec.id]

    mine = {s.id for s in specs}
    later = [s for s in ahead or () if s.id not in mine and isolation == "process"
             and not known_unavailable(s, python, env)]

    def start_later() -> None:
        for spec in later:
            start_ahead(spec, model_options, python, env)

    def later_idle(on: list[Side]) -> None:
        """Nothing of the next configurations' processes may run while a round is timed. The wait
        (their imports outlasting these loads and warm-ups) is a start: shared out over `on`."""
        t0 = P.clock()
        for spec in later:
            wait_ahead(spec, model_options, python, env)
        for side in on:
            P.add(side.phases, "start", (P.clock() - t0) / len(on))

    try:
        if interleave:
            for spec in specs:
                start(spec)
            start_later()
            for spec in specs:  # loaded one after the other, then warmed up as a group (warm_group)
                side = open_side(spec, isolation=isolation, model_options=model_options, python=python, env=env,
                                 environment=environment, profile=profile, worker=starting.get(spec.id),
                                 warm=isolation != "process")
                if side.ok:
                    sides[spec.id] = side
                else:
                    results[spec.id] = side.failed
            if isolation == "process" and sides:
                warm_group(list(sides.values()), profile)
                for sid in [sid for sid, side in sides.items() if not side.ok]:
                    results[sid] = sides.pop(sid).failed
            live = list(sides.values())
            later_idle(live)
            n = max((s.spec.workload.rounds for s in live), default=0)
            runners = {s.spec.id: (lambda s=s: s.worker.rounds(n=1)[0]) for s in live}
            t0 = P.clock()
            with progress.step(f"{' | '.join(s.spec.backend for s in live)}: {n} interleaved rounds each"):
                collected = interleave_rounds(runners, n)
            extra = 0
            while more_rounds and max_rounds and n + extra < max_rounds and len(live) > 1:
                samples = {s.spec.id: scenario_for(s.spec.mode).metrics(s.spec, collected[s.spec.id])
                           ["decode_tokens_per_s"].samples for s in live}
                if not more_rounds(samples):
                    break
                for sid, more in interleave_rounds(runners, 2).items():
                    collected[sid].extend(more)
                extra += 2
            for side in live:  # the interleaved rounds' wall time, shared equally: the sum stays the wall
                P.add(side.phases, "measure", (P.clock() - t0) / len(live))
                side.timings["adaptive_extra_rounds"] = extra
                side.timings["interleaved_with"] = [s.spec.id for s in live if s is not side]
                finish(side, collected[side.spec.id])
        else:
            for i, spec in enumerate(specs):
                worker = start(spec)
                if i == 0:
                    start_later()
                side = open_side(spec, isolation=isolation, model_options=model_options, python=python, env=env,
                                 environment=environment, profile=profile, worker=worker)
                if not side.ok:
                    results[spec.id] = side.failed
                    continue
                sides[spec.id] = side
                later_idle([side])
                with progress.step(f"{spec.model_label} {spec.backend} {spec.mode}: {spec.workload.rounds} rounds"), \
                        P.timed(side.phases, "measure"):
                    rounds = side.worker.rounds(n=spec.workload.rounds)
                finish(side, rounds)
    except Exception as exc:
        for spec in specs:
            if spec.id not in results:
                reason = (f"{spec.backend}: out of memory running {spec.model} on {spec.device}" if is_oom(exc)
                          else f"{type(exc).__name__}: {exc}")
                results[spec.id] = not_measured(spec, Status.ERROR, reason,
                                                sides.get(spec.id, Side(spec)).info.get("identity"),
                                                environment, profile)
    finally:
        for side in sides.values():
            side.close()
        for one in starting.values():  # started, never taken (an earlier side failed the group)
            one.close()
    return [results[s.id] for s in specs]


def measure(spec: RunSpec, **kwargs) -> RunResult:
    """Measure one configuration (in a fresh process unless isolation='inprocess')."""
    return measure_many([spec], **kwargs)[0]


QUALITY_AHEAD = 2  # quality processes started (spawn, imports) ahead of their turn


def quality_reference(spec: RunSpec) -> RunSpec:
    """The configuration whose logits `spec`'s quality is measured against (its device's reference
    backend, eager, on the same model)."""
    from .backends import REFERENCE_BACKEND

    return replace(spec, backend=REFERENCE_BACKEND[spec.device], mode="eager", backend_options=())


def quality_first(specs: list[RunSpec]) -> list[RunSpec]:
    """The processes a quality pass over `specs` opens first: its reference and the next
    QUALITY_AHEAD configurations (what a caller may start ahead: `measure_many(ahead=...)`)."""
    if not specs:
        return []
    ref = quality_reference(specs[0])
    group = [s for s in specs if (s.model, s.device) == (ref.model, ref.device) and s.backend != ref.backend]
    return [ref, *group[:QUALITY_AHEAD]]


def measure_quality(specs: list[RunSpec], *, isolation: str = "process", params: dict | None = None,
                    environment: dict | None = None, profile: str | None = None) -> list[RunResult]:
    """Quality of each spec against its device's reference backend on the same model: one
    reference pass per model and device, then one compare pass per backend, each in its own
    worker. Results hold ppl, ln_ppl_ratio, mean_kld, top1_agreement and rms_dp (with SEs)."""
    from .envinfo import environment as env_fn
    from .envinfo import profile_id
    from .scenarios.quality import QualityScenario

    params = dict(params or {})
    environment = environment or env_fn()
    out: list[RunResult] = []
    by_ref: dict[tuple, list[RunSpec]] = {}
    for s in specs:
        by_ref.setdefault((s.model, s.device), []).append(s)

    def result(side: Side, stats: dict, quality_s: float = 0.0) -> RunResult:
        stats = dict(stats)
        gens = stats.pop("generations", [])
        with P.timed(side.phases, "readback"):
            runtime = side.worker.runtime() if side.worker is not None else {}
        phases = P.add(dict(side.phases), "quality", quality_s)
        for p, v in pending.items():  # the reference pass's cost goes with the first result it served
            P.add(phases, p, v)
        pending.clear()
        phases = P.rounded(phases)
        return RunResult(spec=side.spec, status=Status.OK, profile=prof, backend_identity=side.info["identity"],
                         metrics=QualityScenario.metrics(side.spec, [stats]), quality=stats, generations=gens,
                         arch=side.info["arch"], environment=side.environment, timestamp=now(),
                         runtime=runtime, timings={"phases": phases, **{k: v for k, v in side.timings.items()
                                                                       if k == "overlapped"}})

    for (model, device), group in by_ref.items():
        prof = profile or profile_id(device)
        ref_spec = quality_reference(group[0])
        fd, ref_file = tempfile.mkstemp(prefix="quantperf-ref-", suffix=".npy")
        os.close(fd)
        # no figure of a quality pass is a time: the next configurations' fresh processes are spawned
        # and do their imports while the one before computes its logits (QUALITY_AHEAD of them: on an
        # H100 host a process's imports took 9 s, a load and its logits 5 s)
        todo = [s for s in group if s.backend != ref_spec.backend]
        starting: dict[str, Starting] = {}

        def start_next(after: int) -> None:
            for nxt in todo[after:after + QUALITY_AHEAD] if isolation == "process" else ():
                if nxt.id not in starting:  # started ahead by the caller's last measurement, or now
                    starting[nxt.id] = take_ahead(nxt, None, None, None) or Starting(nxt)

        try:
            ref = open_side(ref_spec, isolation=isolation, environment=environment, profile=prof, warm=False,
                            worker=(take_ahead(ref_spec, None, None, None) or Starting(ref_spec))
                            if isolation == "process" else None)
            start_next(0)
            if not ref.ok:
                raise QuantperfError(f"reference backend {ref_spec.backend} failed: {ref.failed.reason}")
            try:
                with progress.step(f"{ref_spec.model_label} {ref_spec.backend}: reference logits on the corpus"), \
                        P.timed(ref.phases, "quality"):
                    ref_stats = ref.worker.quality(params=params | {"role": "reference", "file": ref_file})
            finally:
                ref.close()
            pending = dict(ref.phases)
            for spec in group:
                if spec.backend == ref_spec.backend:
                    # the reference against itself: zero divergence by definition, no second pass
                    stats = {"tokens": ref_stats["tokens"], "ppl_ref": ref_stats["ppl"], "ppl": ref_stats["ppl"],
                             "ln_ppl_ratio": 0.0, "ln_ppl_ratio_se": 0.0, "mean_kld": 0.0, "mean_kld_se": 0.0,
                             "kld_p999": 0.0, "kld_p99": 0.0, "kld_p90": 0.0, "kld_median": 0.0,
                             "top1_agreement": 1.0, "top1_agreement_se": 0.0, "rms_dp": 0.0, "rms_dp_se": 0.0,
                             "reference_backend": ref_spec.backend, "windows": ref_stats["windows"],
                             "context": ref_stats["context"], "generations": ref_stats.get("generations", [])}
                    out.append(result(replace(ref, spec=spec, phases={}), stats))
                    continue
                side = open_side(spec, isolation=isolation, environment=environment, profile=prof, warm=False,
                                 worker=starting.get(spec.id))
                start_next(todo.index(spec) + 1)
                if not side.ok:
                    out.append(side.failed)
                    continue
                try:
                    t0 = P.clock()
                    with progress.step(f"{spec.model_label} {spec.backend}: logits against the reference"):
                        stats = side.worker.quality(params=params | {"role": "compare", "file": ref_file,
                                                                     "reference_backend": ref_spec.backend})
                    out.append(result(side, stats, P.clock() - t0))
                except Exception as exc:
                    out.append(not_measured(spec, Status.ERROR, f"{spec.backend}: {type(exc).__name__}: {exc}",
                                            side.info.get("identity"), environment, prof))
                finally:
                    side.close()
        finally:
            for one in starting.values():  # started, never taken (the reference failed)
                one.close()
            with contextlib.suppress(OSError):  # the reference logits' temp file
                os.unlink(ref_file)
    order = {s.id: i for i, s in enumerate(specs)}
    return sorted(out, key=lambda r: order[r.spec.id])
