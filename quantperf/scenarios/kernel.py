"""The `kernel` scenario (mode `kernel`): the model's own loaded linear modules timed alone, at
decode shape (batch x 1 token) and prefill shape (batch x prompt), fed with real activations.

Why: HF `generate` at batch 1 measures Python and launch overhead as much as the quantized
kernels (eager CV 10-20% on an H200); a library upgrade that changes a kernel by a few percent
is invisible end to end and plain here.

How (CUDA): forward pre-hooks capture each linear's input on one real prompt (random inputs
never take bitsandbytes' outlier path). For each module type (q, k, v, o, gate, up, down) one
CUDA graph walks that module across all layers (a working set far larger than L2), captured on a
side stream after warm-up; a sample is `replays` graph replays between two CUDA events (50, fewer
only for a walk too slow for SAMPLE_BUDGET_US, or the `sample_budget_ms` setting of an A/B's shared
pairs, decided once before the first sample); the SM
clock is read per sample. Where capture fails (bitsandbytes LLM.int8 with its outlier threshold
syncs with the host), the process never captures again (a failed capture leaves CUDA's RNG state
broken) and times K back-to-back walks between events instead, labelled `eager-timed`: results of
different methods are never compared. On the CPU the walks are timed with perf_counter
(`cpu-timed`). A transformers backend loads one decoder layer in kernel mode and walks layer 0's
modules and L-1 copies of them (quantperf.scenarios.walk, quantperf.backends.layer);
`QUANTPERF_KERNEL_WALK=full` loads and walks every layer. The walk is recorded in the figures
(`walk`) and, for the layer walk, in the backend identity, so the two are never gated together.
ONNX Runtime backends time each projection's node(s) cut out of their own graph
(quantperf.backends.ort.kernel).

A round is one timing pass: SAMPLES samples of every module type at both shapes (the workload's
5 rounds give 15 samples per type and shape). Its metrics
are the microseconds per decoder layer (the sum over the seven types of the per-call median) at
decode and at prefill shape; the per-type figures (us per call, CV, bytes, GB/s against the peak
and a measured copy bandwidth, TFLOP/s at prefill) go to the result's `figures`.
"""

from __future__ import annotations

import statistics
import time

from .. import trackers as M
from ..results import Metric
from ..status import Status
from ..trackers import MIN_REPLAYS, SAMPLE_BUDGET_US, fit_replays  # noqa: F401 (kernel mode's, shared with ORT's)
from .base import Scenario
from .generate import prompt_ids
from .walk import layer_walk, walk_inputs

LINEAR_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
SHAPES = ("decode", "prefill")
L2_HOT_MARGIN = 1.05  # a figure above the measured copy bandwidth by more than this is L2-hot, not a result
EAGER_REPLAY_DIVISOR = 10
_CAPTURE_BROKEN = False  # a failed capture breaks CUDA's RNG state for later captures in this process


