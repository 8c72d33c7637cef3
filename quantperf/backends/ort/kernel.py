"""Kernel mode for ONNX Runtime: the seven linear layers of one decoder layer, each cut out of
the exported (or quantized) graph into a small ONNX model and timed alone, at decode shape
([batch, 1, in]) or prefill shape ([batch, prompt, in]).

Which MatMul is which projection. The dynamo exporter names initializers `val_<n>`, but records
each node's module path in its metadata (`pkg.torch.onnx.name_scopes`, e.g.
`model.model.layers.0.self_attn.q_proj`) and the torch parameter in `pkg.torch.onnx.fx_node`
(`p_model_model_layers_0_self_attn_q_proj_weight`); older exporters keep parameter names
(`model.layers.0.self_attn.q_proj.weight`). `projection_map` reads any of these from the fp32
export with `_PROJECTION`: `layers.<i>.self_attn.{q,k,v,o}_proj` and
`layers.<i>.mlp.{gate,up,down}_proj`. onnxruntime's quantizers drop node metadata but keep the
linear's activation input and output tensor names (int8: DynamicQuantizeLinear ->
MatMulInteger -> Cast -> Mul -> the same output; int4: one MatMulNBits; fp16: the same MatMul),
so a variant's projection is the subgraph between those two tensors, cut from the variant's
own graph. For int8 that includes the activation's dynamic quantization, which the full graph
shares between q/k/v and between gate/up.

Timing: each projection's model holds one copy of it per decoder layer of the model (distinct
copies of layer 0's weights, at most WALK_BYTES of them, `walk_copies`), so that one session call
walks a working set as large as the torch kernel walk's (all layers), not one layer's: a 50 MB L2
holds a whole llama-1b gate_proj, and 50 calls of one copy read it from there. Each model runs
with IOBinding on the session's provider, inputs and outputs bound once to fixed buffers (numpy on
the CPU, torch tensors on the GPU). On CUDA, ORT's CUDA graph (`enable_cuda_graph`) is tried
first and a session without it is the fallback; the method is labelled in every result. A sample
is `runs_per_sample` calls (fewer for a slow call, trackers.fit_replays); its figure is the mean
microseconds per copy.

On CUDA the GPU is timed (`timing: gpu-queued`, the default): a session call costs tens of
microseconds on the host (Python, ORT's run bookkeeping, the graph launch), more than one
projection's kernels take on a Hopper GPU, so wall time would measure the host (an H100 gave
~56 us for every projection of llama-1b and of llama-8b, whatever its size, and 10% between
processes). ORT runs on a torch stream of quantperf's own (`user_compute_stream`), calls are
queued without synchronizing (`disable_synchronize_execution_providers=1`), and each sample is
queued behind a GPU sleep long enough for the host to enqueue every call first
(`torch.cuda._sleep`, twice the host's enqueue time, measured before the first sample): CUDA
events around the calls then time the GPU running them back to back. A sample whose start event
had already run when the host finished enqueueing was not queued in full: its sleep doubles and
it is taken again (QUEUE_TRIES times at most, then it stands, labelled `host-bound`). The sleep
never exceeds MAX_SLEEP_US, and a projection whose calls could not be queued in QUEUE_TRIES tries
takes its later samples in one try each: calls that wait for the GPU (a synchronizing call, a full
launch queue) make the host's enqueue time grow with the sleep, so doubling it would never end (on
an H100, llama-8b int4's prefill k_proj and v_proj kept one run in its rounds for 7 minutes before
this bound). Each result reports the host's enqueue time per call (`host_enqueue_us`) beside the
GPU time, so a `host-bound` figure says by how much.
`QUANTPERF_ORT_KERNEL_TIMING=wall` times with perf_counter and a synchronize on both sides
instead (`timing: wall`), as a caller's `timer` always does. The timing is part of a CUDA kernel
configuration's identity: figures of one are never gated against the other's.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from ... import trackers as M
from ...errors import BackendUnavailable, ConfigError
from ...models import ArchInfo
from ..base import LoadedModel
from .export import initializer_bytes
from .quantize import variant_unavailable_reason
from .session import create_session

LINEAR_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LINEAR_OPS = ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "Gemm")
_PROJECTION = re.compile(r"layers[._](\d+)[._](?:self_attn|mlp)[._](%s)(?![A-Za-z0-9])" % "|".join(LINEAR_TYPES))
_METADATA_KEYS = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.fx_node")
WARMUP_RUNS = 5  # untimed runs per session; ORT captures its CUDA graph after 2 plain runs
QUEUE_TRIES = 3  # times a CUDA sample is taken again, with twice the sleep, when it was not queued in full
MAX_SLEEP_US = 100_000.0  # the longest sleep a sample is queued behind (a sample's calls take <= 50 ms)
TIMING_ENV = "QUANTPERF_ORT_KERNEL_TIMING"
TIMINGS = ("gpu-queued", "wall")
# One session call runs a projection once per decoder layer (distinct weight copies), up to this
# many bytes of weights: see walk_copies. Part of every ORT kernel configuration's identity (WALK).
WALK_BYTES = 512 * 2**20
WALK = "one weight copy per decoder layer, at most 512 MiB"


def cuda_timing(raw: str | None) -> str:
    """How ORT kernel samples are timed on CUDA (QUANTPERF_ORT_KERNEL_TIMING; unset: gpu-queued)."""
    if raw in (None, ""):
        return "gpu-queued"
    if raw not in TIMINGS:
        raise ConfigError(f"{TIMING_ENV}={raw!r}: not a timing method; use one of {', '.join(TIMINGS)} (or unset it: "
                          "wall)")
    return raw


@dataclass
class Linear:
    """One projection of one decoder layer, as a subgraph of an ONNX graph."""

    kind: str
    layer: int
    input: str  # activation tensor name
    output: str
    in_features: int
    out_features: int
    nodes: list = field(repr=False)  # NodeProtos in topological order
    initializers: list = field(repr=False)  # TensorProtos (external data not loaded)

    @property
    def op_types(self) -> list[str]:
        return [n.op_type for n in self.nodes]

    @property
    def weight_bytes(self) -> int:
        return sum(initializer_bytes(t) for t in self.initializers)


def projection_map(model) -> dict[tuple[int, str], tuple[str, str, int, int]]:
    """(layer, kind) -> (activation input, output tensor, in_features, out_features) for every
    projection MatMul of an fp32 export (weights as [in, out] initializers)."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[tuple[int, str], tuple[str, str, int, int]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        texts = [node.input[1], node.name] + [p.value for p in node.metadata_props if p.key in _METADATA_KEYS]
        match = next((m for m in map(_PROJECTION.search, texts) if m), None)
        dims = list(inits[node.input[1]].dims)
        if match and len(dims) == 2:
            found.setdefault((int(match[1]), match[2]), (node.input[0], node.output[0], dims[0], dims[1]))
    return found


