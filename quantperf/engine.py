"""Run configurations: load a backend, warm up, time fixed-work rounds, read memory.

A *worker* holds one loaded model. `LocalWorker` runs in this process; `ProcessWorker`
runs the same methods in a fresh Python process (the default), so one backend's memory
figures, compiled graphs and allocator state never leak into the next. The cost is one
interpreter start plus imports per configuration (a few seconds).

    >>> from quantperf import RunSpec, Workload, measure
    >>> r = measure(RunSpec("synthetic:llama-1b", "bnb-int8", device="cuda",
    ...                     workload=Workload(batch_size=1, prompt_tokens=128, new_tokens=64)))
    >>> r.metrics["decode_tokens_per_s"].summary.median
"""

from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from . import trackers as M
from .errors import BackendUnavailable, ConfigError, ModeUnsupported, QuantperfError
from .results import Metric, RunResult
from .spec import RunSpec
from .stats import interleaved_order

PROMPT_SEED = 1234
WORKER_TIMEOUT_ENV = "QUANTPERF_WORKER_TIMEOUT_S"
# A hung worker (a wedged GPU, a deadlocked library) must not hang the suite: one request
# (a load, a set of rounds, a quality pass) gets this long.
WORKER_TIMEOUT_S = float(os.environ.get(WORKER_TIMEOUT_ENV, "1800"))