def linear_modules(model) -> tuple[dict[str, list], object]:
    """Per module type the list of per-layer modules of an HF decoder (LLaMA, Qwen2, Mistral
    layout), and the lm_head."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"kernel mode knows decoder models with `model.layers` (LLaMA, Qwen2, Mistral); "
                         f"{type(model).__name__} has none")
    out = {}
    for t in LINEAR_TYPES:
        parent = "self_attn" if t in ATTENTION else "mlp"
        out[t] = [getattr(getattr(layer, parent), t) for layer in layers]
    return out, getattr(model, "lm_head", None)


def capture_inputs(model, input_ids) -> dict[str, list]:
    """Each linear module's input on one real prompt ([batch, prompt, in_features])."""
    import torch

    mods, head = linear_modules(model)
    seen: dict[str, list] = {t: [None] * len(m) for t, m in mods.items()}
    seen["lm_head"] = [None]
    hooks = []

    def keeper(t, i):
        def hook(module, args):
            seen[t][i] = args[0].detach().clone()
        return hook

    for t, ms in mods.items():
        for i, m in enumerate(ms):
            hooks.append(m.register_forward_pre_hook(keeper(t, i)))
    if head is not None:
        hooks.append(head.register_forward_pre_hook(keeper("lm_head", 0)))
    try:
        with torch.inference_mode():
            model(torch.as_tensor(input_ids, device=model.device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def module_bytes(module, x, out_features: int) -> int:
    """Bytes one call moves: the weights as stored (quantized storage and scales) + input + output."""
    from ..backends.hf import module_weight_bytes

    return module_weight_bytes(module) + x.numel() * x.element_size() + x[...,
                                                                          :1].numel() * out_features * x.element_size()


def _out_features(module) -> int:
    return int(getattr(module, "out_features", None) or module.weight.shape[0])


def _in_features(module) -> int:
    return int(getattr(module, "in_features", None) or module.weight.shape[-1])


_COPY_GBPS: dict[str, float] = {}  # per device, once per process (a shared pair's next configuration reuses it)


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second / 1e9), once per
    process and device: a property of the device, not of the configuration loaded."""
    if device not in _COPY_GBPS:
        _COPY_GBPS[device] = _copy_bandwidth_gbps(device, nbytes)
    return _COPY_GBPS[device]


def _copy_bandwidth_gbps(device: str, nbytes: int) -> float:
    import torch

    n = nbytes // 2
    if device == "cuda":
        a = torch.empty(n, dtype=torch.float16, device="cuda")
        b = torch.empty_like(a)
        b.copy_(a)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            b.copy_(a)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / 10
        del a, b
        torch.cuda.empty_cache()
    else:
        n = min(n, 1 << 27)  # 256 MiB on the host is plenty to leave the caches
        a = torch.empty(n, dtype=torch.float16)
        b = torch.empty_like(a)
        b.copy_(a)
        t0 = time.perf_counter()
        for _ in range(5):
            b.copy_(a)
        seconds = (time.perf_counter() - t0) / 5
    return 2 * n * 2 / seconds / 1e9


def capture_broken() -> bool:
    """Whether a CUDA graph capture failed in this process (every later walk is timed eagerly)."""
    return _CAPTURE_BROKEN


class _Walk:
    """One module type across all layers at one shape, timed by the best method available."""

    def __init__(self, modules, inputs, device: str, inject_us: float | None, replays: int,
                 budget_us: float = SAMPLE_BUDGET_US):
        self.modules, self.inputs, self.device = modules, inputs, device
        self.inject_us, self.replays, self.budget_us = inject_us, replays, budget_us
        self.graph = None
        self.method = "cpu-timed" if device == "cpu" else "eager-timed"
        self.note = ""
        self.fitted = False
        if device == "cuda":
            self._capture()
            if self.graph is None:  # eager-timed walks are 10-100x slower: fewer per sample, fixed per config
                self.replays = max(1, replays // EAGER_REPLAY_DIVISOR)

    def fit(self) -> None:
        """Replays per sample, from one timed walk (once, before the walk's first sample: every round
        does the same work). Walks are built and fitted in the warm-up, one side at a time."""
        if not self.fitted:
            self.replays = fit_replays(self.replays, self._timed_us(1), self.budget_us)
            self.fitted = True

    def run(self) -> None:
        for m, x in zip(self.modules, self.inputs):
            m(x)
        if self.inject_us is not None:
            # One delay at the end of the walk (inject_us per module call on average): a sleep
            # kernel per call would cost more launch overhead than a small slowdown is worth.
            # inject_us = 0 keeps the (empty) sleep node, so that a clean side and a slowed side
            # differ by the calibrated delay only.
            total = self.inject_us * len(self.modules)
            if self.device == "cuda":
                import torch

                torch.cuda._sleep(int(total * M.sleep_cycles_per_us()))
            elif total:
                M._cpu_spin(total / 1e3)

    def _capture(self) -> None:
        global _CAPTURE_BROKEN
        import torch

        if self.inject_us is not None:
            M.sleep_cycles_per_us()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.run()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if _CAPTURE_BROKEN:
            self.note = "an earlier capture failed in this process: timed eagerly"
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.run()
        except Exception as exc:  # host syncs (bnb's outlier path) cannot be captured
            _CAPTURE_BROKEN = True
            self.note = f"CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]}): timed eagerly"
            torch.cuda.synchronize()
            return
        graph.replay()
        torch.cuda.synchronize()
        self.graph, self.method = graph, "cuda-graph"

    def sample_us(self) -> float:
        """Microseconds per module call over `replays` repetitions of the walk."""
        self.fit()
        return self._timed_us(self.replays) / (self.replays * len(self.modules))

    def _timed_us(self, walks: int) -> float:
        """Microseconds of `walks` back-to-back walks (CUDA events around the device work, or perf_counter)."""
        if self.device == "cuda":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(walks):
                self.graph.replay() if self.graph is not None else self.run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3
        t0 = time.perf_counter()
        for _ in range(walks):
            self.run()
        return (time.perf_counter() - t0) * 1e6


class KernelScenario(Scenario):
    name = "kernel"
    gated = ("kernel_decode_us_per_layer", "kernel_prefill_us_per_layer")
    primary = ("kernel_decode_us_per_layer", False)

    @classmethod
    def injection_unit_ms(cls, rounds: list[dict]) -> float:
        """What `inject_ms` is added to: the mean time of one linear call at decode shape (ms),
        so that a delay d per call slows the decode layer time by d / unit."""
        return statistics.median(cls.per_layer_us(r, "decode") for r in rounds) / len(LINEAR_TYPES) / 1e3
    SAMPLES = 3  # per round and module type: 5 rounds make the 15 samples of a run
    REPLAYS = {"cuda": 50, "cpu": 5}

    def __init__(self, spec, loaded, settings=None):
        super().__init__(spec, loaded, settings)
        self._walks: dict[tuple, _Walk] = {}
        self._ort_timers: dict[str, object] = {}  # ONNX Runtime: a LinearTimer per shape
        self._inputs = None
        self._modules: dict[str, list] | None = None  # per module type (and lm_head) the modules a walk calls
        self._walk_note = ""
        self._copy_gbps: float | None = None

    def unsupported(self) -> str | None:
        if getattr(self.loaded, "model_dir", None) is not None:  # ONNX Runtime: its own graph cut per projection
            return None
        model = getattr(self.loaded, "model", None)
        if model is None:
            return f"{self.spec.backend}: kernel mode needs a loaded torch model or an ONNX graph"
        spread = getattr(self.loaded, "spread_reason", lambda: None)()
        if spread:
            return spread
        try:
            linear_modules(model)
        except ValueError as exc:
            return f"{self.spec.backend}: {exc}"
        return None

    def _ensure_inputs(self, timed: bool = True) -> None:
        """The walks' modules and inputs; `timed`: and the device's copy bandwidth (a timing)."""
        if self._inputs is None and getattr(self.loaded, "model_dir", None) is None:
            w = self.spec.workload
            model = self.loaded.model
            mods, head = linear_modules(model)
            layers = self.loaded.arch.num_layers
            one_layer = getattr(self.loaded, "kernel_walk", "full") == "layer"
            if one_layer:  # copies made before any forward: in the state the loader left layer 0 in
                mods = layer_walk({t: ms[0] for t, ms in mods.items()}, layers)
                self._walk_note = f"layer 0 + {layers - 1} copies"
            self._modules = mods | {"lm_head": [head]}
            inputs = capture_inputs(model, prompt_ids(self.loaded.arch.vocab_size, w.batch_size, w.prompt_tokens))
            if one_layer:
                inputs = {t: (walk_inputs(xs[0], layers) if t != "lm_head" else xs) for t, xs in inputs.items()}
            self._inputs = inputs
        if timed and self._copy_gbps is None:
            self._copy_gbps = copy_bandwidth_gbps(self.spec.device)

    def _inject_us(self) -> float | None:
        """The injected delay per module call (the noise experiment's, or QUANTPERF_INJECT_DELAY_MS)."""
        ms = self.settings.get("inject_ms")
        if ms is None:
            ms = M.injected_delay_ms(self.spec.backend) or None  # QUANTPERF_INJECT_DELAY_MS: ms per module call
        return None if ms is None else ms * 1e3

    def _walk(self, t: str, shape: str) -> _Walk:
        inject_us = self._inject_us()
        key = (t, shape, inject_us, self._budget_us())
        if key not in self._walks:
            xs = [x if shape == "prefill" else x[:, -1:, :].contiguous() for x in self._inputs[t]]
            mods = self._modules[t]
            self._walks[key] = _Walk(mods, xs, self.spec.device, inject_us, self.REPLAYS[self.spec.device],
                                     self._budget_us())
        return self._walks[key]

    def _budget_us(self) -> float:
        """The time one sample may take (`sample_budget_ms`: the A/B's shared pairs set a smaller one)."""
        ms = self.settings.get("sample_budget_ms")
        return SAMPLE_BUDGET_US if ms is None else ms * 1e3

    def _timed_walks(self) -> list[tuple[str, str]]:
        """(module type, shape) of every walk a round times, in its order."""
        types = (*LINEAR_TYPES, *(("lm_head",) if self.settings.get("lm_head", True) else ()))
        return [(t, shape) for shape in self.settings.get("shapes") or SHAPES for t in types]

    def warmup_times(self) -> bool:
        """The copy bandwidth, and one walk per type that fits its replays per sample."""
        return True

    def build(self) -> dict:
        """The walks' modules (layer 0's copies) and their captured inputs, nothing timed (a pair's
        processes build at once). The CUDA graphs are captured by the warm-up, after it measured the
        copy bandwidth, as before there was a build: the 2 GiB of that measurement's buffers and the
        graphs' memory pools are never allocated together, so the peak memory a run records is the
        same (captured first, an H100 sitting recorded 10-13% more: 4819 against 4275 MiB)."""
        t0 = time.perf_counter()
        self._ensure_inputs(timed=False)
        return {"build_s": round(time.perf_counter() - t0, 2)}

    def warmup(self, rounds: int) -> dict:
        self._ensure_inputs()
        for _ in range(max(rounds, 1)):
            self.round()
        return {"status": Status.OK, "warmup_rounds": max(rounds, 1)}

    def measure_round(self) -> dict:
        self._ensure_inputs()
        if getattr(self.loaded, "model_dir", None) is not None:
            return self._ort_round()
        import torch

        out: dict = {"copy_gbps": self._copy_gbps, "walk": self.walk_description(), "types": {}}
        with torch.inference_mode():
            for t, shape in self._timed_walks():  # the A/B's shared pairs time decode alone
                walk = self._walk(t, shape)
                samples, clocks = [], []
                for _ in range(self.SAMPLES):
                    samples.append(walk.sample_us())
                    if self.spec.device == "cuda":
                        clocks.append(M.sm_clock_mhz())
                m, x = walk.modules[0], walk.inputs[0]
                out["types"][f"{shape}:{t}"] = {
                    "us_per_call": statistics.median(samples), "samples_us": samples, "method": walk.method,
                    "note": "; ".join(n for n in (self._walk_note if t != "lm_head" else "", walk.note) if n),
                    "replays": walk.replays, "bytes": module_bytes(m, x, _out_features(m)),
                    "flops": 2 * x[..., :1].numel() * _in_features(m) * _out_features(m), "sm_clock_mhz": clocks,
                    "layers": len(walk.modules)}
        return out

    def _ort_round(self) -> dict:
        from ..backends.ort.kernel import LinearTimer

        w = self.spec.workload
        out: dict = {"copy_gbps": self._copy_gbps, "walk": self.walk_description(), "types": {}}
        for shape, tokens in (("decode", 1), ("prefill", w.prompt_tokens)):
            if shape not in self._ort_timers:  # sessions made once, timed every round
                self._ort_timers[shape] = LinearTimer(
                    self.loaded.model_dir, self.spec.device, self.loaded.options, batch=w.batch_size, tokens=tokens,
                    walk_layers=self.loaded.arch.num_layers, runs_per_sample=self.REPLAYS[self.spec.device])
            timed = self._ort_timers[shape].sample(self.SAMPLES, self._inject_us())
            for t, r in timed.items():
                elem = 2 if self.loaded.options.get("variant") == "fp16" else 4
                act = w.batch_size * tokens * (r["in_features"] + r["out_features"]) * elem
                entry = out["types"][f"{shape}:{t}"] = {
                    "us_per_call": r["us_per_call"], "samples_us": r["samples_us"],
                    # CUDA: how the time was taken is part of the method (wall, gpu-queued, host-bound)
                    "method": (r["method"] if self.spec.device != "cuda"
                               else f"{r['method']}, {r.get('timing', 'wall')}"),
                    "note": f"layer 0's weights x{r['copies']}", "replays": r["runs_per_sample"],
                    "bytes": r["weight_bytes"] + act,
                    "flops": 2 * w.batch_size * tokens * r["in_features"] * r["out_features"],
                    "sm_clock_mhz": [], "layers": r["copies"]}
                if "host_enqueue_us" in r:  # gpu-queued: what the host took per call, beside the GPU's time
                    entry["host_enqueue_us"] = r["host_enqueue_us"]
        return out

    def walk_description(self) -> str:
        """How this run's walks were built (recorded in the figures as `walk`)."""
        if getattr(self.loaded, "model_dir", None) is not None:
            from ..backends.ort.kernel import WALK

            return f"ONNX Runtime: {WALK}"
        from ..backends.layer import FULL_WALK, LAYER_WALK

        return LAYER_WALK if getattr(self.loaded, "kernel_walk", "full") == "layer" else FULL_WALK

    # -- pure -------------------------------------------------------------------------------
    @staticmethod
    def per_layer_us(round_: dict, shape: str) -> float:
        return sum(v["us_per_call"] for k, v in round_["types"].items()
                   if k.startswith(f"{shape}:") and k.split(":", 1)[1] in LINEAR_TYPES)

    @classmethod
    def metrics(cls, spec, rounds: list[dict]) -> dict[str, Metric]:
        """Per shape timed (both, unless the rounds timed one: the A/B's decode-only rounds)."""
        timed = [s for s in SHAPES if not rounds or any(k.startswith(f"{s}:") for k in rounds[0]["types"])]
        return {f"kernel_{shape}_us_per_layer": Metric.of(f"kernel_{shape}_us_per_layer",
                                                          [cls.per_layer_us(r, shape) for r in rounds])
                for shape in timed}

    @classmethod
    def figures(cls, spec, load_info: dict, rounds: list[dict], metrics: dict[str, Metric], environment: dict) -> dict:
        gpu = environment.get("gpu") or {}
        return {"kernel": cls.table(rounds, gpu.get("peak_bandwidth_gbps") if spec.device == "cuda" else None)}

    @staticmethod
    def table(rounds: list[dict], peak_gbps: float | None = None, peak_tflops: float | None = None) -> dict:
        """Per shape and module type over a run's rounds: us per call (median), CV of the samples,
        GB/s and % of the peak and of the measured copy bandwidth, TFLOP/s at prefill, method.
        A figure above the measured copy bandwidth is marked `l2_hot` and has no bandwidth."""
        from ..stats import Summary

        out = {}
        copy = statistics.median(r["copy_gbps"] for r in rounds if r.get("copy_gbps")) if rounds else None
        for key in rounds[0]["types"]:
            per_round = [r["types"][key] for r in rounds]
            samples = [s for p in per_round for s in p["samples_us"]]
            us = statistics.median(p["us_per_call"] for p in per_round)
            first = per_round[0]
            gbps = first["bytes"] / (us * 1e-6) / 1e9
            hot = copy is not None and gbps > copy * L2_HOT_MARGIN
            row = {"us_per_call": us, "cv": Summary.from_values(samples).cv, "method": first["method"],
                   "bytes": first["bytes"], "gbps": None if hot else gbps, "l2_hot": hot,
                   "pct_peak": None if hot or not peak_gbps else gbps / peak_gbps,
                   "pct_copy": None if hot or not copy else gbps / copy, "note": first.get("note", "")}
            if "host_enqueue_us" in first:
                row["host_enqueue_us"] = statistics.median(p["host_enqueue_us"] for p in per_round)
            if key.startswith("prefill:"):
                tflops = first["flops"] / (us * 1e-6) / 1e12
                row |= {"tflops": tflops, "pct_peak_tflops": None if not peak_tflops else tflops / peak_tflops}
            out[key] = row
        return {"copy_gbps": copy, **({"walk": rounds[0]["walk"]} if rounds and rounds[0].get("walk") else {}),
                "types": out}


def decode_decomposition(step_ms: float, kernel_sum_ms: float) -> dict:
    """A graph-mode decode step against the sum of its linear kernels: the rest is attention,
    norms and launch overhead. The kernels cannot take longer than the step (flagged otherwise)."""
    return {"step_ms": step_ms, "linears_ms": kernel_sum_ms, "rest_ms": step_ms - kernel_sum_ms,
            "linears_fraction": kernel_sum_ms / step_ms if step_ms else None, "consistent": kernel_sum_ms <= step_ms}


def decompositions(results) -> list[dict]:
    """For each kernel-mode result with a graph-mode result of the same model, backend and
    device in `results`: the graph-mode decode step against the sum of its linear kernels
    (per-layer decode time x layers + the lm_head), via `decode_decomposition`."""
    out = []
    for k in results:
        if not k.ok or "kernel_decode_us_per_layer" not in k.metrics:
            continue
        g = next((r for r in results if r.ok and r.spec.mode == "graph" and r.spec.model == k.spec.model
                  and r.spec.backend == k.spec.backend and r.spec.device == k.spec.device
                  and "decode_tokens_per_s" in r.metrics), None)
        layers = (k.arch or {}).get("num_layers")
        head = (((k.figures or {}).get("kernel") or {}).get("types") or {}).get("decode:lm_head", {}).get("us_per_call")
        if g is None or not layers or head is None:  # no lm_head timed (an A/B's shared pairs): no sum to give
            continue
        step_ms = k.spec.workload.batch_size * 1e3 / g.metrics["decode_tokens_per_s"].value
        linears_ms = (k.metrics["kernel_decode_us_per_layer"].value * layers + head) / 1e3
        out.append({"config": k.spec.id, "graph_config": g.spec.id, **decode_decomposition(step_ms, linears_ms)})
    return out


def decomposition_lines(results) -> list[str]:
    lines = []
    for d in decompositions(results):
        flag = "" if d["consistent"] else "  INCONSISTENT: the kernels take longer than the step"
        lines.append(f"decode step {d['graph_config']}: {d['step_ms']:.3f} ms = linear kernels {d['linears_ms']:.3f} "
                     "ms "
                     f"({d['linears_fraction'] * 100:.0f}%) + the rest {d['rest_ms']:.3f} ms (attention, norms, "
                     f"launches){flag}")
    return lines


SCENARIO = KernelScenario
