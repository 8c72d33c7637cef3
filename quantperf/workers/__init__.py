"""Workers: one loaded configuration each. `LocalWorker` runs in this process; `ProcessWorker`
runs the same methods in a fresh `python -m quantperf.workers` process of any interpreter (the
default is this one), so one backend's memory figures, compiled graphs and allocator state
never leak into the next, and a worker in another Python environment (an upgrade check) is the
same object with another `python`/`env`. The child reports its own environment and versions.

Every method returns JSON-able data, so it can be proxied.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from .. import trackers as M
from ..errors import BackendUnavailable, ConfigError, ModeUnsupported, QuantperfError
from ..fidelity import HUB_KERNELS_ENV
from ..spec import RunSpec
from ..status import Status

PROTOCOL = 7  # bump when a request or reply changes shape
WORKER_TIMEOUT_ENV = "QUANTPERF_WORKER_TIMEOUT_S"
# A hung worker (a wedged GPU, a deadlocked library) must not hang the suite: one request
# (a load, a set of rounds, a quality pass) gets this long.
def worker_timeout_s(raw: str | None) -> float:
    """Seconds one request may take (QUANTPERF_WORKER_TIMEOUT_S; unset: 1800); anything but a
    positive number is one clear error naming the variable and its value."""
    if raw is None or raw == "":
        return 1800.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"{WORKER_TIMEOUT_ENV}={raw!r}: not a positive number of seconds; set it to how long one "
                          "worker request (a load, a set of rounds) may take, e.g. 1800, or unset it")
    return value


# An override of the variable (tests set it); None: the variable is read where a request is sent,
# never at import (a bad value must not break `import quantperf`, `--help` or the pytest plugin).
WORKER_TIMEOUT_S: float | None = None


def request_timeout_s() -> float:
    """The seconds one worker request may take now: WORKER_TIMEOUT_S if set, else the variable's."""
    if WORKER_TIMEOUT_S is not None:
        return WORKER_TIMEOUT_S
    return worker_timeout_s(os.environ.get(WORKER_TIMEOUT_ENV))


# a silent worker is sent this before it is killed; quantperf.workers (its __main__) answers with every thread's stack
STACK_SIGNAL = "SIGUSR1"
METHODS = {
    "hello", "environment", "imports", "prepare", "prepare_for", "load", "build", "warmup",
    "rounds", "configure", "memory", "runtime", "quality", "close", "unload", "switch",
}


# the library each backend family's load imports besides torch and transformers (module -> names)
HEAVY_LIBRARIES = {"bnb": ("bitsandbytes",), "torchao": ("torchao",), "ort": ("onnxruntime",)}


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