def prompt_ids(vocab_size: int, batch_size: int, prompt_tokens: int, seed: int = PROMPT_SEED):
    """Deterministic prompt token ids (low ids skipped: they are special tokens in most vocabularies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(10, vocab_size, size=(batch_size, prompt_tokens), dtype=np.int64)


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


class LocalWorker:
    """One loaded configuration. Every method returns JSON-able data (so it can be proxied)."""

    def __init__(self, spec: RunSpec, model_options: dict | None = None):
        self.spec = spec
        self.model_options = model_options or {}
        self.loaded = None
        self.backend = None
        self.inject_ms: float | None = None  # per-token delay set by configure() (sensitivity experiment)
        self._all_cpus: set[int] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def prepare(self) -> dict:
        """Build the checkpoint and the backend's cached artifacts if missing. Failures are left
        to load(), which reports them; `built` says whether one-time work happened here."""
        from .backends import get_backend
        from .models import resolve

        spec = self.spec
        try:
            backend = get_backend(spec.backend)
            if backend.unavailable_reason(spec.device):
                return {"built": False}
            t0 = time.perf_counter()
            source = resolve(spec.model, local_files_only=self.model_options.get("local_files_only", False),
                             trust_remote_code=self.model_options.get("trust_remote_code", False))
            built = backend.prepare(source, spec.device) or source.built
            return {"built": bool(built), "prepare_s": round(time.perf_counter() - t0, 1)}
        except Exception:
            return {"built": False}

    def load(self) -> dict:
        from .backends import get_backend
        from .models import resolve

        spec = self.spec
        self.backend = get_backend(spec.backend)
        identity = self.backend.identity(spec.device)
        reason = self.backend.unavailable_reason(spec.device)
        if reason:
            return {"status": "unavailable", "reason": f"{spec.backend}: {reason}", "identity": identity}
        if spec.device == "cuda":
            import torch

            torch.cuda.init()
            if hasattr(os, "sched_setaffinity"):
                self._all_cpus = set(os.sched_getaffinity(0))
                self._pin(self.model_options.get("pin_cpu", True))
        try:
            source = resolve(spec.model, local_files_only=self.model_options.get("local_files_only", False),
                             trust_remote_code=self.model_options.get("trust_remote_code", False))
            M.reset_peak(spec.device)
            load_ms, self.loaded = M.wall_ms(lambda: self.backend.load(source, spec.device), spec.device)
        except BackendUnavailable as exc:
            return {"status": "unavailable", "reason": str(exc), "identity": identity}
        except QuantperfError as exc:
            return {"status": "error", "reason": str(exc), "identity": identity}
        except Exception as exc:  # a failing load is one clear line, not a traceback
            if _is_oom(exc):
                return {"status": "error", "reason": f"{spec.backend}: out of memory loading {spec.model} on {spec.device}",
                        "identity": identity}
            if isinstance(exc, ImportError):
                return {"status": "unavailable", "reason": f"{spec.backend}: {exc}", "identity": identity}
            return {"status": "error", "reason": f"{spec.backend}: load failed: {type(exc).__name__}: {exc}",
                    "identity": identity}
        mode_reason = self.loaded.supports_mode(spec.mode)
        if mode_reason:
            return {"status": "mode-unsupported", "reason": mode_reason, "identity": identity}
        load_memory = M.memory_snapshot(spec.device)
        return {
            "status": "ok",
            "identity": identity,
            "arch": asdict(self.loaded.arch) | {"size_class": self.loaded.arch.size_class},
            "source_meta": source.meta,
            "load_ms": round(load_ms, 1),
            "load_memory": load_memory,
            "weight_bytes": self.loaded.weight_bytes(),
            "streamed_weight_bytes": self.loaded.streamed_weight_bytes(),
            "kv_bytes_per_element": self.loaded.kv_bytes_per_element(),
            "execution": self.loaded.execution_report(),
            "injected_delay_ms": M.injected_delay_ms(spec.backend),
        }

    def _pin(self, on: bool) -> None:
        """Pin the driving thread to one core (launch latency then does not depend on the
        scheduler), or give it every core it started with."""
        if self._all_cpus:
            os.sched_setaffinity(0, {max(self._all_cpus)} if on else self._all_cpus)

    def configure(self, inject_ms: float | None = None, gc_off: bool | None = None, pin_cpu: bool | None = None) -> dict:
        """Change measurement settings between rounds of one loaded model: the sensitivity
        experiment's injected per-token delay and its noise-reduction ablations."""
        self.inject_ms = inject_ms
        if gc_off is not None:
            self.model_options["gc_off"] = gc_off
        if pin_cpu is not None:
            self.model_options["pin_cpu"] = pin_cpu
            self._pin(pin_cpu)
        return {"inject_ms": inject_ms, "gc_off": self.model_options.get("gc_off", True),
                "pin_cpu": self.model_options.get("pin_cpu", True)}

    def _ids(self):
        w = self.spec.workload
        return prompt_ids(self.loaded.arch.vocab_size, w.batch_size, w.prompt_tokens)

    def _one_round(self, new_tokens: int | None = None) -> dict:
        w, spec = self.spec.workload, self.spec
        new_tokens = new_tokens or w.new_tokens
        clock = M.TokenClock(spec.device, new_tokens, spec.backend, self.inject_ms)
        gc_off = self.model_options.get("gc_off", True)
        gc.collect()
        before = M.gpu_state() if spec.device == "cuda" else None
        if gc_off:
            gc.disable()
        try:
            tokens = self.loaded.run_round(self._ids(), new_tokens, spec.mode, clock)
            timing = clock.finish()
        finally:
            if gc_off:
                gc.enable()
        after = M.gpu_state() if spec.device == "cuda" else None
        throttled, reasons = M.throttle_verdict(before, after)
        if len(tokens[0]) != new_tokens:
            raise RuntimeError(f"{spec.backend} generated {len(tokens[0])} tokens, expected exactly {new_tokens}")
        return {
            "prefill_ms": timing.prefill_ms,
            "decode_ms": timing.decode_ms,
            "total_ms": timing.total_ms,
            "throttled": throttled,
            "throttle_reasons": reasons,
            "sm_clock_mhz": [s.sm_clock_mhz if s else None for s in (before, after)],
            "temperature_c": [s.temperature_c if s else None for s in (before, after)],
            "first_tokens": tokens[0][:8],
        }

    def warmup(self, rounds: int | None = None) -> dict:
        n = self.spec.workload.warmup_rounds if rounds is None else rounds
        if self.spec.mode == "graph":
            n = max(n, 2)  # the first static-cache rounds compile
        t0 = time.perf_counter()
        M.reset_peak(self.spec.device)
        for _ in range(n):
            self._one_round()
        try:
            self.loaded.after_warmup(self.spec.mode)
        except ModeUnsupported as exc:
            return {"status": "mode-unsupported", "reason": str(exc)}
        return {"status": "ok", "warmup_rounds": n, "warmup_s": round(time.perf_counter() - t0, 2)}

    def rounds(self, n: int, new_tokens: int | None = None) -> list[dict]:
        """`n` measured rounds (of `new_tokens`, default the workload's); a throttled round is
        retried once and flagged if still throttled."""
        out = []
        for _ in range(n):
            r = self._one_round(new_tokens)
            if r["throttled"]:
                retry = self._one_round(new_tokens)
                retry["retried_after_throttle"] = r["throttle_reasons"]
                r = retry
            out.append(r)
        return out

    def memory(self) -> dict:
        return M.memory_snapshot(self.spec.device)

    def generate_text(self, prompts: list[str], new_tokens: int = 32) -> list[str]:
        """Greedy continuations of text prompts (needs a tokenizer; the fixture model has one)."""
        from transformers import AutoTokenizer

        from .models import resolve

        source = resolve(self.spec.model)
        if not source.tokenizer:
            return []
        tok = AutoTokenizer.from_pretrained(source.path_or_id, **{k: v for k, v in source.load_kwargs().items() if k != "use_safetensors"})
        texts = []
        for p in prompts:
            ids = [tok(p)["input_ids"]]
            clock = M.TokenClock(self.spec.device, new_tokens)
            out = self.loaded.run_round(ids, new_tokens, "eager", clock)
            texts.append(tok.decode(out[0]))
        return texts

    def quality(self, params: dict) -> dict:
        from .quality import worker_quality

        return worker_quality(self, params)

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    def call(self, method: str, kwargs: dict) -> Any:
        if method not in {"prepare", "load", "warmup", "rounds", "configure", "memory", "quality", "generate_text", "close"}:
            raise ValueError(f"unknown worker method {method!r}")
        return getattr(self, method)(**kwargs)