def _subgraph(model, start: str, end: str) -> tuple[list, list]:
    """Nodes (topological order) and initializers that compute tensor `end` from tensor `start`."""
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {t.name: t for t in model.graph.initializer}
    nodes, used, seen, loose = [], {}, set(), set()

    def visit(name: str) -> None:
        if not name or name == start:
            return
        if name in inits:
            used[name] = inits[name]
            return
        node = producers.get(name)
        if node is None:
            loose.add(name)
            return
        if id(node) in seen:
            return
        seen.add(id(node))
        for i in node.input:
            visit(i)
        nodes.append(node)

    visit(end)
    if loose or not any(start in n.input for n in nodes) or not any(n.op_type in LINEAR_OPS for n in nodes):
        raise ValueError(f"cannot isolate the linear {start} -> {end}: it also reads {sorted(loose) or 'nothing'}, "
                         f"ops {[n.op_type for n in nodes]}")
    return nodes, list(used.values())


def find_linears(model_dir: Path, layer: int = 0, model=None) -> dict[str, Linear]:
    """The seven projections of decoder layer `layer` in the graph in `model_dir` (an fp32
    export or a variant beside it), keyed by LINEAR_TYPES (`model`: that graph, loaded without
    external data, if the caller has it)."""
    import onnx

    if model is None:
        model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    fp32_dir = model_dir.parent / "fp32"
    ref = model if model_dir.resolve() == fp32_dir.resolve() else onnx.load(str(fp32_dir / "model.onnx"),
                                                                            load_external_data=False)
    projections = projection_map(ref)
    missing = [k for k in LINEAR_TYPES if (layer, k) not in projections]
    if missing:
        layers = sorted({lay for lay, _ in projections})
        raise ValueError(f"{model_dir}: no {', '.join(missing)} in decoder layer {layer} "
                         f"(layers with projections: {layers or 'none'})")
    out = {}
    for kind in LINEAR_TYPES:
        x, y, k, n = projections[(layer, kind)]
        nodes, inits = _subgraph(model, x, y)
        out[kind] = Linear(kind, layer, x, y, k, n, nodes, inits)
    return out


