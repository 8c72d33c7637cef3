"""ONNX Runtime sessions of the exported graph: session options, the placement check and the
greedy decode loop.

- CPU: `InferenceSession.run` with numpy feeds, one intra-op thread, spinning off; the KV
  cache lives in numpy arrays.
- CUDA: `onnxruntime.preload_dlls()` first (onnxruntime-gpu finds its CUDA libraries that
  way), `session.disable_cpu_ep_fallback=1` (see `create_session` for graphs with shape
  subgraphs), and IOBinding: each step's present key/values are
  bound to device memory and fed back as the next step's past, so the cache never leaves the
  GPU; the logits land in a torch tensor on the GPU, argmax runs there, and only the next
  token ids (with their logits, for the NaN check) cross to the host per step.
- Placement: on CUDA the first session run is profiled at decode shape (a prefill, then one
  step with a past and one new token); a compute node on the CPU EP or any Memcpy node inside
  the graph makes the backend unavailable, with the op list. Shape plumbing on the CPU EP
  (`HOST_OK_OPS`) is allowed: ORT puts it there on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ...errors import BackendUnavailable, NonFiniteLogits
from ...models import ArchInfo
from ..base import LoadedModel
from .export import graph_weight_bytes

CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"
# Node types that may legitimately run on the CPU EP even in a CUDA session (shape plumbing).
HOST_OK_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Reshape", "Slice", "Range", "Cast",
               "ConstantOfShape", "Equal", "Where", "Expand", "Constant", "Less", "Greater", "Add", "Sub", "Mul", "Div"}
# Copies between host and device inside the graph: a step's data leaving the GPU (a MemcpyToHost
# also stalls the stream until the copy is done), so none is allowed.
MEMCPY_OPS = ("MemcpyToHost", "MemcpyFromHost")
# What ORT says when disable_cpu_ep_fallback meets nodes the CUDA EP itself leaves to the CPU EP
_FALLBACK_REFUSED = "assigned to the default CPU EP"
_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}

_preloaded = False


def providers_for(device: str) -> list[str]:
    return [CUDA_EP] if device == "cuda" else [CPU_EP]


def preload_cuda_libraries() -> None:
    """onnxruntime-gpu >= 1.21 loads the CUDA/cuDNN libraries of the nvidia-* wheels (or torch's)
    through `preload_dlls()`; without it a CUDA session can fail to find them. Once per process."""
    global _preloaded
    if not _preloaded:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        _preloaded = True


def session_options(options: dict, device: str, profile_prefix: str | None = None, strict: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options["intra_op_num_threads"]
    so.inter_op_num_threads = 1
    # A spinning thread pool burns the core the driving thread needs between calls and turns
    # the scheduler's mood into the figure: on a 2-core box it was the largest noise source.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.get("allow_spinning") else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.get("allow_spinning") else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if device == "cuda" and strict:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def cuda_device_id() -> int:
    import torch

    return torch.cuda.current_device()


def create_session(model, options: dict, device: str, provider_options: dict | None = None,
                   profile_prefix: str | None = None, allow_shape_plumbing: bool = True):
    """An InferenceSession of `model` (a path or serialized bytes) on `device`.
    Returns (session, cpu_ep_fallback), the latter saying how the CPU EP was fenced off.

    On CUDA the session is first created with `session.disable_cpu_ep_fallback=1`. ORT refuses
    that for a graph with shape subgraphs, which the CUDA EP itself hands to the CPU EP; when
    `allow_shape_plumbing`, the session is then created without it and the profiler's
    placement check (compute nodes and Memcpy nodes) is what keeps the CPU out."""
    import onnxruntime as ort

    if device != "cuda":
        return ort.InferenceSession(model, session_options(options, device, profile_prefix), providers=[CPU_EP]), None
    preload_cuda_libraries()
    providers = [(CUDA_EP, {"device_id": cuda_device_id(), **(provider_options or {})})]
    try:
        sess = ort.InferenceSession(model, session_options(options, device, profile_prefix), providers=providers)
        note = "disabled (session.disable_cpu_ep_fallback=1)"
    except Exception as exc:
        if not (allow_shape_plumbing and _FALLBACK_REFUSED in str(exc)):
            raise
        sess = ort.InferenceSession(model, session_options(options, device, profile_prefix, strict=False),
                                    providers=providers)
        note = ("shape plumbing only: ORT assigns the graph's shape subgraphs to the CPU EP, so "
                "session.disable_cpu_ep_fallback=1 is refused; the profiler's placement check rejects any "
                "other CPU node and any Memcpy")
    if CUDA_EP not in sess.get_providers():  # the CUDA EP failed to load and ORT went on without it
        raise BackendUnavailable(f"onnxruntime could not start the CUDA execution provider (session providers: "
                                 f"{', '.join(sess.get_providers())}); see onnxruntime's log above")
    return sess, note


def node_placement(profile_file: str, last_run_only: bool = False) -> dict[str, dict[str, int]]:
    """Count node executions per provider and op type from an ORT profiling JSON file
    (all runs, or only the last `model_run`)."""
    events = json.loads(Path(profile_file).read_text())
    window = None
    if last_run_only:
        runs = [ev for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run"]
        if runs:
            window = (runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"])
    placement: dict[str, dict[str, int]] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args:
            continue
        if window and not window[0] <= ev.get("ts", 0) <= window[1]:
            continue
        by_op = placement.setdefault(args["provider"], {})
        op = args.get("op_name", "?")
        by_op[op] = by_op.get(op, 0) + 1
    return placement


def placement_problems(placement: dict[str, dict[str, int]], wanted: str) -> list[str]:
    """What disqualifies a run on `wanted`: compute ops that ran on another provider (shape
    plumbing excepted) and any Memcpy node placed on another provider, as `op on provider (xN)`.
    A Memcpy on `wanted` itself is the EP fetching a host-fed input (the token ids of a step):
    reported by `host_copies`, not disqualifying."""
    bad = []
    for provider, ops in sorted(placement.items()):
        for op, n in sorted(ops.items()):
            if provider != wanted and (op.startswith(MEMCPY_OPS) or op not in HOST_OK_OPS):
                bad.append(f"{op} on {provider} (x{n})")
    return bad


def host_copies(placement: dict[str, dict[str, int]], wanted: str) -> dict[str, int]:
    """Memcpy nodes the `wanted` EP ran per step (host <-> device copies of inputs/outputs)."""
    return {op: n for op, n in placement.get(wanted, {}).items() if op.startswith(MEMCPY_OPS)}


def step_inputs(ids, total_past: int, past_len: int, dummy: bool) -> dict:
    """input_ids, attention_mask and position_ids of one call: ids [b, s] after a past of
    `total_past` positions of which `past_len` are real (+1 masked dummy at prefill)."""
    import numpy as np

    b, s = ids.shape
    mask = np.ones((b, total_past + s), dtype=np.int64)
    if dummy:
        mask[:, 0] = 0
    pos = np.broadcast_to(np.arange(past_len, past_len + s, dtype=np.int64), (b, s)).copy()
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "position_ids": pos}


class HostKV:
    """CPU: `session.run` with numpy feeds; the KV cache lives in numpy arrays."""

    def __init__(self, loaded: "OrtLoaded", batch: int):
        import numpy as np

        self.loaded = loaded
        shape = (batch, loaded.arch.num_kv_heads, 1, loaded.arch.head_dim)
        self.past = [np.zeros(shape, dtype=loaded.kv_dtype) for _ in loaded.past_names]

    def forward(self, ids, past_len: int, dummy: bool):
        """Logits [b, s, vocab] (numpy) of one call; the cache advances."""
        import numpy as np

        feed = step_inputs(ids, self.past[0].shape[2], past_len, dummy)
        feed.update(zip(self.loaded.past_names, self.past))
        outs = self.loaded.session.run(None, feed)
        if not np.all(np.isfinite(outs[0][:, -1])):
            raise NonFiniteLogits(f"{self.loaded.backend}: NaN/inf in logits")
        self.past = outs[1:]
        return outs[0]

    def next_tokens(self, ids, past_len: int, dummy: bool):
        return self.forward(ids, past_len, dummy)[:, -1].argmax(-1)

    def logits_cpu(self, ids):
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.forward(ids, 0, dummy=True)[0], dtype=np.float32))


class DeviceKV:
    """CUDA: IOBinding. Presents are bound to device memory that ORT allocates and are fed back
    as the next step's past (device OrtValues); the logits are bound to a torch tensor on the
    GPU. Per step only the inputs ids/mask/positions (a few int64s) go to the device and the
    chosen token ids come back. (`device="cpu"` runs the same code on the CPU EP: the tests
    check it against `HostKV`.)

    Each step is synchronous with the engine's clock: its marks are CUDA events on torch's
    current stream, which does not wait for ORT's own stream, so a step must be finished when
    `run_with_iobinding` returns. We keep ORT's end-of-run stream synchronization on explicitly
    (run option `disable_synchronize_execution_providers=0`) and call
    `io_binding.synchronize_outputs()` after it; the argmax and the copy of the token ids to the
    host then run on torch's stream, so the mark after a token is recorded after all its work."""

    def __init__(self, loaded: "OrtLoaded", batch: int, device: str = "cuda"):
        import numpy as np
        import onnxruntime as ort
        import torch

        self.loaded, self.torch, self.device = loaded, torch, device
        self.dev = loaded.device_id or 0
        self.torch_device = f"cuda:{self.dev}" if device == "cuda" else device
        shape = (batch, loaded.arch.num_kv_heads, 1, loaded.arch.head_dim)
        zeros = np.zeros(shape, dtype=loaded.kv_dtype)
        self.past = [ort.OrtValue.ortvalue_from_numpy(zeros, device, self.dev) for _ in loaded.past_names]
        self.binding = loaded.session.io_binding()
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "0")
        self.logits_dtype = getattr(torch, loaded.logits_dtype)

    def forward(self, ids, past_len: int, dummy: bool):
        """Logits [b, s, vocab] of one call, as a torch tensor on the GPU; the cache advances."""
        import numpy as np

        m, bd = self.loaded, self.binding
        bd.clear_binding_inputs()
        bd.clear_binding_outputs()
        for name, arr in step_inputs(ids, self.past[0].shape()[2], past_len, dummy).items():
            bd.bind_cpu_input(name, arr)
        for name, value in zip(m.past_names, self.past):
            bd.bind_ortvalue_input(name, value)
        logits = self.torch.empty((*ids.shape, m.vocab), dtype=self.logits_dtype, device=self.torch_device)
        bd.bind_output("logits", self.device, self.dev, np.dtype(m.logits_dtype).type, list(logits.shape),
                       logits.data_ptr())
        for name in m.present_names:
            bd.bind_output(name, self.device, self.dev)  # ORT allocates each present on the device
        m.session.run_with_iobinding(bd, self.run_options)
        bd.synchronize_outputs()
        self.past = bd.get_outputs()[1:]
        return logits

    def next_tokens(self, ids, past_len: int, dummy: bool):
        import numpy as np

        torch = self.torch
        last = self.forward(ids, past_len, dummy)[:, -1]
        idx = last.argmax(-1)  # torch.argmax counts NaN as the maximum, so a NaN row picks a NaN
        top = last.gather(-1, idx[:, None])[:, 0].float()
        # the one device->host copy of a step: token ids (exact in float32 below 2**24) and their logits
        host = torch.stack((idx.float(), top)).cpu().numpy()
        if not np.all(np.isfinite(host[1])):
            raise NonFiniteLogits(f"{self.loaded.backend}: NaN/inf in logits")
        return host[0].astype(np.int64)

    def logits_cpu(self, ids):
        return self.forward(ids, 0, dummy=True)[0].float().cpu()


