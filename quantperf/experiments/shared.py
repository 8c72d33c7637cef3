"""Shared process pairs (issue #28): one fresh pair of processes (side A, side B) measures every
configuration of a group in turn, instead of a fresh pair per configuration.

Why: in kernel mode a configuration's A/B is seconds of timing inside each process's tens of seconds
of interpreter start, imports and CUDA initialisation (H100, llama-1b: about 9 s of imports per
bitsandbytes process against 4 s of measurement). A pair per configuration pays that P x 2 times
per backend; a shared pair pays it P x 2 times in all.

What stays the same: the fresh process pair is the unit of replication. Pair i of every
configuration is a different pair of processes than its pair j; a configuration's P pair means come
from P independent pairs, and its interval is the same Student-t over them
(quantperf.experiments.upgrade). Within a pair both sides host the same configurations in the same
order, so whatever an earlier configuration leaves in a process (allocator state, a warm clock) is
on both sides of the ratio; the order is rotated from pair to pair, so no configuration is always
first (cold) or last, except that one after which the processes could host no other (below) goes
last from the next pair on, so the rest of a pair needs no fresh processes for it (bitsandbytes
LLM.int8 in an H100 tier A/B: 36 s of starts on the wall). Each configuration is unloaded (its
memory given back) before the next loads. Both sides load a configuration at the same time (nothing
is measured then), build what their warm-ups need at the same time (kernel mode's layer copies and
captured inputs: nothing is timed then either), warm up one after the other (the pair's first side
first: a warm-up times the copy bandwidth and each walk's replays) and then run the ABBA blocks.
Kernel mode's rounds time the decode shape's seven projection types alone there (the A/B's
statistic; the prefill walks, half of a round, and the lm_head, a figure never gated, are neither
captured nor timed), each sample within AB_SAMPLE_BUDGET_MS; the results built for the takeaways
carry the decode figures only.

Done once rather than per configuration: each process of a pair imports every configuration's
libraries at its start (the two processes start side by side); every configuration is prepared in
the background while pair 1 starts (_Preparing), and nothing loads before that is done; with
QUANTPERF_AB_OVERLAP (unset: on for CUDA) pair i + 1's processes start while pair i measures (ahead.overlap_default).

A process hosts no further configuration after a CUDA graph capture failed in it (bitsandbytes
LLM.int8 with its outlier threshold: CUDA's RNG state is left broken and later captures in that
process would be timed eagerly), after a side failed to load, or after it crashed: the next
configuration gets a fresh pair.

`QUANTPERF_AB_SHARE` chooses the modes whose configurations share pairs: unset, kernel mode
(the one whose processes are mostly overhead and that was measured so on a GPU); `off`, a pair per
configuration everywhere (the design before #28); or a comma-separated list of modes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import phases as P
from ..errors import ConfigError
from ..gate.ab import look_confidence, planned_looks
from ..spec import RunSpec
from ..status import Status
from . import upgrade  # check_config looked up when called (a test may stand in for it)
from .upgrade import (
    SIDE_NAMES,
    ConfigCheck,
    PairRecord,
    SideFailed,
    Sides,
    _failure,
    _first_line,
    finish_check,
    mark_failed,
    measure_blocks,
    take_look,
)

SHARE_ENV = "QUANTPERF_AB_SHARE"
AB_KERNEL_SHAPES = ("decode",)  # what kernel mode times on shared pairs: the shape of the A/B's statistic
# the time one kernel-mode sample may take on shared pairs (a run's is 50 ms: trackers.SAMPLE_BUDGET_US):
# the torch and bitsandbytes walks of llama-1b (H100: 2-19 ms a sample) fit their 50 replays as before;
# slower ones (torchao's filled 50 ms a sample, 45 of the all-backend A/A's 183 s) take fewer replays.
# The interval is over process pairs, whose offsets (0.1-0.8%) are far above a sample's CV.
AB_SAMPLE_BUDGET_MS = 20.0
DEFAULT_SHARED_MODES = ("kernel",)
MODES = ("eager", "graph", "kernel")


def shared_modes(raw: str | None = None) -> tuple[str, ...]:
    """The modes whose configurations share process pairs (QUANTPERF_AB_SHARE)."""
    raw = os.environ.get(SHARE_ENV) if raw is None else raw
    if raw is None or raw.strip() == "":
        return DEFAULT_SHARED_MODES
    if raw.strip().lower() in ("off", "0", "none"):
        return ()
    modes = tuple(m.strip() for m in raw.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"{SHARE_ENV}={raw!r}: not a list of modes; use off (a fresh process pair per "
                          f"configuration), or modes from {', '.join(MODES)} separated by commas, or unset it (kernel)")
    return modes


def groups(specs: list[RunSpec], modes: tuple[str, ...]) -> list[list[RunSpec]]:
    """Configurations in order, those of a shared mode grouped by (device, mode) at the place of the
    group's first; every other configuration alone."""
    out: list[list[RunSpec]] = []
    where: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        if spec.mode in modes:
            key = (spec.device, spec.mode)
            if key not in where:
                where[key] = []
                out.append(where[key])
            where[key].append(spec)
        else:
            out.append([spec])
    return out