class WorkerCrashed(QuantperfError):
    pass


class ProcessWorker:
    """The same interface as LocalWorker, in a fresh `python -m quantperf.worker` process."""

    def __init__(self, spec: RunSpec, model_options: dict | None = None):
        self.spec = spec
        self._log = tempfile.NamedTemporaryFile(prefix="quantperf-worker-", suffix=".log", delete=False)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # The project root must stay importable in the child when quantperf is not installed.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quantperf.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
        )
        self._request("init", {"spec": spec.to_dict(), "model_options": model_options or {}})

    def _stderr_tail(self, n: int = 2000) -> str:
        try:
            with open(self._log.name, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-n:]
        except OSError:
            return ""

    def _request(self, method: str, kwargs: dict) -> Any:
        if self.proc.poll() is not None:
            raise WorkerCrashed(f"worker for {self.spec.id} exited with code {self.proc.returncode}: {self._stderr_tail()}")
        self.proc.stdin.write(json.dumps({"method": method, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        # one reply per request, read whole: nothing is left in the buffer between requests,
        # so select() on the pipe tells whether the worker is still silent
        ready, _, _ = select.select([self.proc.stdout], [], [], WORKER_TIMEOUT_S)
        if not ready:
            self.proc.kill()
            raise WorkerCrashed(
                f"worker for {self.spec.id} gave no answer to {method!r} within {WORKER_TIMEOUT_S:.0f} s "
                f"(set {WORKER_TIMEOUT_ENV} to allow more); stderr tail:\n{self._stderr_tail()}"
            )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            code = self.proc.returncode
            hint = " (killed: out of host memory?)" if code in (-9, 137) else ""
            raise WorkerCrashed(
                f"worker for {self.spec.id} died during {method!r} with code {code}{hint}; stderr tail:\n{self._stderr_tail()}"
            )
        reply = json.loads(line)
        if "error" in reply:
            cls = {"ConfigError": ConfigError, "ModeUnsupported": ModeUnsupported,
                   "BackendUnavailable": BackendUnavailable}.get(reply["error"], QuantperfError)
            raise cls(reply["message"])
        return reply["result"]

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **kwargs: self._request(method, kwargs)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._request("close", {})
                self.proc.stdin.write(json.dumps({"method": "exit", "kwargs": {}}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        finally:
            try:
                os.unlink(self._log.name)
            except OSError:
                pass


def open_worker(spec: RunSpec, isolation: str = "process", model_options: dict | None = None):
    if isolation == "process":
        return ProcessWorker(spec, model_options)
    if isolation == "inprocess":
        return LocalWorker(spec, model_options)
    raise ConfigError(f"isolation must be 'process' or 'inprocess', got {isolation!r}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_result(spec: RunSpec, loaded: dict, rounds: list[dict], memory: dict, environment: dict, profile: str,
                 extra_timings: dict | None = None) -> RunResult:
    """Turn worker outputs into a RunResult: per-round samples, memory, roofline, validity."""
    from . import roofline as R

    w = spec.workload
    decode = [w.batch_size * len(r["decode_ms"]) / (sum(r["decode_ms"]) / 1e3) for r in rounds]
    e2e = [w.batch_size * w.new_tokens / (r["total_ms"] / 1e3) for r in rounds]
    prefill = [r["prefill_ms"] for r in rounds]
    metrics = {
        "decode_tokens_per_s": Metric.of("decode_tokens_per_s", decode),
        "e2e_tokens_per_s": Metric.of("e2e_tokens_per_s", e2e),
        "prefill_ms": Metric.of("prefill_ms", prefill),
        "weight_mib": Metric.of("weight_mib", [loaded["weight_bytes"] / M.MIB]),
        "host_peak_rss_mib": Metric.of("host_peak_rss_mib", [memory["host_peak_rss_mib"]]),
    }
    if spec.device == "cuda":
        metrics["peak_allocated_mib"] = Metric.of("peak_allocated_mib", [memory["peak_allocated_mib"]])
        if memory.get("nvml_process_mib") is not None:
            metrics["nvml_process_mib"] = Metric.of("nvml_process_mib", [memory["nvml_process_mib"]])
    arch = loaded["arch"]
    traffic = R.decode_traffic(
        loaded["streamed_weight_bytes"], arch["num_layers"], arch["num_kv_heads"], arch["head_dim"],
        w.prompt_tokens, w.new_tokens, w.batch_size, loaded["kv_bytes_per_element"],
    )
    steps_per_s = metrics["decode_tokens_per_s"].value / w.batch_size
    achieved = R.achieved_bandwidth_gbps(traffic.total, steps_per_s)
    gpu = environment.get("gpu") or {}
    peak = gpu.get("peak_bandwidth_gbps") if spec.device == "cuda" else None
    roof = {
        "bytes_per_decode_step": traffic.total,
        "weight_bytes_per_step": traffic.weight_bytes,
        "kv_bytes_per_step": traffic.kv_cache_bytes,
        "achieved_gbps": round(achieved, 2),
        "peak_gbps": peak,
        "fraction_of_peak": None if not peak else round(R.roofline_fraction(achieved, peak), 4),
        "roofline_tokens_per_s": None if not peak else round(R.roofline_tokens_per_s(traffic.total, peak, w.batch_size), 1),
    }
    throttled = [i for i, r in enumerate(rounds) if r["throttled"]]
    validity = {
        "valid": not throttled,
        "throttled_rounds": throttled,
        "retried_rounds": [i for i, r in enumerate(rounds) if r.get("retried_after_throttle")],
        "sm_clock_mhz": [r["sm_clock_mhz"] for r in rounds],
        "temperature_c": [r["temperature_c"] for r in rounds],
        "other_gpu_processes": memory.get("other_gpu_processes", []),
    }
    return RunResult(
        spec=spec, status="ok", profile=profile, backend_identity=loaded["identity"], metrics=metrics,
        memory={"after_load": loaded["load_memory"], "after_rounds": memory}, roofline=roof, validity=validity,
        arch=arch | {"source": loaded.get("source_meta", {})}, execution=loaded.get("execution", {}),
        environment=environment, timings={"load_ms": loaded["load_ms"], **(extra_timings or {}),
                                          "per_round_decode_ms_median": [sorted(r["decode_ms"])[len(r["decode_ms"]) // 2] for r in rounds]},
        injected_delay_ms=loaded.get("injected_delay_ms", 0.0), timestamp=_now(),
    )


def _not_measured(spec, status, reason, identity, environment, profile) -> RunResult:
    return RunResult(spec=spec, status=status, reason=reason, backend_identity=identity or {},
                     environment=environment, profile=profile, timestamp=_now())


def measure_many(specs: list[RunSpec], *, isolation: str = "process", interleave: bool = False,
                 model_options: dict | None = None, environment: dict | None = None, profile: str | None = None,
                 quality: dict | None = None, more_rounds=None, max_rounds: int | None = None) -> list[RunResult]:
    """Measure configurations. With `interleave`, all are loaded at once and their rounds
    alternate in ABBA order, so drift hits every side alike (what A/B claims need).

    Adaptive rounds: with `more_rounds(samples_by_config_id) -> bool` and `max_rounds`, an
    interleaved comparison that is still inconclusive gets more ABBA blocks, up to `max_rounds`
    per side; the result's timings say how many extra rounds were added."""
    from .envinfo import environment as env_fn, profile_id

    environment = environment or env_fn()
    profile = profile or profile_id("cuda" if any(s.device == "cuda" for s in specs) else "cpu")
    results: dict[str, RunResult] = {}
    workers: dict[str, Any] = {}
    loaded: dict[str, dict] = {}
    warm: dict[str, dict] = {}
    try:
        def start(spec):
            worker = open_worker(spec, isolation, model_options)
            prepared = worker.prepare()
            if prepared["built"] and isolation == "process":
                # one-time work (a checkpoint build, an export) inflates a process's peak
                # memory: measure in a fresh process that only loads the cached result
                worker.close()
                worker = open_worker(spec, isolation, model_options)
            workers[spec.id] = worker
            info = worker.load()
            if info["status"] == "ok":
                wu = worker.warmup()
                if wu["status"] != "ok":
                    info = {"status": wu["status"], "reason": wu["reason"], "identity": info["identity"]}
                else:
                    warm[spec.id] = wu | ({"prepared_first_s": prepared["prepare_s"]} if prepared["built"] else {})
            if info["status"] != "ok":
                results[spec.id] = _not_measured(spec, info["status"], info["reason"], info.get("identity"), environment, profile)
                worker.close()
                workers.pop(spec.id)
            else:
                loaded[spec.id] = info

        def finish(spec, rounds):
            worker = workers.pop(spec.id)
            memory = worker.memory()
            res = build_result(spec, loaded[spec.id], rounds, memory, environment, profile,
                               {k: v for k, v in warm[spec.id].items() if k != "status"})
            if quality:
                res.quality = worker.quality(params=quality)
            worker.close()
            results[spec.id] = res

        if interleave:
            for spec in specs:
                start(spec)
            live = [s for s in specs if s.id in loaded]
            n = max((s.workload.rounds for s in live), default=0)
            collected: dict[str, list] = {s.id: [] for s in live}
            for sid in interleaved_order([s.id for s in live], n):
                collected[sid].extend(workers[sid].rounds(n=1))
            extra = 0
            while more_rounds and max_rounds and n + extra < max_rounds and len(live) > 1:
                samples = {sid: [len(r["decode_ms"]) / sum(r["decode_ms"]) for r in rs] for sid, rs in collected.items()}
                if not more_rounds(samples):
                    break
                for sid in interleaved_order([s.id for s in live], 2):
                    collected[sid].extend(workers[sid].rounds(n=1))
                extra += 2
            for spec in live:
                warm[spec.id]["adaptive_extra_rounds"] = extra
                warm[spec.id]["interleaved_with"] = [s.id for s in live if s.id != spec.id]
                finish(spec, collected[spec.id])
        else:
            for spec in specs:
                start(spec)
                if spec.id in loaded:
                    finish(spec, workers[spec.id].rounds(n=spec.workload.rounds))
    except Exception as exc:
        for spec in specs:
            if spec.id not in results:
                reason = f"{type(exc).__name__}: {exc}"
                status = "error"
                if _is_oom(exc):
                    reason = f"{spec.backend}: out of memory running {spec.model} on {spec.device}"
                results[spec.id] = _not_measured(spec, status, reason, loaded.get(spec.id, {}).get("identity"), environment, profile)
    finally:
        for w in workers.values():
            w.close()
    return [results[s.id] for s in specs]


def measure(spec: RunSpec, **kwargs) -> RunResult:
    """Measure one configuration (in a fresh process unless isolation='inprocess')."""
    return measure_many([spec], **kwargs)[0]