class OrtLoaded(LoadedModel):
    def __init__(self, backend: str, device: str, model_dir: Path, meta: dict, options: dict, providers: list[str]):
        import numpy as np

        self.backend, self.device, self.options = backend, device, options
        self.model_dir, self.meta = model_dir, meta
        self.arch = ArchInfo(**meta["arch"])
        self.providers = providers
        self.device_id = cuda_device_id() if device == "cuda" else None
        self.io_binding_device = "cuda" if device == "cuda" else None  # None: numpy feeds (HostKV)
        self._profile_dir = tempfile.mkdtemp(prefix="quantperf-ortprof-") if device == "cuda" else None
        try:
            self.session, self.cpu_ep_fallback = create_session(
                str(model_dir / "model.onnx"), options, device,
                profile_prefix=os.path.join(self._profile_dir, "ort") if self._profile_dir else None)
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            self.past_names = [i.name for i in inputs[3:]]
            self.present_names = [o.name for o in outputs[1:]]
            self.kv_dtype = np.dtype(_NP_TYPES[inputs[3].type])  # float16 for the fp16 graph
            self.logits_dtype = _NP_TYPES[outputs[0].type]
            width = outputs[0].shape[-1]
            self.vocab = width if isinstance(width, int) else self.arch.vocab_size
            self._placement: dict = {}
            if device == "cuda":
                self._check_placement()
        except BaseException:
            self.close()
            raise
        self._weights = graph_weight_bytes(model_dir)

    def _kv(self, batch: int):
        return DeviceKV(self, batch, self.io_binding_device) if self.io_binding_device else HostKV(self, batch)

    def _decode(self, input_ids, new_tokens: int, clock=None):
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.int64)
        kv = self._kv(ids.shape[0])
        if clock:
            clock.start()
        nxt = kv.next_tokens(ids, 0, dummy=True)
        if clock:
            clock.mark()
        generated = [nxt]
        plen = ids.shape[1]
        for _ in range(new_tokens - 1):
            # the dummy position stays in the cache, masked; the next call's mask covers it
            nxt = kv.next_tokens(nxt[:, None], plen, dummy=False)
            plen += 1
            if clock:
                clock.mark()
            generated.append(nxt)
        return np.stack(generated, axis=1).tolist()

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        return self._decode(input_ids, new_tokens, clock)

    def _check_placement(self) -> None:
        """Profile a prefill and one decode step (past of 9 positions, 1 new token); judge the decode step."""
        import numpy as np

        kv = self._kv(1)
        nxt = kv.next_tokens(np.full((1, 8), 10, dtype=np.int64), 0, dummy=True)
        kv.next_tokens(nxt[:, None], 8, dummy=False)
        self._placement = node_placement(self.session.end_profiling(), last_run_only=True)
        bad = placement_problems(self._placement, CUDA_EP)
        if bad:
            raise BackendUnavailable(
                f"{self.backend}: on the CUDA execution provider a decode step ran {', '.join(bad)}; compute or "
                "copies on the CPU EP are not a GPU result"
            )

    def weight_bytes(self) -> int:
        return self._weights[0]

    def streamed_weight_bytes(self) -> int:
        total, emb = self._weights
        return total - emb if not self.arch.tie_word_embeddings else total

    def kv_bytes_per_element(self) -> float:
        return float(self.kv_dtype.itemsize)

    def logits(self, input_ids):
        import numpy as np

        return self._kv(1).logits_cpu(np.asarray([list(input_ids)], dtype=np.int64))

    def execution_report(self) -> dict:
        report = {"providers": self.session.get_providers(), "node_placement": self._placement}
        if self.device == "cuda":
            report.update(io_binding="KV cache on the device; token ids to the host per step",
                          cpu_ep_fallback=self.cpu_ep_fallback)
        return report

    def close(self) -> None:
        self.__dict__.pop("session", None)
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
