"""Process pairs started ahead: while one fresh pair of an A/B (quantperf.experiments.upgrade)
measures, the next pair's two processes are spawned and do their heavy imports in a thread, so
interpreter start and imports (seconds each on a GPU host) are off the critical path. Only
start and imports: loading a model during another pair's measurement would disturb it. Every
replicate still gets its own fresh pair; a pair started ahead that is never used is closed."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from .. import phases as P
from ..errors import ConfigError, QuantperfError
from ..spec import RunSpec

OVERLAP_ENV = "QUANTPERF_AB_OVERLAP"  # 1: start the next pair's processes while the current pair measures


def overlap_default() -> bool:
    """Whether the next pair's processes start (spawn, imports) while the current pair measures:
    QUANTPERF_AB_OVERLAP=1 or 0 decides; unset, off. Kernel mode on CUDA is where it should pay
    (graph replays leave the host's cores idle while another pair's interpreters import), but it
    has not yet been measured on a GPU, and on a CPU the next pair's imports share the measured
    cores."""
    raw = (os.environ.get(OVERLAP_ENV) or "").strip()
    if raw in ("0", "1"):
        return raw == "1"
    if raw:
        raise ConfigError(f"{OVERLAP_ENV}={raw!r}: use 1 (start each next process pair while the current "
                          "one measures), 0 or unset (never)")
    return False


class PairStartFailed(QuantperfError):
    """A pair's process (started ahead or not) failed to start or import; `side` names it."""

    def __init__(self, side: str, reason: str):
        super().__init__(reason)
        self.side, self.reason = side, reason


def start_pair(spec: RunSpec, sides, model_options: dict | None, phases: dict,
               backends: list[str] | None = None) -> dict:
    """Two fresh worker processes for `spec`, side A and side B (`sides`: upgrade.Sides), each
    spawned and its heavy imports done (those of `backends` too: a shared pair's), no model read.
    The two start side by side (nothing is measured while they do); the slower side's wall
    seconds go to `phases` (start, imports). A failure closes what was started and raises
    PairStartFailed (side A's, where both failed)."""
    from ..workers import StartFailed, start_worker

    timed: dict = {"A": {}, "B": {}}

    def one(name: str):
        try:
            return start_worker(spec, model_options, backends=backends, timed=timed[name], **sides.kwargs(name)), None
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


class Ahead:
    """At most one pair started ahead for one configuration. `start()` begins it in the
    background; `take(phases)` waits for it (the wait is the critical path's `start`) and hands
    its workers over; `close()` ends whatever was started and not taken. `hidden` holds the
    background start and imports seconds, which the overlap took off the wall."""

    def __init__(self, spec: RunSpec, sides, model_options: dict | None, backends: list[str] | None = None):
        self.spec, self.sides, self.model_options, self.backends = spec, sides, model_options, backends
        self.hidden: dict = {}
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None

    def start(self) -> None:
        if self._future is not None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="quantperf-ahead")
        self._future = self._pool.submit(start_pair, self.spec, self.sides, self.model_options, self.hidden,
                                         self.backends)

    @property
    def pending(self) -> bool:
        return self._future is not None

    def take(self, phases: dict) -> dict:
        """The pair started ahead (raises its PairStartFailed)."""
        future, self._future = self._future, None
        if future is None:
            raise RuntimeError("no pair was started ahead")
        with P.timed(phases, "start"):
            return future.result()

    def close(self) -> None:
        if self._future is not None:
            future, self._future = self._future, None
            try:
                close_workers(future.result())
            except Exception:  # noqa: BLE001 -- it failed to start: start_pair closed what it had
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def close_sides(sides: list) -> None:
    """Close the pair's sides together (each waits for its interpreter to exit); nothing is
    measured any more, so overlapping the two shutdowns costs no accuracy."""
    close_workers(dict(enumerate(sides)))
