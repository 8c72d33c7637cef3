"""Variants of the fp32 export made by onnxruntime's own tools, cached beside it in
`<export>/<variant>-ort<version>`.

- int8: `onnxruntime.quantization.quantize_dynamic` (DynamicQuantizeLinear + MatMulInteger,
  QInt8 weights, per tensor). It has no CUDA kernels (see `variant_unavailable_reason`).
- int4: `MatMulNBitsQuantizer`, 4-bit weight-only, block size 32, symmetric (MatMulNBits has
  CPU and CUDA kernels).
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` with keep_io_types=False:
  the graph's float inputs and outputs become float16 too, so the KV cache is stored and fed
  back in float16 (half the bytes of the fp32 cache) and no step casts the whole cache on the
  way in and out (keep_io_types=True would add a Cast over every past/present tensor per step).
  The nodes of the RMSNorm and rotary-embedding modules stay float32, as transformers computes
  them in float32 under fp16 (a squared activation above 256 overflows float16; a rotary angle
  position x frequency loses up to position/2048 rad in float16); ORT's own mixed-precision
  post-pass (`OnnxModel.remove_cascaded_cast_nodes`) then drops the fp32->fp16->fp32 round
  trips the converter leaves between kept nodes. The nodes are found by the exporter's module
  metadata; a graph without it is converted entirely. CUDA only (`variant_unavailable_reason`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ...envinfo import package_versions
from .export import atomic_dir

VARIANTS = ("fp32", "fp16", "int8", "int4")
INT4_BLOCK_SIZE = 32
FP16_KEEP_FP32_MODULES = ("RMSNorm", "RotaryEmbedding")  # class-name suffixes kept in float32
_INT8_CUDA = (
    "onnxruntime's dynamic INT8 graph (DynamicQuantizeLinear + MatMulInteger) has no CUDA kernels: on the CUDA "
    "execution provider those nodes would run on the CPU EP, with copies across PCIe, which is not a GPU result"
)
_FP16_CPU = (
    "ONNX Runtime's CPU execution provider has few float16 kernels (it would wrap most fp16 nodes in casts to "
    "float32), so an fp16 graph on the CPU measures casts, not fp16 inference: ort-fp16 runs on cuda"
)


def ort_version() -> str | None:
    versions = package_versions(("onnxruntime", "onnxruntime-gpu"))
    return versions["onnxruntime-gpu"] or versions["onnxruntime"]


def variant_unavailable_reason(variant: str, device: str) -> str | None:
    """Why a graph variant cannot give an honest figure on `device` (None when it can)."""
    if variant not in VARIANTS:
        return f"unknown ORT variant {variant!r}; known: {', '.join(VARIANTS)}"
    if variant == "int8" and device == "cuda":
        return _INT8_CUDA
    if variant == "fp16" and device != "cuda":
        return _FP16_CPU
    return None


def fp32_island_nodes(model, suffixes=FP16_KEEP_FP32_MODULES) -> list[str]:
    """Names of nodes exported from modules whose class name ends with one of `suffixes`
    (the dynamo exporter records each node's module classes in `pkg.torch.onnx.class_hierarchy`)."""
    names = []
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.class_hierarchy":
                classes = [c.strip(" '\"") for c in prop.value.strip("[]").split(",")]
                if any(c.endswith(suffixes) for c in classes):
                    names.append(node.name)
    return names


def _int8(src: Path, out: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     per_channel=False, use_external_data_format=True)
    return {"method": "quantize_dynamic", "weight_type": "QInt8", "op_types": ["MatMul"], "per_channel": False}


def _int4(src: Path, out: Path) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    algo = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=True, bits=4)
    quant = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=algo)
    quant.process()
    quant.model.save_model_to_file(str(out), use_external_data_format=True)
    return {"method": "MatMulNBits", "bits": 4, "block_size": INT4_BLOCK_SIZE, "symmetric": True}


def repair_converted_graph(graph) -> dict:
    """The fp16 converter inserts a Cast per kept-fp32 consumer, named after the value it casts:
    where one value feeds several kept-fp32 nodes on some graphs (LLaMA's embedding output on
    onnxruntime 1.31) it emits the same Cast twice -- two nodes of one name defining one value,
    which onnxruntime refuses to load ("Duplicate definition of name"). A repeat that computes
    the same thing (op, inputs, attributes) as the first definition is dropped; two different
    definitions of one value are an error. Then node names are made unique (they carry no meaning)."""
    first: dict[str, object] = {}
    drop = []
    for node in graph.node:
        same = [first[o] for o in node.output if o in first]
        if same:
            prev = same[0]
            if (prev.op_type, list(prev.input), list(prev.output), list(prev.attribute)) != \
                    (node.op_type, list(node.input), list(node.output), list(node.attribute)):
                raise ValueError(f"fp16 conversion: value {node.output[0]!r} is defined by two different nodes "
                                 f"({prev.name!r}, {node.name!r}); cannot repair")
            drop.append(node)
            continue
        for o in node.output:
            first[o] = node
    for node in drop:
        graph.node.remove(node)
    seen: set[str] = set()
    renamed = 0
    for node in graph.node:
        if node.name and node.name in seen:
            i = 1
            while f"{node.name}_{i}" in seen:
                i += 1
            node.name = f"{node.name}_{i}"
            renamed += 1
        seen.add(node.name)
    return {"duplicate_nodes_dropped": len(drop), "nodes_renamed": renamed}


def _fp16(src: Path, out: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    keep = fp32_island_nodes(onnx.load(str(src), load_external_data=False))
    # a path (not a loaded model): the converter then runs shape inference through a file,
    # which works for graphs over protobuf's 2 GB limit
    model = OnnxModel(convert_float_to_float16(str(src), keep_io_types=False, node_block_list=keep))
    model.remove_cascaded_cast_nodes()
    repaired = repair_converted_graph(model.model.graph)
    model.save_model_to_file(str(out), use_external_data_format=True)
    return {"method": "convert_float_to_float16", "keep_io_types": False,
            "fp32_modules": list(FP16_KEEP_FP32_MODULES), "fp32_nodes": len(keep), **repaired}


_BUILDERS = {"int8": _int8, "int4": _int4, "fp16": _fp16}


def quantize_variant(fp32_dir: Path, variant: str) -> tuple[Path, dict]:
    """Make (or reuse) `variant` of the fp32 export with onnxruntime's tools. Returns (model dir, meta)."""
    if variant not in _BUILDERS:
        raise ValueError(f"unknown ORT variant {variant!r}; known: {', '.join(_BUILDERS)}")
    target = fp32_dir.parent / f"{variant}-ort{ort_version()}"

    def build(tmp: Path):
        t0 = time.perf_counter()
        options = _BUILDERS[variant](fp32_dir / "model.onnx", tmp / "model.onnx")
        meta = json.loads((fp32_dir / "meta.json").read_text())
        meta.update(variant=variant, quantize=options, quantize_s=round(time.perf_counter() - t0, 1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    path = atomic_dir(target, build)
    return path, json.loads((path / "meta.json").read_text())
