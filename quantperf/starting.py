"""Fresh measuring processes started ahead of their turn, and what the session learnt about
backends from earlier processes (quantperf.scheduler uses both).

- `Starting`: a process spawned and doing its imports in a thread while nothing is measured.
- processes started for the next configurations to be measured (`measure_many(ahead=...)`):
  kept here until the call that measures them takes them, closed at exit otherwise.
- backends a worker found unavailable on a device in an environment: no process is started for
  them again in that session."""

from __future__ import annotations

import atexit
import contextlib
import os

from . import phases as P
from . import progress
from .spec import RunSpec

# Variables that change within a session without changing what a worker loads: pytest names the
# running test in one, torch sets CUDA_MODULE_LOADING when the parent first touches CUDA (a worker sets its own);
# torch's inductor sets TORCHINDUCTOR_CACHE_DIR to its default the first time the parent imports
# transformers' modeling code (a worker computes the same default): on an H100 sitting that one
# change made the processes started ahead for the second group miss (13 s waited for fresh ones)
VOLATILE_ENV = ("PYTEST_CURRENT_TEST", "CUDA_MODULE_LOADING", "TORCHINDUCTOR_CACHE_DIR")


def inherited(env: dict | None) -> dict:
    """What a worker started now inherits: this process's variables (less VOLATILE_ENV) plus `env`."""
    return {k: v for k, v in os.environ.items() if k not in VOLATILE_ENV} | dict(env or {})


def environment_key(env: dict | None) -> int:
    """What a worker started now inherits, as a key: a variable changed in between, other than a
    VOLATILE_ENV one, is another environment."""
    return hash(repr(sorted(inherited(env).items())))


def changed_names(before: dict, after: dict) -> list[str]:
    """The variables set, unset or changed between two environments (names only: values may be secrets)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# A backend that a worker found unavailable on a device (its `unavailable_reason`: a library
# missing, no GPU, no CUDA provider in onnxruntime) stays so in that interpreter and environment for
# the whole session: a later configuration of it gets the same reason without a process started for
# it (12-14 s each in an H100 sitting). A reason found at load (a model's, a mode's) is not kept.
_UNAVAILABLE: dict[tuple, tuple[str, dict]] = {}


def unavailable_key(spec: RunSpec, python: str | None, env: dict | None) -> tuple:
    return (spec.backend, repr(spec.backend_options), spec.device, python,
            environment_key(env))


def known_unavailable(spec: RunSpec, python: str | None = None, env: dict | None = None) -> str | None:
    """The reason a worker of this session gave for `spec`'s backend being unavailable on its
    device in this interpreter and environment, or None."""
    found = unavailable(spec, python, env)
    return found[0] if found else None


def remember_unavailable(spec: RunSpec, python: str | None, env: dict | None, reason: str,
                         environment: dict) -> None:
    """A worker found `spec`'s backend unavailable on its device (`reason`), in `environment`."""
    _UNAVAILABLE[unavailable_key(spec, python, env)] = (reason, dict(environment))


def unavailable(spec: RunSpec, python: str | None = None, env: dict | None = None) -> tuple[str, dict] | None:
    """(reason, the worker's environment) for a backend found unavailable, or None."""
    return _UNAVAILABLE.get(unavailable_key(spec, python, env))


def identity_of(spec: RunSpec) -> dict:
    """The backend's identity for a configuration not measured (options only; nothing imported)."""
    from .backends import get_backend

    try:
        return get_backend(spec.backend, dict(spec.backend_options)).identity(spec.device, spec.mode)
    except Exception:  # noqa: BLE001 -- an identity is a record, never a reason to fail
        return {}


