"""ONNX Runtime backends: the model exported to ONNX with its KV cache, then optionally
quantized by onnxruntime's own tools, run by a greedy decode loop over an InferenceSession.

- Export: optimum's exporter when an installed optimum-onnx is compatible with the installed
  transformers, else `torch.onnx.export(..., dynamo=True)` on a wrapper that passes the KV
  cache as flat tensors. One graph serves prefill and decode: prefill is fed one masked-out
  dummy past position, so every call has a past of length >= 1.
- ort-int8: `onnxruntime.quantization.quantize_dynamic` (MatMulInteger). It has no CUDA
  kernels, so on a CUDA execution provider it is reported unavailable, never run on the CPU
  behind the user's back.
- ort-int4: `MatMulNBitsQuantizer` 4-bit weight-only, block size 32, symmetric.

Exports and quantized graphs are cached per checkpoint, variant and library versions.
On a CUDA EP every run checks, through ORT's profiler, which provider each node ran on;
compute nodes on the CPU are an error, not a result.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..envinfo import package_versions
from ..errors import BackendUnavailable
from ..models import ModelSource, arch_info, cache_dir, checkpoint_fingerprint
from .base import Backend, LoadedModel

INT4_BLOCK_SIZE = 32
# Node types that may legitimately run on the CPU EP even in a CUDA session (shape plumbing).
_HOST_OK_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Reshape", "Slice", "Range", "Cast",
                "ConstantOfShape", "Equal", "Where", "Expand", "Constant", "Less", "Greater", "Add", "Sub", "Mul", "Div"}


def _ort_version() -> str | None:
    versions = package_versions(("onnxruntime", "onnxruntime-gpu"))
    return versions["onnxruntime-gpu"] or versions["onnxruntime"]


class _KVWrapper:
    """Built lazily (needs torch): flat (input_ids, attention_mask, position_ids, *past) -> (logits, *present)."""

    @staticmethod
    def build(model, num_layers: int):
        import torch
        from transformers import DynamicCache

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, position_ids, *past):
                cache = DynamicCache()
                for i in range(num_layers):
                    cache.update(past[2 * i], past[2 * i + 1], i)
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True,
                )
                present = []
                for layer in out.past_key_values.layers:
                    present += [layer.keys, layer.values]
                return (out.logits, *present)

        return Wrapper()


def _io_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


BUILT: list[Path] = []  # cache directories this process built (what prepare() reports)


def _atomic_dir(target: Path, build) -> Path:
    """Build into a temp dir, then rename into place; concurrent builders keep the first."""
    if (target / "meta.json").exists():
        return target
    BUILT.append(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_fp32(source: ModelSource) -> tuple[Path, dict]:
    """Export (or reuse) the float32 ONNX graph of `source`. Returns (model dir, meta)."""
    key = hashlib.sha256(
        json.dumps([source.path_or_id, checkpoint_fingerprint(source), package_versions(("torch", "transformers", "onnx"))]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "onnx" / f"{Path(source.path_or_id).name}-{key}" / "fp32"

    def build(tmp: Path):
        import torch
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            source.path_or_id, dtype=torch.float32, attn_implementation="eager", **source.load_kwargs()
        ).eval()
        arch = arch_info(model.config)
        wrapper = _KVWrapper.build(model, arch.num_layers)
        inputs, outputs = _io_names(arch.num_layers)
        b, s, p = 1, 8, 5
        ids = torch.randint(10, arch.vocab_size, (b, s))
        mask = torch.ones(b, p + s, dtype=torch.long)
        pos = torch.arange(p, p + s)[None]
        past = [torch.randn(b, arch.num_kv_heads, p, arch.head_dim) for _ in range(2 * arch.num_layers)]
        Dim = torch.export.Dim
        batch, seq, past_len, total = Dim("batch", max=64), Dim("seq", max=8192), Dim("past", max=8192), Dim("total", max=16384)
        # *past arrives as one tuple argument: its shapes are one nested list
        dyn = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple([{0: batch, 2: past_len}] * len(past)))
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (ids, mask, pos, *past), str(tmp / "model.onnx"), dynamo=True,
                input_names=inputs, output_names=outputs, dynamic_shapes=dyn, external_data=True,
                optimize=True,
            )
        meta = {"exporter": "torch.onnx.export(dynamo=True)", "export_s": round(time.perf_counter() - t0, 1),
                "source": source.ref, "arch": arch.__dict__, "variant": "fp32"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    path = _atomic_dir(target, build)
    return path, json.loads((path / "meta.json").read_text())


def quantize_variant(fp32_dir: Path, variant: str) -> tuple[Path, dict]:
    """Quantize the fp32 export with onnxruntime's tools (cached beside it)."""
    target = fp32_dir.parent / f"{variant}-ort{_ort_version()}"

    def build(tmp: Path):
        import onnx

        t0 = time.perf_counter()
        src = fp32_dir / "model.onnx"
        out = tmp / "model.onnx"
        if variant == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(src, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=False, use_external_data_format=True)
            options = {"method": "quantize_dynamic", "weight_type": "QInt8", "op_types": ["MatMul"], "per_channel": False}
        elif variant == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

            algo = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=True, bits=4)
            quant = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=algo)
            quant.process()
            quant.model.save_model_to_file(str(out), use_external_data_format=True)
            options = {"method": "MatMulNBits", "bits": 4, "block_size": INT4_BLOCK_SIZE, "symmetric": True}
        else:
            raise ValueError(f"unknown ORT variant {variant!r}")
        meta = json.loads((fp32_dir / "meta.json").read_text())
        meta.update(variant=variant, quantize=options, quantize_s=round(time.perf_counter() - t0, 1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    path = _atomic_dir(target, build)
    return path, json.loads((path / "meta.json").read_text())


def graph_weight_bytes(model_dir: Path) -> tuple[int, int]:
    """(all initializer bytes, bytes of the input-embedding Gather table) of an ONNX graph."""
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[init.name] = n * itemsize
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather" and node.input[0] in sizes}
    emb = max((sizes[n] for n in gathered), default=0)
    return sum(sizes.values()), emb


def node_placement(profile_file: str) -> dict[str, dict[str, int]]:
    """Count node executions per provider and op type from an ORT profiling JSON file."""
    events = json.loads(Path(profile_file).read_text())
    placement: dict[str, dict[str, int]] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args:
            continue
        by_op = placement.setdefault(args["provider"], {})
        op = args.get("op_name", "?")
        by_op[op] = by_op.get(op, 0) + 1
    return placement


def host_fallback_ops(placement: dict[str, dict[str, int]], wanted: str) -> list[str]:
    """Compute op types that ran on another provider than `wanted` (shape plumbing excepted)."""
    bad = set()
    for provider, ops in placement.items():
        if provider != wanted:
            bad |= {op for op in ops if op not in _HOST_OK_OPS}
    return sorted(bad)


class OrtLoaded(LoadedModel):
    def __init__(self, backend: str, device: str, model_dir: Path, meta: dict, options: dict, providers: list[str]):
        import onnxruntime as ort

        from ..models import ArchInfo

        self.backend, self.device, self.options = backend, device, options
        self.model_dir, self.meta = model_dir, meta
        self.arch = ArchInfo(**meta["arch"])
        self.providers = providers
        so = ort.SessionOptions()
        so.intra_op_num_threads = options["intra_op_num_threads"]
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._profile_dir = None
        if device == "cuda":
            self._profile_dir = tempfile.mkdtemp(prefix="quantperf-ortprof-")
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(self._profile_dir, "ort")
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=providers)
        self._placement: dict = {}
        if device == "cuda":
            self._check_placement()
        self._weights = graph_weight_bytes(model_dir)

    def _empty_past(self, batch: int):
        import numpy as np

        shape = (batch, self.arch.num_kv_heads, 1, self.arch.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.arch.num_layers)]

    def _forward(self, ids, past, past_len: int, dummy: bool):
        """One session call: ids [b, s]; past has `past_len` real positions (+1 dummy at prefill)."""
        import numpy as np

        b, s = ids.shape
        total_past = past[0].shape[2]
        mask = np.ones((b, total_past + s), dtype=np.int64)
        if dummy:
            mask[:, 0] = 0
        pos = np.broadcast_to(np.arange(past_len, past_len + s, dtype=np.int64), (b, s)).copy()
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask, "position_ids": pos}
        for i, t in enumerate(past):
            feed[self._past_names[i]] = t
        outs = self.session.run(None, feed)
        logits = outs[0]
        if not np.all(np.isfinite(logits[:, -1])):
            from ..errors import NonFiniteLogits

            raise NonFiniteLogits(f"{self.backend}: NaN/inf in logits")
        return logits, outs[1:]

    @property
    def _past_names(self):
        return [i.name for i in self.session.get_inputs()[3:]]

    def _decode(self, input_ids, new_tokens: int, clock=None):
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.int64)
        past = self._empty_past(ids.shape[0])
        if clock:
            clock.start()
        logits, past = self._forward(ids, past, 0, dummy=True)
        generated = []
        nxt = logits[:, -1].argmax(-1)
        if clock:
            clock.mark()
        generated.append(nxt)
        plen = ids.shape[1]
        for _ in range(new_tokens - 1):
            logits, past = self._forward(nxt[:, None], past, plen, dummy=False)
            # the dummy position stays in the cache, masked; the next call's mask covers it
            plen += 1
            nxt = logits[:, -1].argmax(-1)
            if clock:
                clock.mark()
            generated.append(nxt)
        return np.stack(generated, axis=1).tolist()

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        return self._decode(input_ids, new_tokens, clock)

    def _check_placement(self) -> None:
        import numpy as np

        ids = np.full((1, 8), 10, dtype=np.int64)
        self._forward(ids, self._empty_past(1), 0, dummy=True)
        profile = self.session.end_profiling()
        self._placement = node_placement(profile)
        bad = host_fallback_ops(self._placement, "CUDAExecutionProvider")
        if bad:
            raise BackendUnavailable(
                f"{self.backend}: on the CUDA execution provider these ops ran on the CPU (no CUDA kernels): "
                f"{', '.join(bad)}; a host fallback is not a GPU result"
            )

    def weight_bytes(self) -> int:
        return self._weights[0]

    def streamed_weight_bytes(self) -> int:
        total, emb = self._weights
        return total - emb if not self.arch.tie_word_embeddings else total

    def kv_bytes_per_element(self) -> float:
        return 4.0

    def logits(self, input_ids):
        import numpy as np
        import torch

        ids = np.asarray([list(input_ids)], dtype=np.int64)
        logits, _ = self._forward(ids, self._empty_past(1), 0, dummy=True)
        return torch.from_numpy(np.ascontiguousarray(logits[0], dtype=np.float32))

    def execution_report(self) -> dict:
        return {"providers": self.session.get_providers(), "node_placement": self._placement}

    def close(self) -> None:
        del self.session
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)