def check_all(specs: list[RunSpec], sides: Sides, *, tolerance_of: Callable[[RunSpec], tuple[float, str]],
              progress: Callable[[str], None] | None = None, share: tuple[str, ...] | None = None,
              **kwargs) -> list[tuple[ConfigCheck, dict]]:
    """Every configuration's check and what it kept, in the order of `specs`: groups of a shared mode
    (`share`, default `shared_modes()`) on shared process pairs, the rest a pair per configuration
    (upgrade.check_config). kwargs: pairs, blocks, max_blocks, alpha, environment, profile, model_options."""
    share = shared_modes() if share is None else share
    done: dict[str, tuple[ConfigCheck, dict]] = {}
    for group in groups(specs, share):
        if group[0].mode not in share:  # a shared mode's group, even of one, times what shared pairs time
            tol, source = tolerance_of(group[0])
            done[group[0].id] = upgrade.check_config(group[0], sides, tolerance=tol, tolerance_source=source,
                                                     progress=progress, **kwargs)
        else:
            done.update(check_shared(group, sides, tolerance_of=tolerance_of, progress=progress, **kwargs))
    return [done[s.id] for s in specs]


class _Preparing:
    """Every configuration of a group prepared (checkpoint, exports) in the background by one
    preparing process, while the first pair's processes start; whoever loads first waits for all
    of it, so nothing is built beside a measurement, and the preparer (its memory, any CUDA
    context) is gone before the first load."""

    def __init__(self, specs: list[RunSpec], sides: Sides, model_options: dict | None):
        self.seconds: float | None = None  # the whole preparing's wall seconds, once done
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quantperf-prepare")
        self._future = self._pool.submit(self._all, specs, sides, dict(model_options or {}))

    def _all(self, specs, sides, model_options) -> dict:
        from ..scheduler import close_preparers, prepare_in_process

        t0, out = P.clock(), {}
        try:
            for spec in specs:
                try:
                    for kw in {repr(sides.kwargs(n)): sides.kwargs(n) for n in SIDE_NAMES}.values():
                        prepare_in_process(spec, model_options, kw.get("python"), kw.get("env"), keep=True)
                    out[spec.id] = None
                except Exception as exc:  # noqa: BLE001 -- this configuration's failure, raised at its turn
                    out[spec.id] = exc
        finally:
            close_preparers()
            self.seconds = P.clock() - t0
        return out

    def wait(self, spec: RunSpec, phases: dict) -> None:
        """Wait for the preparing (the wait is `spec`'s prepare phase); raise `spec`'s failure."""
        with P.timed(phases, "prepare"):
            failed = self._future.result().get(spec.id)
        if failed is not None:
            raise failed

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def check_shared(specs: list[RunSpec], sides: Sides, *, tolerance_of: Callable[[RunSpec], tuple[float, str]],
                 pairs: int, blocks: int, max_blocks: int | None, alpha: float, environment: dict | None = None,
                 profile: str | None = None, model_options: dict | None = None,
                 progress: Callable[[str], None] | None = None, then=None) -> dict[str, tuple[ConfigCheck, dict]]:
    """The configurations' checks, measured on shared fresh process pairs: pair i hosts every
    configuration still measuring (rotated by i); after P pairs a configuration is decided, and an
    inconclusive one takes part in further pairs up to its planned looks (upgrade.check_config's rule).
    Every configuration is prepared once, in the background while pair 1 starts; with
    QUANTPERF_AB_OVERLAP (ahead.overlap_default; unset: on for CUDA), pair i + 1's processes start while
    pair i measures, and with the last planned pair `then`'s (ahead.Ahead: the next configuration's
    first pair, left to the caller), stopped while blocks are timed."""
    from .ahead import Ahead, overlap_default

    say = progress or (lambda line: None)
    looks = planned_looks(pairs, blocks, max_blocks)
    confidence = look_confidence(alpha, looks)
    checks, keeps, target = {}, {}, {}
    for spec in specs:
        tol, source = tolerance_of(spec)
        checks[spec.id] = ConfigCheck(spec.id, spec.to_dict(), tolerance=tol, tolerance_source=source,
                                      confidence=confidence, looks_planned=looks)
        keeps[spec.id], target[spec.id] = {}, pairs
    walls = {spec.id: 0.0 for spec in specs}
    active = list(specs)
    index = 0
    model_options = dict(model_options or {})
    backends = list(dict.fromkeys(s.backend for s in specs))
    ahead = Ahead(specs[0], sides, model_options, backends) if overlap_default(specs[0].device) else None
    say(f"shared process pairs: {len(specs)} {specs[0].mode} configurations per pair of processes"
        + ("; each next pair starts while the current one measures" if ahead else ""))
    for check in checks.values():
        check.shared = len(specs)
    preparing = _Preparing(specs, sides, model_options)
    breaking: set[str] = set()  # configurations after which a process could host no other (a failed capture)
    try:
        while active:
            k = index % len(active)
            order = active[k:] + active[:k]
            # one that ended its processes in an earlier pair goes last: no fresh pair for the rest of this one
            order = [s for s in order if s.id not in breaking] + [s for s in order if s.id in breaking]
            certain = index + 1 < pairs  # every configuration still measuring takes part in pair index + 1
            nxt = ahead if ahead is not None and certain else then if not certain else None
            _shared_pair(order, sides, index, blocks, checks=checks, keeps=keeps, preparing=preparing, walls=walls,
                         environment=environment, profile=profile, model_options=model_options, say=say,
                         backends=backends, ahead=ahead, start_next=nxt.start if nxt is not None else None,
                         breaking=breaking, then=then)
            still = []
            for spec in active:
                check = checks[spec.id]
                record = check.pairs[-1]
                if check.status != Status.OK:
                    continue
                n = len(check.complete_pair_means)
                say(f"{spec.id}: pair {n}/{target[spec.id]} ({record.first} first, shared): B/A per-token time "
                    f"{math.exp(record.mean):.4f} over {len(record.blocks)} block(s)")
                if n < target[spec.id]:
                    still.append(spec)
                elif take_look(check, check.complete_pair_means, looks):  # inconclusive, looks remain: one more pair
                    target[spec.id] += 1
                    still.append(spec)
            active = still
            index += 1
    finally:
        if ahead is not None:
            ahead.close()
            checks[specs[0].id].overlapped = P.rounded(ahead.hidden)
        preparing.close()
    if preparing.seconds is not None:
        say(f"prepared {len(specs)} configurations in {preparing.seconds:.1f} s, beside the first pair's start")
    return {spec.id: (finish_check(checks[spec.id], keeps[spec.id], walls[spec.id]), keeps[spec.id])
            for spec in specs}


