"""The float32 ONNX export of a causal LM with its KV cache as flat tensors, and facts read
from exported graphs.

`torch.onnx.export(..., dynamo=True)` on a wrapper that passes the KV cache as flat tensors
(optimum-onnx pins transformers<4.58, so it is not used). One graph serves prefill and
decode: prefill is fed one masked-out dummy past position, so every call has a past of
length >= 1. Inputs: input_ids, attention_mask, position_ids, past_key_<i>, past_value_<i>;
outputs: logits, present_key_<i>, present_value_<i>.

Exports are cached per checkpoint and library versions in `<cache>/onnx/<model>-<key>/fp32`;
every cache directory is built in a temporary directory and renamed into place, so a
concurrent or interrupted build never leaves a half-written graph behind.

`export_fp32(source, layers=n)` exports the model cut to its first n decoder layers (the
checkpoint's own weights for them, embedding, final norm and lm_head unchanged), in
`<cache>/onnx/<model>-<key>-l<n>/fp32`. Kernel mode times one decoder layer's projections, so it
needs no more: on Llama-3.1-8B shapes the whole float32 export is 32 GB (with its float16 and
int4 variants and the checkpoint, more than a 64 GB disk holds), a one-layer export 5 GB. Its
meta.json keeps the whole model's `arch` (what the projections belong to) and says
`export_layers`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ...envinfo import package_versions
from ...models import (
    ModelSource,
    arch_info,
    cache_dir,
    checkpoint_fingerprint,
    write_atomically,
)

BUILT: list[Path] = []  # cache directories this process built (what prepare() reports)


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


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def atomic_dir(target: Path, build) -> Path:
    """Build into a temp dir, then rename into place; concurrent builders keep the first."""
    if (target / "meta.json").exists():
        return target
    BUILT.append(target)
    write_atomically(target, build, marker="meta.json")
    return target


def truncated_config(config, layers: int):
    """`config` cut to its first `layers` decoder layers (a copy; per-layer lists such as
    `layer_types` cut alike). A ValueError when the model has fewer layers."""
    import copy

    total = config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"cannot export {layers} decoder layers of a model with {total}")
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    for name, value in list(vars(config).items()):
        if name == "layer_types" and isinstance(value, list) and len(value) == total:
            setattr(config, name, value[:layers])
    return config


def export_fp32(source: ModelSource, layers: int | None = None) -> tuple[Path, dict]:
    """Export (or reuse) the float32 ONNX graph of `source`, or of its first `layers` decoder
    layers. Returns (model dir, meta)."""
    key = hashlib.sha256(
        json.dumps([source.path_or_id, checkpoint_fingerprint(source),
                    package_versions(("torch", "transformers", "onnx"))]
                   + ([layers] if layers else [])).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "onnx" / f"{Path(source.path_or_id).name}-{key}{f'-l{layers}' if layers else ''}" / "fp32"

    def build(tmp: Path):
        import torch
        from transformers import AutoModelForCausalLM

        from ...fidelity import load_kwargs

        t0 = time.perf_counter()
        config, cut = source.config(), {}
        whole = arch_info(config)
        if layers:
            cut = {"config": truncated_config(config, layers)}
        model = AutoModelForCausalLM.from_pretrained(
            source.path_or_id, dtype=torch.float32, attn_implementation="eager", **cut, **source.load_kwargs(),
            **load_kwargs({}),  # the export's model is the built-in code: Hub kernels off
        ).eval()
        arch = arch_info(model.config)
        wrapper = _KVWrapper.build(model, arch.num_layers).eval()
        inputs, outputs = io_names(arch.num_layers)
        b, s, p = 1, 8, 5
        ids = torch.randint(10, arch.vocab_size, (b, s))
        mask = torch.ones(b, p + s, dtype=torch.long)
        pos = torch.arange(p, p + s)[None]
        past = [torch.randn(b, arch.num_kv_heads, p, arch.head_dim) for _ in range(2 * arch.num_layers)]
        Dim = torch.export.Dim
        batch, seq = Dim("batch", max=64), Dim("seq", max=8192)
        past_len, total = Dim("past", max=8192), Dim("total", max=16384)
        # *past arrives as one tuple argument: its shapes are one nested list
        dyn = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
               tuple([{0: batch, 2: past_len}] * len(past)))
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (ids, mask, pos, *past), str(tmp / "model.onnx"), dynamo=True,
                input_names=inputs, output_names=outputs, dynamic_shapes=dyn, external_data=True,
                optimize=True,
            )
        meta = {"exporter": "torch.onnx.export(dynamo=True)", "export_s": round(time.perf_counter() - t0, 1),
                "source": source.ref, "arch": whole.__dict__, "variant": "fp32", "export_layers": arch.num_layers}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    path = atomic_dir(target, build)
    return path, json.loads((path / "meta.json").read_text())


def initializer_bytes(init) -> int:
    """Bytes of one ONNX initializer, from its dims and element type (data not loaded)."""
    import onnx

    n = 1
    for d in init.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def graph_weight_bytes(model_dir: Path) -> tuple[int, int]:
    """(all initializer bytes, bytes of the input-embedding Gather table) of an ONNX graph."""
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    sizes = {init.name: initializer_bytes(init) for init in model.graph.initializer}
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather" and node.input[0] in sizes}
    emb = max((sizes[n] for n in gathered), default=0)
    return sum(sizes.values()), emb