class OrtBackend(Backend):
    def _providers(self, device: str) -> list[str]:
        return ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]

    def identity(self, device: str) -> dict:
        ident = {"variant": self.entry.kwargs["variant"], "providers": self._providers(device),
                 "intra_op_num_threads": _threads()}
        if ident["variant"] == "int8":
            ident.update(method="quantize_dynamic", weight_type="QInt8")
        if ident["variant"] == "int4":
            ident.update(method="MatMulNBits", block_size=INT4_BLOCK_SIZE, symmetric=True)
        return ident

    def library_reason(self, device: str) -> str | None:
        for mod, hint in (("onnx", "pip install onnx"), ("onnxscript", "pip install onnxscript"),
                          ("torch", "pip install torch"), ("transformers", "pip install transformers")):
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed: {hint}"
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed: pip install 'quantperf[cpu]' (CPU) or 'quantperf[gpu]' (onnxruntime-gpu)"
        if device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (
                    "the installed onnxruntime has no CUDAExecutionProvider "
                    f"(providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                    "built for your CUDA version instead of onnxruntime"
                )
        return None

    def _graph(self, source: ModelSource) -> tuple[Path, dict]:
        fp32_dir, meta = export_fp32(source)
        variant = self.entry.kwargs["variant"]
        return (fp32_dir, meta) if variant == "fp32" else quantize_variant(fp32_dir, variant)

    def prepare(self, source: ModelSource, device: str) -> bool:
        before = len(BUILT)
        self._graph(source)
        return len(BUILT) > before

    def load(self, source: ModelSource, device: str) -> OrtLoaded:
        self.check(device)
        model_dir, meta = self._graph(source)
        return OrtLoaded(self.name, device, model_dir, meta, self.identity(device), self._providers(device))


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