def _shared_pair(order: list[RunSpec], sides: Sides, index: int, blocks: int, *, checks: dict, keeps: dict,
                 preparing: _Preparing, walls: dict, environment, profile, model_options: dict, say,
                 backends: list[str], ahead=None, start_next: Callable[[], None] | None = None,
                 breaking: set[str] | None = None, then=None) -> None:
    """Pair `index`: fresh processes (started ahead, where `ahead` holds them) host the configurations
    of `order` one after the other; `start_next` (once this pair's processes are there) starts the
    next pair ahead, stopped while a block is timed. A configuration that fails is marked in its
    check (and leaves the pair it failed in), the next one gets a fresh pair where the processes
    cannot go on (a configuration that ended them is added to `breaking`)."""
    from .ahead import PairStartFailed, close_workers, start_pair

    workers: dict = {}
    first = "A" if index % 2 == 0 else "B"
    try:
        for spec in order:
            check = checks[spec.id]
            record = PairRecord(index, first)
            check.pairs.append(record)
            t0 = P.clock()
            try:
                if not workers:
                    try:
                        if ahead is not None and ahead.pending:
                            workers = ahead.take(check.phases)
                        else:
                            workers = start_pair(spec, sides, model_options, check.phases, backends)
                    except PairStartFailed as exc:
                        raise SideFailed(exc.side, f"pair {index + 1}: {exc.reason}") from None
                    if start_next is not None:  # the next pair starts with this one, stopped while it times
                        start_next()
                if any(w.spec.id != spec.id for w in workers.values()):
                    _switch(workers, spec)
                fresh_needed = _measure_in(spec, workers, sides, index, blocks, record=record, keep=keeps[spec.id],
                                           preparing=preparing, phases=check.phases, environment=environment,
                                           profile=profile, model_options=model_options,
                                           ahead=ahead, then=then)
                if fresh_needed:
                    last = spec is order[-1]
                    say(f"{spec.id}: {fresh_needed}: " + ("this pair's processes end with it (its last configuration)"
                                                          if last else "the next configuration gets a fresh pair"))
                    close_workers(workers)
                    if breaking is not None:
                        breaking.add(spec.id)
            except SideFailed as exc:
                record.complete = False
                if getattr(exc, "intact", False):  # a load that answered with a status: both processes go on
                    _unload_quietly(workers)
                else:
                    close_workers(workers)  # a failed side may have left its process in any state
                mark_failed(check, spec, sides, exc, say)
            except Exception as exc:  # anything else is this configuration's failure, never the session's
                record.complete = False
                close_workers(workers)
                check.status, check.message = Status.ERROR, f"{spec.id}: {_failure(exc)}"
                say(f"{spec.id}: error: {check.message}")
            walls[spec.id] += P.clock() - t0
    finally:
        close_workers(workers)