def walk_copies(weight_bytes: int, layers: int) -> int:
    """How many copies of a projection one timed session call runs: one per decoder layer of the
    model, as the torch walk does (its working set, not one layer's, which a 50 MB L2 would hold),
    at most WALK_BYTES of weights (one serialized model stays far below protobuf's 2 GB), at least one."""
    return max(1, min(int(layers), WALK_BYTES // max(int(weight_bytes), 1)))


def copy_name(name: str, copy: int) -> str:
    """A tensor or node name in copy `copy` of a projection (copy 0 keeps the graph's names)."""
    return name if copy == 0 or not name else f"{name}__copy{copy}"


def linear_model(model_dir: Path, lin: Linear, src=None, copies: int = 1) -> bytes:
    """A standalone serialized ONNX model of one projection, its weights embedded (`src`: the
    graph in `model_dir`, loaded without external data, if the caller has it). With `copies` > 1
    the projection is there that many times, each with its own input, weights and output (names
    `copy_name(name, c)`), so one session call runs it `copies` times on distinct weights; no
    copy shares a node or a tensor with another, so no graph optimization can merge them."""
    import onnx
    from onnx import external_data_helper, helper

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if src is None:
        src = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    elem = src.graph.output[0].type.tensor_type.elem_type  # the graph's float type (the logits')
    weights = []
    for t in lin.initializers:
        w = onnx.TensorProto()
        w.CopyFrom(t)
        if external_data_helper.uses_external_data(w):
            external_data_helper.load_external_data_for_tensor(w, str(model_dir))
            w.data_location = onnx.TensorProto.DEFAULT
            del w.external_data[:]
        weights.append(w)
    nodes, initializers, inputs, outputs = [], [], [], []
    for c in range(copies):
        for node in lin.nodes:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.input[:] = [copy_name(i, c) for i in node.input]
            n.output[:] = [copy_name(o, c) for o in node.output]
            n.name = copy_name(node.name, c)
            nodes.append(n)
        for w in weights:
            t = onnx.TensorProto()
            t.CopyFrom(w)
            t.name = copy_name(w.name, c)
            initializers.append(t)
        inputs.append(helper.make_tensor_value_info(copy_name(lin.input, c), elem, ["batch", "seq", lin.in_features]))
        outputs.append(helper.make_tensor_value_info(copy_name(lin.output, c), elem,
                                                     ["batch", "seq", lin.out_features]))
    graph = helper.make_graph(nodes, f"layer{lin.layer}_{lin.kind}", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=src.opset_import, ir_version=src.ir_version).SerializeToString()


class _Runner:
    """One projection's session (`copies` copies of it, see `linear_model`) with its inputs and
    outputs bound once: every copy reads the same input buffer and writes its own output."""

    def __init__(self, blob: bytes, lin: Linear, device: str, options: dict, batch: int, tokens: int, elem: int,
                 copies: int = 1, own_stream: bool = False):
        import numpy as np
        import onnx

        np_type = onnx.helper.tensor_dtype_to_np_dtype(elem).type
        shape_in, shape_out = [batch, tokens, lin.in_features], [batch, tokens, lin.out_features]
        self.device, self.copies, self.runs = device, copies, 1
        names = [(copy_name(lin.input, c), copy_name(lin.output, c)) for c in range(copies)]
        if device != "cuda":
            self.session, _ = create_session(blob, options, device)
            self.x = np.random.default_rng(0).standard_normal(shape_in).astype(np_type)
            self.ys = [np.empty(shape_out, dtype=np_type) for _ in names]
            self.binding = self.session.io_binding()
            for (x_name, y_name), y in zip(names, self.ys):
                self.binding.bind_cpu_input(x_name, self.x)
                self.binding.bind_output(y_name, "cpu", 0, np_type, shape_out, y.ctypes.data)
            self.run_options, self.method, self.graph_error = None, "cpu-iobinding", None
            self.run(WARMUP_RUNS)
            return
        import onnxruntime as ort
        import torch

        from .session import cuda_device_id

        dev = cuda_device_id()
        gen = torch.Generator(device=f"cuda:{dev}").manual_seed(0)
        self.x = torch.randn(shape_in, generator=gen, device=f"cuda:{dev}").to(getattr(torch, np.dtype(np_type).name))
        self.ys = [torch.empty(shape_out, dtype=self.x.dtype, device=f"cuda:{dev}") for _ in names]
        # ORT runs on this stream (a non-default one: ORT treats stream 0 as none), so events and a
        # sleep queued on it bracket ORT's kernels; the calls queue back to back without syncs
        # (gpu-queued timing only: wall timing keeps ORT's own stream)
        self.stream = torch.cuda.Stream(device=dev) if own_stream else None
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.graph_error = None
        self.sleep_cycles: int | None = None
        self.host_bound = False  # QUEUE_TRIES tries of one sample were not queued in full: one try from then on
        self.enqueue_us: float | None = None  # the host's time to enqueue the last sample's calls
        stream_option = {"user_compute_stream": str(self.stream.cuda_stream)} if own_stream else {}
        for method, provider_options in (("cuda-graph", {"enable_cuda_graph": "1"}), ("cuda-iobinding", {})):
            try:
                self.session, _ = create_session(blob, options, "cuda", provider_options | stream_option,
                                                 allow_shape_plumbing=False)
                self.binding = self.session.io_binding()
                for (x_name, y_name), y in zip(names, self.ys):
                    self.binding.bind_input(x_name, "cuda", dev, np_type, shape_in, self.x.data_ptr())
                    self.binding.bind_output(y_name, "cuda", dev, np_type, shape_out, y.data_ptr())
                self.method = method
                self.run(WARMUP_RUNS)  # the CUDA graph is captured here
                torch.cuda.synchronize()
                return
            except Exception as exc:
                self.graph_error = f"{type(exc).__name__}: {exc}"[:300]
                if method == "cuda-iobinding":
                    raise BackendUnavailable(f"layer {lin.layer} {lin.kind} ({', '.join(lin.op_types)}) does not run "
                                             f"on the CUDA execution provider alone: {exc}") from exc

    def run(self, n: int) -> None:
        for _ in range(n):
            self.session.run_with_iobinding(self.binding, self.run_options)

    def delay(self, us: float | None) -> None:
        """An injected slowdown after a sample's calls (None: none; 0 keeps an empty sleep, so a
        clean side and a slowed side differ by the delay only), on the timed device."""
        if us is None:
            return
        if self.device != "cuda":
            M._cpu_spin(us / 1e3)
        elif self.stream is not None:  # gpu-queued: on the timed stream, behind the calls
            import torch

            torch.cuda._sleep(int(us * M.sleep_cycles_per_us()))
        else:  # wall timing: ORT's own stream is not the current one, so after the calls
            M.synchronize("cuda")
            M._gpu_spin(us / 1e3)

    def gpu_sample_ms(self, n: int, delay_us: float | None = None) -> tuple[float, bool]:
        """(milliseconds the GPU took for `n` calls queued back to back and the delay, whether the
        calls were all queued before the GPU reached them); see the module docstring (`gpu-queued`)."""
        import torch

        cycles_per_us = M.sleep_cycles_per_us()
        max_cycles = int(MAX_SLEEP_US * cycles_per_us)
        if self.sleep_cycles is None:  # the host's enqueue time for n calls, once
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            self.run(n)
            host_us = (time.perf_counter() - t0) * 1e6
            torch.cuda.synchronize()
            self.sleep_cycles = min(int(2 * host_us * cycles_per_us) + 1, max_cycles)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        queued = False
        for _ in range(1 if self.host_bound else QUEUE_TRIES):
            with torch.cuda.stream(self.stream):
                torch.cuda._sleep(self.sleep_cycles)
                start.record(self.stream)
                t0 = time.perf_counter()
                self.run(n)
                self.enqueue_us = (time.perf_counter() - t0) * 1e6
                queued = not start.query()  # the GPU was still asleep when the last call was queued
                self.delay(delay_us)
                end.record(self.stream)
            end.synchronize()
            if queued:
                break
            self.sleep_cycles = min(2 * self.sleep_cycles, max_cycles)
        else:
            self.host_bound = True
        return start.elapsed_time(end), queued


class LinearTimer:
    """The seven projections of decoder layer `layer` at input shape [batch, tokens, in_features],
    each as a session of `walk_copies(weight bytes, walk_layers)` copies, made and warmed up once;
    `sample` times them (the kernel scenario keeps one per shape across its rounds).

    A sample is `runs` session calls (`runs_per_sample`, fewer for a call too slow for
    trackers.SAMPLE_BUDGET_US, decided once per projection), each running every copy; its figure
    is the mean microseconds per copy. `timer(fn) -> milliseconds` must synchronize the device
    around fn; without one, CUDA samples are gpu-queued (or wall-timed with
    QUANTPERF_ORT_KERNEL_TIMING=wall) and CPU samples wall-timed."""

    def __init__(self, model_dir: Path, device: str, options: dict, *, layer: int = 0, batch: int = 1,
                 tokens: int = 1, walk_layers: int = 1, runs_per_sample: int = 50, timer=None):
        import onnx

        if runs_per_sample < 1:
            raise ValueError(f"runs_per_sample must be >= 1, got {runs_per_sample}")
        variant = json.loads((model_dir / "meta.json").read_text()).get("variant", "fp32")
        reason = variant_unavailable_reason(variant, device)
        if reason:
            raise BackendUnavailable(f"ort {variant} kernels on {device}: {reason}")
        self.queued = device == "cuda" and timer is None and cuda_timing(os.environ.get(TIMING_ENV)) == "gpu-queued"
        self.timer = timer or (lambda fn: M.wall_ms(fn, device)[0])
        self.batch, self.tokens = batch, tokens
        src = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
        elem = src.graph.output[0].type.tensor_type.elem_type
        self.linears: dict[str, tuple[Linear, _Runner]] = {}
        for kind, lin in find_linears(model_dir, layer, src).items():
            copies = walk_copies(lin.weight_bytes, walk_layers)
            runner = _Runner(linear_model(model_dir, lin, src, copies), lin, device, options, batch, tokens, elem,
                             copies, own_stream=self.queued)  # warmed up
            runner.runs = M.fit_replays(runs_per_sample, self.timer(lambda r=runner: r.run(1)) * 1e3)
            self.linears[kind] = (lin, runner)

    def sample(self, samples: int, inject_us: float | None = None) -> dict[str, dict]:
        """Per LINEAR_TYPES key: `us_per_call` (median of the samples), `samples_us` (each sample's
        mean microseconds per call), `method` (cpu-iobinding, cuda-graph or cuda-iobinding),
        `timing` (wall, gpu-queued or host-bound), `copies`, `runs_per_sample`, `weight_bytes` (one
        copy's initializers: packed weights, scales and zero points), `op_types`, `in_features`,
        `out_features`, `batch`, `tokens`. `inject_us`: a delay per call added to every sample
        (the noise experiment's injected slowdown)."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        results = {}
        for kind, (lin, runner) in self.linears.items():
            n, calls = runner.runs, runner.runs * runner.copies
            delay = None if inject_us is None else inject_us * calls
            timing = "wall"
            enqueue = []
            if self.queued:
                timed = []
                for _ in range(samples):
                    timed.append(runner.gpu_sample_ms(n, delay))
                    enqueue.append(runner.enqueue_us / calls)
                per_call = [ms * 1e3 / calls for ms, _ in timed]
                timing = "gpu-queued" if all(q for _, q in timed) else "host-bound"
            else:
                def one(r=runner, n=n, delay=delay):
                    r.run(n)
                    r.delay(delay)
                per_call = [self.timer(one) * 1e3 / calls for _ in range(samples)]
            results[kind] = {
                "us_per_call": statistics.median(per_call), "samples_us": per_call, "method": runner.method,
                "timing": timing, "copies": runner.copies, "runs_per_sample": n, "weight_bytes": lin.weight_bytes,
                "op_types": lin.op_types, "in_features": lin.in_features, "out_features": lin.out_features,
                "batch": self.batch, "tokens": self.tokens,
            }
            if enqueue:
                results[kind]["host_enqueue_us"] = statistics.median(enqueue)
            if runner.graph_error:
                results[kind]["cuda_graph_error"] = runner.graph_error
        return results

    def close(self) -> None:
        self.linears.clear()


def time_linears(model_dir: Path, device: str, options: dict, *, layer: int = 0, batch: int = 1, tokens: int = 1,
                 samples: int = 15, runs_per_sample: int = 50, timer=None, walk_layers: int = 1,
                 inject_us: float | None = None) -> dict[str, dict]:
    """Time each projection of decoder layer `layer` at input shape [batch, tokens, in_features]
    once (`LinearTimer(...).sample(samples, inject_us)`; see there for what is returned)."""
    if samples < 1 or runs_per_sample < 1:
        raise ValueError(f"samples and runs_per_sample must be >= 1, got {samples} and {runs_per_sample}")
    timer_ = LinearTimer(model_dir, device, options, layer=layer, batch=batch, tokens=tokens, walk_layers=walk_layers,
                         runs_per_sample=runs_per_sample, timer=timer)
    try:
        return timer_.sample(samples, inject_us)
    finally:
        timer_.close()


class OrtKernelLoaded(LoadedModel):
    """What kernel mode loads for an ONNX Runtime backend: the graph of the model cut to one
    decoder layer (`export_fp32(source, layers=1)` and its variant), whose projections
    `LinearTimer` cuts out and times. No session of the whole model is made, so nothing can
    generate with it; `arch` is the whole model's. Its weight footprint is not the model's and
    is not reported (`weight_bytes` is None)."""

    def __init__(self, backend: str, device: str, model_dir: Path, meta: dict, options: dict):
        self.backend, self.device, self.options = backend, device, options
        self.model_dir, self.meta = model_dir, meta
        self.arch = ArchInfo(**meta["arch"])
        reason = variant_unavailable_reason(meta.get("variant", "fp32"), device)
        if reason:
            raise BackendUnavailable(f"{backend}: {reason}")

    def weight_bytes(self) -> None:
        return None

    def streamed_weight_bytes(self) -> None:
        return None

    def supports_mode(self, mode: str) -> str | None:
        return None if mode == "kernel" else (f"{self.backend}: a kernel-mode load (a one-decoder-layer export) "
                                              f"cannot run {mode} mode")

    def run_round(self, input_ids, new_tokens: int, mode: str, clock):
        raise RuntimeError(self.supports_mode(mode))

    def logits(self, input_ids):
        raise RuntimeError(self.supports_mode("quality"))

    def execution_report(self) -> dict:
        return {"export_layers": self.meta.get("export_layers"), "model_layers": self.arch.num_layers,
                "timed": "each projection of decoder layer 0, cut out of the exported graph and run alone"}
