"""Process pairs started ahead: while one fresh pair of an A/B (quantperf.experiments.upgrade)
loads, warms up and measures, the next pair's two processes are spawned and do their heavy imports
in a thread, so interpreter start and imports (seconds each on a GPU host) are off the critical
path. Only start and imports: loading a model during another pair's measurement would disturb it.
While a block is timed the processes started ahead are stopped (SIGSTOP) and continued after it
(SIGCONT): their imports run in the windows where nothing is timed (loads, warm-ups, switches).
Every replicate still gets its own fresh pair; a pair started ahead that is never used is closed."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .. import phases as P
from ..errors import ConfigError, QuantperfError
from ..spec import RunSpec

OVERLAP_ENV = "QUANTPERF_AB_OVERLAP"  # 1 / 0: the next pair's processes start while the current pair measures


def overlap_default(device: str = "cpu") -> bool:
    """Whether the next pair's processes start (spawn, imports) while the current pair works:
    QUANTPERF_AB_OVERLAP=1 or 0 decides; unset, on for CUDA configurations, off on the CPU.

    Measured: on an H100 (every capturable backend in kernel mode, llama-1b, 3 pairs x 2 blocks)
    the A/A took 215 s without and 187 s with it, one run each in one lease; 8 of 9 verdicts ok in
    both, the ninth (bnb-nf4) inconclusive with it, from one pair whose B process was 0.8% slower
    in both of its blocks (a between-process offset, as torch-fp16's pair 3 was in an earlier lease
    without it); median interval width 0.7% with, 0.6% without. An earlier version that let the
    imports run beside the timed blocks made 8 of 9 intervals wider: the processes started ahead
    are stopped while a block is timed and hold no CUDA context. On the 2-core CPU box the imports
    slow the warm-ups beside them (llama-tiny, 3 configurations: 22.4 / 23.3 s off, 24.6 / 24.3 s on).
    Eager and graph A/Bs ran with it in an H100 tier A/B (758 s, every check completed), with no
    run without it beside to compare. The report's `settings.overlap` says which way a check ran."""
    raw = (os.environ.get(OVERLAP_ENV) or "").strip()
    if raw in ("0", "1"):
        return raw == "1"
    if raw:
        raise ConfigError(f"{OVERLAP_ENV}={raw!r}: use 1 (start each next process pair while the current "
                          "one measures), 0 (never) or unset (on for CUDA configurations, off on the CPU)")
    return device == "cuda" and hasattr(signal, "SIGSTOP")  # stopping them while a block is timed needs POSIX


class PairStartFailed(QuantperfError):
    """A pair's process (started ahead or not) failed to start or import; `side` names it."""

    def __init__(self, side: str, reason: str):
        super().__init__(reason)
        self.side, self.reason = side, reason


def start_pair(spec: RunSpec, sides, model_options: dict | None, phases: dict,
               backends: list[str] | None = None, spawned=None) -> dict:
    """Two fresh worker processes for `spec`, side A and side B (`sides`: upgrade.Sides), each
    spawned and its heavy imports done (those of `backends` too: a shared pair's), no model read.
    The two start side by side (nothing is measured while they do); the slower side's wall
    seconds go to `phases` (start, imports); `spawned(worker)`: start_worker's. A failure closes what
    was started and raises PairStartFailed (side A's, where both failed)."""
    from ..workers import StartFailed, start_worker

    timed: dict = {"A": {}, "B": {}}

    def one(name: str):
        try:
            return start_worker(spec, model_options, backends=backends, timed=timed[name], spawned=spawned,
                                **sides.kwargs(name)), None
        except StartFailed as exc:
            what = "process did not start" if exc.step == "start" else "process failed in its imports"
            return None, PairStartFailed(name, f"{what}: {_line(exc.cause)}")

    with ThreadPoolExecutor(2, thread_name_prefix="quantperf-pair") as pool:
        got = dict(zip(("A", "B"), pool.map(one, ("A", "B"))))
    started = {name: w for name, (w, _) in got.items() if w is not None}
    failed = [exc for _, exc in got.values() if exc is not None]
    if failed:
        close_workers(started)
        raise failed[0]
    P.merge_into(phases, max(timed.values(), key=lambda ph: sum(ph.values())))
    return started