def _unload_quietly(workers: dict) -> None:
    """After a failed load that left both processes intact: whatever the other side loaded goes;
    a worker that cannot unload ends the pair."""
    from .ahead import close_workers

    try:
        for w in workers.values():
            w.unload()
    except Exception:  # noqa: BLE001 -- its processes are closed, the next configuration gets a fresh pair
        close_workers(workers)


def _both(workers: dict, fn: Callable) -> list:
    """fn(name, worker) for the pair's processes at once (nothing measures while they do), in order."""
    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(lambda item: fn(*item), workers.items()))


def _switch(workers: dict, spec: RunSpec) -> None:
    """Both processes unload their configuration and take `spec`."""
    def one(_name, w):
        w.switch(spec=spec.to_dict())
        w.spec = spec

    _both(workers, one)


def _measure_in(spec: RunSpec, workers: dict, sides: Sides, index: int, blocks: int, *, record: PairRecord,
                keep: dict, preparing: _Preparing, phases: dict, environment, profile, model_options: dict,
                ahead=None, then=None) -> str | None:
    """One configuration in the pair's processes: its preparing waited for, opened on both sides
    (open_both: loaded and built at once, warmed up at once or the first side first), then `blocks`
    ABBA blocks (upgrade.measure_blocks; the next pair being started `ahead` is stopped while they
    are timed); then both unload. Returns why these processes must not host another configuration,
    or None; raises SideFailed (`intact`: a load that answered with a status, the processes can go on)."""
    from .ahead import stopped_while_timed

    preparing.wait(spec, phases)
    order = list(SIDE_NAMES) if record.first == "A" else list(reversed(SIDE_NAMES))
    record.pids = {n: (getattr(w, "info", None) or {}).get("pid") for n, w in workers.items()}
    # the statistic is the decode shape's: prefill is neither timed nor captured
    settings = ({"shapes": list(AB_KERNEL_SHAPES), "lm_head": False, "sample_budget_ms": AB_SAMPLE_BUDGET_MS}
                if spec.mode == "kernel" else None)
    opened = open_both(spec, workers, sides, index, order, phases, environment=environment, profile=profile,
                       model_options=model_options, settings=settings)
    measure_blocks(spec, opened, index, blocks, record=record, keep=keep, phases=phases,
                   **stopped_while_timed(ahead, then))

    def unload(name, w) -> str | None:
        try:
            return (w.unload() or {}).get("fresh_needed")
        except Exception as exc:  # noqa: BLE001 -- a worker that cannot unload hosts no further configuration
            return f"side {name} could not unload ({_failure(exc)})"

    return next((r for r in _both(workers, unload) if r), None)