class LocalWorker:
    """One loaded configuration, measured by the scenario of its mode."""

    def __init__(self, spec: RunSpec, model_options: dict | None = None):
        self.spec = spec
        self.model_options = model_options or {}
        self.loaded = None
        self.scenario = None
        # scenario settings changed between rounds (configure)
        self.settings: dict = {"gc_off": True, "inject_ms": None, "tokens_factor": 1}
        self._all_cpus: set[int] | None = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self._imports_s: float | None = None  # seconds the heavy imports took (imports())
        self._cuda_s: float | None = None  # seconds the CUDA context took when opened ahead (imports(cuda=True))

    # -- identity of the process ---------------------------------------------------------
    def hello(self) -> dict:
        from .. import __version__

        return {"protocol": PROTOCOL, "python": sys.executable, "quantperf": __version__, "pid": os.getpid()}

    def environment(self) -> dict:
        """This interpreter's environment (versions differ from the parent's in an upgrade check)."""
        from ..envinfo import environment

        return environment()

    # -- lifecycle -----------------------------------------------------------------------
    def _source(self):
        from ..models import resolve

        return resolve(self.spec.model, local_files_only=self.model_options.get("local_files_only", False),
                       trust_remote_code=self.model_options.get("trust_remote_code", False))

    def prepare(self) -> dict:
        """Build the checkpoint and the backend's cached artifacts if missing. Failures are left
        to load(), which reports them; `built` says whether one-time work happened here."""
        from ..backends import get_backend

        try:
            backend = get_backend(self.spec.backend, dict(self.spec.backend_options))
            reason = backend.unavailable_reason(self.spec.device)
            if reason:  # what load() would say; the caller need not start a process to hear it
                return {"built": False, "unavailable": f"{self.spec.backend}: {reason}"}
            t0 = time.perf_counter()
            source = self._source()
            built = backend.prepare(source, self.spec.device, self.spec.mode) or source.built
            return {"built": bool(built), "prepare_s": round(time.perf_counter() - t0, 1)}
        except Exception:
            return {"built": False}

    def prepare_for(self, spec: dict) -> dict:
        """prepare() for another configuration: one long-lived preparing process serves many
        (quantperf.scheduler.prepare_in_process). Never called on a measuring worker."""
        if self.loaded is not None:
            raise RuntimeError(
                "prepare_for on a worker that has loaded a model: preparing and measuring never share a process"
            )
        self.spec = RunSpec.from_dict(spec)
        out = self.prepare()
        torch = sys.modules.get("torch")  # a CUDA context held by an idle preparer would sit beside every measurement
        out["cuda_context"] = bool(torch is not None and torch.cuda.is_initialized())
        return out

    def imports(self, backends: list[str] | None = None, cuda: bool = False) -> dict:
        """Import what a load of this configuration imports (torch, transformers, the backend's
        library, transformers' modeling code and the model's architecture module, which
        transformers imports lazily at the first load), timed, and nothing more: no model is read
        and no CUDA context is opened, so a process started ahead of its turn (the upgrade check's
        overlap) can do this while another pair measures. `backends`: the libraries of these
        backends too (a shared process pair hosts several configurations in turn: every library
        is imported once, at its start). `cuda`: open this process's CUDA context too (a CUDA
        configuration; only where nothing is being measured beside it: a context's creation is
        GPU work). Done once; a missing library is left to load(), which reports it."""
        import importlib

        if self._imports_s is None:
            from ..backends import entry
            from ..models import model_type_of

            t0 = time.perf_counter()
            names: list[str] = []
            model_type = model_type_of(self.spec.model)
            for backend, options in [(self.spec.backend, dict(self.spec.backend_options))] + [
                    (b, {}) for b in backends or () if b != self.spec.backend]:
                e = entry(backend)
                # the test double loads no model: only its optional stand-in library
                names += [] if e.test_double else ["torch", "transformers", *HEAVY_LIBRARIES.get(e.module, ()),
                                                   "transformers.modeling_utils",
                                                   *([f"transformers.models.{model_type}.modeling_{model_type}"]
                                                     if model_type else [])]
                names += [lib for lib in [dict(e.options, **options).get("library")] if lib]
            for name in dict.fromkeys(names):
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 -- load() reports a library that is missing or broken
                    pass
            self._imports_s = round(time.perf_counter() - t0, 3)
        if cuda and self.spec.device == "cuda" and self._cuda_s is None:
            t0 = time.perf_counter()
            try:
                import torch

                torch.cuda.init()
                torch.cuda.synchronize()  # the primary context exists from here; nothing is allocated
            except Exception:  # noqa: BLE001 -- no usable GPU: load() reports it
                pass
            self._cuda_s = round(time.perf_counter() - t0, 3)
        return {"imports_s": self._imports_s, "cuda_context_s": self._cuda_s}

    def load(self) -> dict:
        from ..backends import get_backend
        from ..scenarios import scenario_for

        spec = self.spec
        imports_s = self.imports()["imports_s"]
        backend = get_backend(spec.backend, dict(spec.backend_options))
        identity = backend.identity(spec.device, spec.mode)
        reason = backend.unavailable_reason(spec.device)
        if reason:
            # `environment`: the backend on this device in this interpreter, whatever the model or mode
            return {"status": Status.UNAVAILABLE, "reason": f"{spec.backend}: {reason}", "identity": identity,
                    "scope": "environment"}
        if spec.device == "cuda":
            import torch

            torch.cuda.init()
            self._pin(self.model_options.get("pin_cpu", True))
        try:
            from ..models import ensure_available

            source = self._source()
            ensure_available(source)
            M.reset_peak(spec.device)
            load_ms, self.loaded = M.wall_ms(lambda: backend.load(source, spec.device, spec.mode), spec.device)
        except BackendUnavailable as exc:
            return {"status": Status.UNAVAILABLE, "reason": str(exc), "identity": identity}
        except QuantperfError as exc:
            return {"status": Status.ERROR, "reason": str(exc), "identity": identity}
        except Exception as exc:  # a failing load is one clear line, not a traceback
            if is_oom(exc):
                return {"status": Status.ERROR,
                        "reason": f"{spec.backend}: out of memory loading {spec.model} on {spec.device}",
                        "identity": identity}
            if isinstance(exc, ImportError):
                return {"status": Status.UNAVAILABLE, "reason": f"{spec.backend}: {exc}", "identity": identity}
            from ..models import describe_load_error

            said = describe_load_error(exc, spec.model) or f"load failed: {type(exc).__name__}: {exc}"
            return {"status": Status.ERROR, "reason": f"{spec.backend}: {' '.join(said.split())}", "identity": identity}
        if spec.device == "cpu" and self.loaded.options.get("intra_op_num_threads") == 1:
            # a single-threaded runtime (ORT here) gets one core of its own for the whole run
            self._pin(self.model_options.get("pin_cpu", True))
        self.scenario = scenario_for(spec.mode)(spec, self.loaded, self.settings)
        mode_reason = self.scenario.unsupported()
        if mode_reason:
            return {"status": Status.MODE_UNSUPPORTED, "reason": mode_reason, "identity": identity}
        return {
            "status": Status.OK,
            "identity": identity,
            "arch": asdict(self.loaded.arch) | {"size_class": self.loaded.arch.size_class},
            "source_meta": source.meta,
            "load_ms": round(load_ms, 1),
            "imports_s": imports_s,
            "load_memory": M.memory_snapshot(spec.device),
            "weight_bytes": self.loaded.weight_bytes(),
            "streamed_weight_bytes": self.loaded.streamed_weight_bytes(),
            "kv_bytes_per_element": self.loaded.kv_bytes_per_element(),
            "execution": self.loaded.execution_report() | {"threads": self._threads()},
            "injected_delay_ms": M.injected_delay_ms(spec.backend),
        }

    def _threads(self) -> dict:
        """Thread counts and the cores this worker runs on: recorded with every result."""
        out: dict = {"affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
        torch = sys.modules.get("torch")  # imported by every real backend's load; a test double runs without it
        if torch is not None:
            out["torch_intra_op"] = torch.get_num_threads()
            out["torch_inter_op"] = torch.get_num_interop_threads()
        if self.loaded is not None and "intra_op_num_threads" in self.loaded.options:
            out["ort_intra_op"] = self.loaded.options["intra_op_num_threads"]
        return out

    def _pin(self, on: bool) -> None:
        """Pin the driving thread to one core (launch latency then does not depend on the
        scheduler), or give it every core it started with."""
        if self._all_cpus:
            os.sched_setaffinity(0, {max(self._all_cpus)} if on else self._all_cpus)

    def configure(self, inject_ms: float | None = None, gc_off: bool | None = None, pin_cpu: bool | None = None,
                  tokens_factor: int | None = None, shapes: list[str] | None = None,
                  lm_head: bool | None = None, sample_budget_ms: float | None = None) -> dict:
        """Change measurement settings between rounds of one loaded model: the sensitivity
        experiment's injected per-token delay and its noise-reduction ablations; kernel mode's
        `shapes`, `lm_head` and `sample_budget_ms` (the A/B's shared pairs time the decode shape's
        decoder-layer projections alone, what its statistic uses, with a smaller budget per sample;
        the lm_head is timed for the figures only)."""
        self.settings["inject_ms"] = inject_ms
        if shapes is not None:
            self.settings["shapes"] = tuple(shapes)
        if lm_head is not None:
            self.settings["lm_head"] = lm_head
        if sample_budget_ms is not None:
            self.settings["sample_budget_ms"] = sample_budget_ms
        if gc_off is not None:
            self.settings["gc_off"] = gc_off
        if tokens_factor is not None:
            self.settings["tokens_factor"] = tokens_factor
        if pin_cpu is not None:
            self.model_options["pin_cpu"] = pin_cpu
            self._pin(pin_cpu)
        if self.scenario is not None:
            self.scenario.settings.update(self.settings)
        return dict(self.settings) | {"pin_cpu": self.model_options.get("pin_cpu", True)}

    def build(self) -> dict:
        """The warm-up's untimed work, ahead of warmup(): kernel mode's layer copies and captured
        inputs (Scenario.build). A pair's two processes build at once; their warm-ups, which time, do not."""
        return {"status": Status.OK, "warmup_times": self.scenario.warmup_times()} | self.scenario.build()

    def warmup(self, rounds: int | None = None) -> dict:
        n = self.spec.workload.warmup_rounds if rounds is None else rounds
        t0 = time.perf_counter()
        # what is loaded stays until close(): out of the collector's sight, so the collection
        # before each round (outside its timed region) takes microseconds, not 0.1-0.2 s of a
        # process with torch and transformers imported
        gc.collect()
        gc.freeze()
        M.reset_peak(self.spec.device)
        out = {"status": Status.OK} | self.scenario.warmup(n)
        gc.collect()  # and what the warm-up made (graph mode's compiled code, kernel mode's graphs and walks)
        gc.freeze()
        return out | {"warmup_s": round(time.perf_counter() - t0, 2)}

    def rounds(self, n: int) -> list[dict]:
        """`n` measured rounds; a throttled or invalid round is retried once and flagged if still so."""
        out = []
        for _ in range(n):
            r = self.scenario.round()
            if r.get("throttled") or r.get("invalid"):
                # a throttled round, or a graph-mode round during which torch compiled: once more
                retry = self.scenario.round()
                retry["retried_after_throttle" if r.get("throttled") else "retried_after_invalid"] = (
                    r.get("throttle_reasons") or r.get("invalid"))
                r = retry
            out.append(r)
        return out

    def memory(self) -> dict:
        return M.memory_snapshot(self.spec.device)

    def runtime(self) -> dict:
        """The runtime identity of what this worker loaded and ran (quantperf.fidelity), read back
        after its rounds: the KV-cache class is known once generate has run."""
        from ..fidelity import runtime_identity

        return self.loaded.runtime() if self.loaded is not None else runtime_identity()

    def quality(self, params: dict) -> dict:
        """One pass of the quality scenario (params: role, file, context, max_windows, corpus)."""
        from ..scenarios.quality import QualityScenario

        return QualityScenario(self.spec, self.loaded, params).round()

    def close(self) -> None:
        gc.unfreeze()  # what warmup() froze can be collected again once the model is given back
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    # -- a process that hosts several configurations in turn (quantperf.experiments.shared) --------
    def unload(self) -> dict:
        """Give back this configuration's model and memory; `fresh_needed` says why this process must
        not host another configuration (None: it may)."""
        self.close()
        self.scenario = None
        from ..scenarios import kernel

        broken = kernel.capture_broken()
        return {"fresh_needed": "a CUDA graph capture failed in this process (later captures would be timed "
                                "eagerly)" if broken else None}

    def switch(self, spec: dict) -> dict:
        """Unload, then take `spec` as this process's configuration (its imports are done by load),
        with the measurement settings a fresh process starts with."""
        out = self.unload()
        self.spec = RunSpec.from_dict(spec)
        self._imports_s = None
        self.settings = {"gc_off": True, "inject_ms": None, "tokens_factor": 1}
        return out

    def call(self, method: str, kwargs: dict) -> Any:
        if method not in METHODS:
            raise ValueError(f"unknown worker method {method!r}")
        return getattr(self, method)(**kwargs)


class WorkerCrashed(QuantperfError):
    pass


EXIT_TIMEOUT_S = 20  # the worker exits without teardown; longer means it hangs: killed


class ProcessWorker:
    """The same interface as LocalWorker, in a fresh `python -m quantperf.workers` process.

    `python`: the interpreter (default: this one); `env`: variables added to this process's
    environment for the child (e.g. a PYTHONPATH overlay with other library versions)."""

    def __init__(self, spec: RunSpec, model_options: dict | None = None, python: str | None = None,
                 env: dict | None = None):
        self.spec = spec
        request_timeout_s()  # a bad QUANTPERF_WORKER_TIMEOUT_S is one ConfigError before any process starts
        self._log = tempfile.NamedTemporaryFile(prefix="quantperf-worker-", suffix=".log", delete=False)
        child_env = dict(os.environ)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        child_env.update(env or {})
        # quantperf decides whether Hub kernels load, not the caller's environment: off in every worker
        # (a configuration that asks for them turns them on in its own worker, quantperf.fidelity)
        child_env[HUB_KERNELS_ENV] = "NO"
        # The project root must stay importable in the child when quantperf is not installed.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (child_env.get("PYTHONPATH"), root) if p)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "quantperf.workers"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=child_env, text=True,
        )
        self.info = self._request("init", {"spec": spec.to_dict(), "model_options": model_options or {},
                                           "protocol": PROTOCOL})
        self.start_s = round(time.monotonic() - t0, 3)  # spawn until the worker answered hello

    def _stderr_tail(self, n: int = 2000) -> str:
        try:
            with open(self._log.name, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-n:]
        except OSError:
            return ""

    def _dump_stacks(self, wait_s: float = 5.0) -> None:
        """Ask a silent worker for every thread's Python stack (faulthandler, registered by
        quantperf.workers on SIGUSR1; it answers even from inside a blocking C call) and give it
        `wait_s` to write it to its stderr log, which the error then quotes."""
        sig = getattr(signal, STACK_SIGNAL, None)
        if sig is None or self.proc.poll() is not None:
            return
        before = os.path.getsize(self._log.name)
        self.proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        size = before
        while time.monotonic() < deadline:  # written once it stops growing
            time.sleep(0.2)
            if self.proc.poll() is not None:  # not yet listening: the signal's default action ended it
                return
            now = os.path.getsize(self._log.name)
            if now > before and now == size:
                return
            size = now

    def _request(self, method: str, kwargs: dict) -> Any:
        if self.proc.poll() is not None:
            raise WorkerCrashed(
                f"worker for {self.spec.id} exited with code {self.proc.returncode}: {self._stderr_tail()}"
            )
        timeout = request_timeout_s()
        self.proc.stdin.write(json.dumps({"method": method, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        # one reply per request, read whole: nothing is left in the buffer between requests,
        # so select() on the pipe tells whether the worker is still silent
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self._dump_stacks()
            self.proc.kill()
            raise WorkerCrashed(
                f"worker for {self.spec.id} gave no answer to {method!r} within {timeout:.0f} s "
                f"(set {WORKER_TIMEOUT_ENV} to allow more); "
                f"where it was, and its stderr tail:\n{self._stderr_tail(6000)}"
            )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            code = self.proc.returncode
            hint = " (killed: out of host memory?)" if code in (-9, 137) else ""
            raise WorkerCrashed(
                f"worker for {self.spec.id} died during {method!r} with code {code}{hint}; "
                f"stderr tail:\n{self._stderr_tail()}"
            )
        reply = json.loads(line)
        if "error" in reply:
            cls = {"ConfigError": ConfigError, "ModeUnsupported": ModeUnsupported,
                   "BackendUnavailable": BackendUnavailable}.get(reply["error"], QuantperfError)
            raise cls(reply["message"])
        return reply["result"]

    def __getattr__(self, method: str):
        if method.startswith("_") or method not in METHODS:
            raise AttributeError(method)
        return lambda **kwargs: self._request(method, kwargs)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._request("close", {})
                self.proc.stdin.write(json.dumps({"method": "exit", "kwargs": {}}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=EXIT_TIMEOUT_S)
        except Exception:
            self.proc.kill()
        finally:
            try:
                os.unlink(self._log.name)
            except OSError:
                pass


def open_worker(spec: RunSpec, isolation: str = "process", model_options: dict | None = None,
                python: str | None = None, env: dict | None = None):
    """A worker for `spec`: in a fresh process (default), or in this one (`inprocess`)."""
    if isolation == "process":
        return ProcessWorker(spec, model_options, python, env)
    if isolation == "inprocess":
        if python or env:
            raise ConfigError("a worker on another interpreter or environment needs isolation='process'")
        return LocalWorker(spec, model_options)
    raise ConfigError(f"isolation must be 'process' or 'inprocess', got {isolation!r}")


class StartFailed(QuantperfError):
    """A fresh process failed to start (`step` "start") or in its imports (`step` "imports")."""

    def __init__(self, step: str, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}" if not isinstance(exc, QuantperfError) else str(exc))
        self.step, self.cause = step, exc


def start_worker(spec: RunSpec, model_options: dict | None = None, python: str | None = None,
                 env: dict | None = None, backends: list[str] | None = None, timed: dict | None = None,
                 cuda: bool = False, spawned=None):
    """A fresh process worker for `spec`, spawned and its heavy imports done (those of `backends`
    too), no model read and, unless `cuda`, no CUDA context: what is started ahead of its turn, in
    a thread, while something that measures nothing goes on (`cuda` only where nothing is measured
    on the GPU meanwhile). The wall seconds of each step are added to `timed` (start, imports: the
    CUDA context's are in imports). `spawned(worker)` is called once the process answers, before its
    imports (a caller that pauses it meanwhile: quantperf.experiments.ahead). A failure closes what
    was started and raises StartFailed naming the step."""
    from .. import phases as P

    timed = {} if timed is None else timed
    with P.timed(timed, "start"):
        try:
            worker = open_worker(spec, "process", dict(model_options or {}), python, env)
        except Exception as exc:
            raise StartFailed("start", exc) from exc
    if spawned is not None:
        spawned(worker)
    with P.timed(timed, "imports"):
        try:
            worker.imports(**({"backends": list(backends)} if backends else {}), **({"cuda": True} if cuda else {}))
        except Exception as exc:
            worker.close()
            raise StartFailed("imports", exc) from exc
    return worker