class Starting:
    """A fresh measuring process being started in a thread (spawn, its imports and, for a CUDA
    configuration, its CUDA context; no model read) while the caller does something else that
    measures nothing: prepares the configuration, or opens the other sides of an interleaved group.
    `take(phases)` waits for it (the wait is the critical path's `start`) and returns the worker;
    the thread's own seconds, hidden behind the caller's work, are in `hidden`. `close()` ends a
    worker that was never taken."""

    def __init__(self, spec: RunSpec, model_options: dict | None = None, python: str | None = None,
                 env: dict | None = None, cuda: bool = True):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.spec, self.hidden = spec, {}
        self._lock, self._worker, self._closing = threading.Lock(), None, False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quantperf-start")
        self._future = self._pool.submit(self._start, dict(model_options or {}), python, env, cuda)
        self._pool.shutdown(wait=False)

    def _start(self, model_options: dict, python: str | None, env: dict | None, cuda: bool):
        from . import workers

        if self._closing:  # closed before its process was spawned: none is
            raise RuntimeError(f"{self.spec.id}: closed before it started")
        try:
            # `cuda`: nothing is measured on the GPU while this process starts: it opens its CUDA context too
            return workers.start_worker(self.spec, model_options, python, env, timed=self.hidden, cuda=cuda,
                                        spawned=self._spawned)
        except workers.StartFailed as exc:
            raise exc.cause from None  # the side's reason names what failed, as a start in place would

    def _spawned(self, worker) -> None:
        with self._lock:
            self._worker, closing = worker, self._closing
        if closing:
            _kill(worker)

    def wait(self) -> None:
        """Until the process has started and imported (or failed to: take() reports that)."""
        if self._future is not None:
            with contextlib.suppress(Exception):
                self._future.result()

    def take(self, phases: dict):
        future, self._future = self._future, None
        if future is None:
            raise RuntimeError(f"{self.spec.id}: its process was taken or closed already")
        with P.timed(phases, "start"):
            return future.result()

    def close(self) -> None:
        """End a worker never taken. One still starting is killed (it holds no model and, started
        ahead, no CUDA context): nobody waits for an interpreter's imports only to end it (9-10 s
        per configuration found unavailable in an H100 sitting)."""
        future, self._future = self._future, None
        if future is None:
            return
        if not future.done():
            with self._lock:
                self._closing, worker = True, self._worker
            if worker is not None:
                _kill(worker)
            future.add_done_callback(_close_started)  # whatever the start left: closed in its thread
            return
        _close_started(future)


def _kill(worker) -> None:
    proc = getattr(worker, "proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()


def _close_started(future) -> None:
    try:
        future.result().close()
    except Exception:  # noqa: BLE001 -- it failed to start (or was killed starting): nothing is left open
        pass


# Fresh processes started for the next configurations to be measured (`measure_many(ahead=...)`),
# by configuration and the environment they were started in; taken by the measure_many call that
# measures them, closed at exit if none does.
_AHEAD: dict[tuple, Starting] = {}
# what each of them was given (`env`) and inherited: a miss names the variables that changed since
_AHEAD_ENV: dict[tuple, tuple[dict, dict]] = {}


def ahead_key(spec: RunSpec, model_options: dict | None, python: str | None, env: dict | None) -> tuple:
    return (spec.id, repr(sorted((model_options or {}).items())), python,
            environment_key(env))


def start_ahead(spec: RunSpec, model_options: dict | None, python: str | None, env: dict | None) -> None:
    """Start `spec`'s fresh process for a later call (no CUDA context: something may be loading or
    warming up on the GPU meanwhile), unless one is started already."""
    key = ahead_key(spec, model_options, python, env)
    if key not in _AHEAD:
        _AHEAD[key] = Starting(spec, model_options, python, env, cuda=False)
        _AHEAD_ENV[key] = (dict(env or {}), inherited(env))


def wait_ahead(spec: RunSpec, model_options: dict | None, python: str | None, env: dict | None) -> None:
    """Until `spec`'s process started ahead (if any) is idle: started and imported, or failed."""
    one = _AHEAD.get(ahead_key(spec, model_options, python, env))
    if one is not None:
        one.wait()


def take_ahead(spec: RunSpec, model_options: dict | None, python: str | None, env: dict | None) -> Starting | None:
    """`spec`'s process started ahead in this environment, now the caller's to take or close. One
    started ahead for `spec` in an environment that has changed since is not used: it is closed,
    and the progress log names the variables that changed (a fresh process is started instead)."""
    key = ahead_key(spec, model_options, python, env)
    _AHEAD_ENV.pop(key, None)
    found = _AHEAD.pop(key, None)
    if found is None:
        for other in [k for k in _AHEAD if k[:3] == key[:3] and _AHEAD_ENV.get(k, ({},))[0] == dict(env or {})]:
            names = changed_names(_AHEAD_ENV.pop(other)[1], inherited(env))
            _AHEAD.pop(other).close()
            progress.note(f"{spec.id}: the process started ahead is not used: the environment changed since "
                          f"it started ({', '.join(names[:8]) or 'unknown'}"
                          f"{f', {len(names) - 8} more' if len(names) > 8 else ''})")
    return found


def close_ahead() -> None:
    """End the processes started ahead that no measurement took."""
    _AHEAD_ENV.clear()
    while _AHEAD:
        _AHEAD.popitem()[1].close()


atexit.register(close_ahead)