def _alive(worker) -> bool:
    proc = getattr(worker, "proc", None)
    return proc is None or proc.poll() is None


def open_both(spec: RunSpec, workers: dict, sides: Sides, index: int, order: list[str], phases: dict, *,
              environment, profile, model_options: dict, settings: dict | None = None) -> dict:
    """`spec` opened in both processes of pair `index` (`workers` by side name, prepared already):
    loaded on both at once (nothing is timed while they load), `settings` configured, then warmed up
    as a group in `order` (scheduler.warm_group: on a GPU both build at once, and warm up at once
    where neither warm-up times anything; kernel mode's do, one side after the other). The wall
    seconds go to `phases`. Returns the opened sides by name; raises SideFailed (`intact`: a load
    that answered with a status, both processes can go on)."""
    from ..scheduler import open_side, warm_group

    def open_one(name: str):
        return open_side(spec, environment=environment, profile=profile, model_options=model_options,
                         worker=workers[name], prepare=False, warm=False, keep_worker=True, **sides.kwargs(name))

    with ThreadPoolExecutor(2) as pool:  # both load at once: nothing is measured while they do
        opened = dict(zip(order, pool.map(open_one, order)))
    # side by side: the critical path is the slower side's
    P.merge_into(phases, max((opened[n].phases for n in order), key=lambda ph: sum(ph.values())))
    for name in order:
        side = opened[name]
        if not side.ok:
            exc = SideFailed(name, f"{side.failed.status}: {_first_line(side.failed.reason or '')}")
            exc.intact = side.worker is not None and all(_alive(w) for w in workers.values())
            raise exc
    if settings:
        for name in order:
            opened[name].worker.configure(**settings)
    with P.timed(phases, "warmup"):  # scheduler.warm_group: side by side where nothing is timed, on a GPU
        warm_group([opened[n] for n in order], profile)
    for name in order:
        failed = opened[name].failed
        if failed is not None:
            raise SideFailed(name, f"pair {index + 1}: {failed.status}: {_first_line(failed.reason or '')}")
    return opened