def close_workers(workers: dict) -> None:
    """Close the workers at once (each waits for its interpreter to exit, a CUDA context's teardown
    included); callers close only where nothing measures. Best effort: ProcessWorker.close kills
    what hangs."""
    def one(w) -> None:
        try:
            w.close()
        except Exception:  # noqa: BLE001 -- closing is best effort
            pass

    many = list(workers.values())
    workers.clear()
    if len(many) < 2:
        for w in many:
            one(w)
        return
    with ThreadPoolExecutor(len(many), thread_name_prefix="quantperf-close") as pool:
        list(pool.map(one, many))


def _line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, QuantperfError) else str(exc)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no message")
    return first[:300]


def _signal(worker, sig) -> None:
    proc = getattr(worker, "proc", None)
    if proc is not None and proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:  # it exited meanwhile
            pass


def _stopped(worker, timeout_s: float = 2.0) -> None:
    """Until the process is stopped (a signal is delivered asynchronously), where /proc says so."""
    import time

    proc = getattr(worker, "proc", None)
    stat = f"/proc/{getattr(proc, 'pid', 0)}/stat"
    deadline = time.monotonic() + timeout_s
    while proc is not None and proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(stat) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z"):
                    return
        except (OSError, IndexError):  # no /proc here, or the process is gone
            return
        time.sleep(0.001)


class Ahead:
    """At most one pair started ahead for one configuration. `start()` begins it in the
    background; `pause()` stops its processes while a block is timed and `resume()` continues them;
    `take(phases)` waits for it (the wait is the critical path's `start`) and hands its workers
    over; `close()` ends whatever was started and not taken. `hidden` holds the background start
    and imports seconds (paused time included), which the overlap took off the wall."""

    def __init__(self, spec: RunSpec, sides, model_options: dict | None, backends: list[str] | None = None):
        self.spec, self.sides, self.model_options, self.backends = spec, sides, model_options, backends
        self.hidden: dict = {}
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._lock = threading.Lock()
        self._procs: list = []  # the processes of the pair being started (stopped while `_paused`)
        self._paused = False

    def _spawned(self, worker) -> None:
        with self._lock:
            self._procs.append(worker)
            if self._paused:
                _signal(worker, signal.SIGSTOP)
                _stopped(worker)

    def pause(self) -> None:
        """Stop the processes being started ahead (a block is about to be timed)."""
        with self._lock:
            self._paused = True
            for w in self._procs:
                _signal(w, signal.SIGSTOP)
            for w in self._procs:
                _stopped(w)

    def resume(self) -> None:
        """Continue them (nothing is timed any more)."""
        with self._lock:
            self._paused = False
            for w in self._procs:
                _signal(w, signal.SIGCONT)

    def start(self) -> None:
        if self._future is not None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="quantperf-ahead")
        with self._lock:
            self._procs = []
        self._future = self._pool.submit(start_pair, self.spec, self.sides, self.model_options, self.hidden,
                                         self.backends, self._spawned)

    @property
    def pending(self) -> bool:
        return self._future is not None

    def take(self, phases: dict) -> dict:
        """The pair started ahead (raises its PairStartFailed)."""
        future, self._future = self._future, None
        if future is None:
            raise RuntimeError("no pair was started ahead")
        self.resume()  # a stopped process would never finish its imports
        try:
            with P.timed(phases, "start"):
                return future.result()
        finally:
            with self._lock:  # taken: these measure now, and are never stopped again
                self._procs = []

    def close(self) -> None:
        self.resume()
        with self._lock:
            self._procs = []
        if self._future is not None:
            future, self._future = self._future, None
            try:
                close_workers(future.result())
            except Exception:  # noqa: BLE001 -- it failed to start: start_pair closed what it had
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def stopped_while_timed(*aheads) -> dict:
    """upgrade.measure_blocks' `measuring` and `measured`: the pairs started ahead (`aheads`, None
    skipped: a check's own next pair, the next configuration's first) stopped while its blocks are timed."""
    live = [a for a in aheads if a is not None]
    return {"measuring": lambda: [a.pause() for a in live], "measured": lambda: [a.resume() for a in live]}


def close_sides(sides: list) -> None:
    """Close the pair's sides together (each waits for its interpreter to exit); nothing is
    measured any more, so overlapping the two shutdowns costs no accuracy."""
    close_workers(dict(enumerate(sides)))
