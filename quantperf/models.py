"""Model references: built-in synthetic shapes, the bundled fixture model, hub ids and local paths.

- `synthetic:<shape>`: a real architecture's shape with deterministic random weights, built
  once per machine into the cache directory as safetensors (on the GPU when there is one).
- `fixture`: the small trained LLaMA shipped with quantperf (for quality metrics).
- `hf:<org/name>`: a hub id, loaded by transformers (`local_files_only` when asked).
- a directory: a local checkpoint.

`trust_remote_code` is off unless asked; only safetensors weights are loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackendUnavailable, ConfigError

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
FIXTURE_DIR = PACKAGE_DATA / "fixture-llama"
CACHE_ENV = "QUANTPERF_CACHE"

# Real architectures' shapes. Every Linear dimension is a multiple of 64.
SHAPES: dict[str, dict] = {
    "llama-tiny": dict(  # CPU CI
        model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=8192, max_position_embeddings=1024,
    ),
    "llama-125m": dict(  # a ~125M LLaMA (small class)
        model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, vocab_size=32000, max_position_embeddings=2048,
    ),
    "qwen2.5-0.5b": dict(  # Qwen2.5-0.5B
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    "llama-1b": dict(  # TinyLlama-1.1B
        model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
    ),
    "llama-3b": dict(  # Llama-3.2-3B
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096,
        tie_word_embeddings=True, rope_theta=500000.0,
    ),
    "llama-8b": dict(  # Llama-3.1-8B
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096,
        rope_theta=500000.0,
    ),
    "llama-70b": dict(  # Llama-3.1-70B: 141 GB in 16 bits, built tensor by tensor (STREAMED_BUILD_PARAMETERS)
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096,
        rope_theta=500000.0,
    ),
}
# A shape above this many parameters is never whole in memory while it is built: each tensor is
# drawn on the build device and written to a safetensors shard of at most SHARD_BYTES. (Smaller
# shapes keep transformers' own initialisation, so their weights stay what they were.)
STREAMED_BUILD_PARAMETERS = 20e9
SHARD_BYTES = 5 * 2**30

# The seed study's size classes, by parameter count.
SIZE_CLASSES = (("small", 0, 1e9), ("medium", 1e9, 6e9), ("large", 6e9, float("inf")))


def size_class(parameters: int) -> str:
    """`small` (< 1B), `medium` (1B-6B) or `large` (> 6B) parameters."""
    if parameters < 0:
        raise ValueError(f"parameter count must be >= 0, got {parameters}")
    for name, low, high in SIZE_CLASSES:
        if low <= parameters < high:
            return name
    raise AssertionError("unreachable")


def synthetic_parameters(shape: str) -> int:
    """Parameter count of a synthetic shape (LLaMA-style blocks), without building it:
    embeddings (+ an untied lm_head) + per layer q/k/v/o, gate/up/down and two norms + final norm."""
    c = SHAPES[shape]
    h, i, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return v * h * (1 if c.get("tie_word_embeddings") else 2) + layers * per_layer + h


LARGE_PARAMETERS = 2e9  # a configuration above this many parameters is marked `slow`


def is_large(ref: str) -> bool:
    """Whether a model reference is big enough to be marked slow (synthetic shapes only: the size
    of a hub id or a local checkpoint is not known before loading it)."""
    if ref.startswith("synthetic:") and ref.split(":", 1)[1] in SHAPES:
        return synthetic_parameters(ref.split(":", 1)[1]) > LARGE_PARAMETERS
    return False


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "quantperf")
    return Path(root)


def _cache_text() -> str:
    return f"{CACHE_ENV}={os.environ[CACHE_ENV]}" if os.environ.get(CACHE_ENV) else f"{CACHE_ENV} unset: {cache_dir()}"


# errnos of a write that cannot happen where it was asked to (not a bug: a setting or the disk)
_UNWRITABLE = {"EACCES", "EPERM", "EROFS", "ENOTDIR", "EEXIST", "ENOSPC", "EDQUOT"}


def _is_unwritable(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and errno.errorcode.get(exc.errno or -1) in _UNWRITABLE


def unwritable_cache(directory: Path, exc: OSError, what: str) -> ConfigError:
    """The one-line error for a cache that cannot be written: the directory, the OS error and
    QUANTPERF_CACHE."""
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", None)):
        hint = f"free disk space there or point {CACHE_ENV} at a larger disk"
    else:
        hint = f"make it writable or point {CACHE_ENV} at a writable directory"
    where = f" ({exc.filename})" if exc.filename else ""
    return ConfigError(f"cannot write {what} into the cache directory {directory}: {exc.strerror or exc}{where}; "
                       f"{hint} ({_cache_text()})")


SAFETENSORS_MAX_HEADER = 100_000_000  # what the safetensors library itself accepts


def safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a whole safetensors file (None: its header parses and the file holds
    every byte the header names). Reads the header only."""
    try:
        size = file.stat().st_size
        if size < 8:
            return f"{size} bytes: shorter than a safetensors header"
        with open(file, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > min(size - 8, SAFETENSORS_MAX_HEADER):
                return f"truncated or not safetensors: its header length says {n} bytes, the file has {size}"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except (ValueError, UnicodeDecodeError):
        return "its header is not valid JSON"
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "its header does not describe tensors"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"truncated: {size} of {need} bytes"
    return None


def check_checkpoint(directory: Path, rebuild: str) -> None:
    """A ConfigError naming the first corrupt or truncated safetensors file of a checkpoint
    directory, and `rebuild`: what to do about it."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise ConfigError(f"{file}: corrupt safetensors file ({problem}); {rebuild}")


@dataclass(frozen=True)
class ArchInfo:
    """What the roofline and the KV-cache arithmetic need to know about a model."""

    model_type: str
    parameters: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def size_class(self) -> str:
        return size_class(self.parameters)


@dataclass
class ModelSource:
    """A resolved model reference: where transformers loads it from and with which flags."""

    ref: str
    path_or_id: str
    local_files_only: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer: bool = False
    meta: dict = field(default_factory=dict)
    built: bool = False  # resolve() built the checkpoint just now (a one-time cost)

    def load_kwargs(self) -> dict:
        kw = dict(
            local_files_only=self.local_files_only, trust_remote_code=self.trust_remote_code, use_safetensors=True
        )
        if self.revision:
            kw["revision"] = self.revision
        return kw

    def config(self):
        from transformers import AutoConfig

        kw = self.load_kwargs()
        kw.pop("use_safetensors")
        return AutoConfig.from_pretrained(self.path_or_id, **kw)


def check_synthetic(refs, where: str) -> None:
    """A `synthetic:<shape>` reference naming no known shape is one ConfigError naming `where`
    (the option or matrix field), before anything is collected or measured."""
    for ref in refs:
        if ref.startswith("synthetic:") and ref.split(":", 1)[1] not in SHAPES:
            raise ConfigError(f"{where}: unknown synthetic shape {ref.split(':', 1)[1]!r} in {ref!r}; known: "
                              f"{', '.join(SHAPES)} (e.g. synthetic:{next(iter(SHAPES))})")


def synthetic_config(shape: str):
    if shape not in SHAPES:
        raise ConfigError(f"unknown synthetic shape {shape!r}; known: {', '.join(SHAPES)}")
    from transformers import AutoConfig

    params = dict(SHAPES[shape])
    model_type = params.pop("model_type")
    params.setdefault("tie_word_embeddings", False)
    return AutoConfig.for_model(model_type, **params)


def count_parameters(config) -> int:
    """Parameter count of a config, by instantiating it on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def arch_info(config) -> ArchInfo:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ArchInfo(
        model_type=config.model_type,
        parameters=count_parameters(config),
        num_layers=config.num_hidden_layers,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def write_atomically(target: Path, write, marker: str | None = None) -> None:
    """Run `write(tmp)` into a temporary directory beside `target`, then rename it into place;
    a concurrent builder that won the race keeps its copy (won: `target` exists, or holds the
    file `marker` when one is named), and a failed build leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker if marker else target).exists():  # another process won the race: keep theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_synthetic(shape: str, target: Path, device: str, seed: int) -> None:
    """Build a shape with deterministic random weights and save it as safetensors, atomically."""
    import torch
    from transformers import AutoModelForCausalLM

    config = synthetic_config(shape)
    torch.manual_seed(seed)
    if device == "cuda":
        torch.cuda.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "quantperf_synthetic.json").write_text(
            json.dumps({"shape": shape, "seed": seed, "rng_device": device, "torch": torch.__version__}, indent=2)
        )

    write_atomically(target, write)  # the model is freed when this returns


def require_disk(directory: Path, need_bytes: int, what: str) -> None:
    """BackendUnavailable (a skip with its reason, not an error) when `directory`'s file system
    has less than `need_bytes` free: the machine cannot hold `what`."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise BackendUnavailable(f"{what} needs {need_bytes / 1e9:.0f} GB of free disk in {directory}; "
                                 f"{free / 1e9:.0f} GB are free: point {CACHE_ENV} at a larger disk")


def _build_synthetic_streamed(shape: str, target: Path, device: str, seed: int) -> None:
    """Build a shape too large to hold in memory: tensor by tensor, drawn like transformers' LLaMA
    initialisation (normal(0, initializer_range) for linears and embeddings, ones for norms) from a
    generator seeded per tensor on `device`, into safetensors shards with an index, atomically."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = synthetic_config(shape)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    tensors = list(meta.state_dict().items())
    shards: list[list[tuple[int, str, object]]] = [[]]
    size = 0
    for i, (name, t) in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((i, name, t))
        size += nbytes

    def write(tmp: Path) -> None:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards, 1):
            file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            out = {}
            for i, name, t in shard:
                x = torch.empty(t.shape, dtype=torch.float16, device=device)
                if name.endswith("norm.weight"):
                    x.fill_(1.0)
                else:
                    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
                    x.normal_(0.0, config.initializer_range, generator=gen)
                out[name] = x.cpu()
                weight_map[name] = file
                total += x.numel() * x.element_size()
            save_file(out, str(tmp / file), metadata={"format": "pt"})
            del out
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        config.save_pretrained(tmp)
        (tmp / "quantperf_synthetic.json").write_text(json.dumps(
            {"shape": shape, "seed": seed, "rng_device": device, "torch": torch.__version__,
             "build": "streamed, one generator per tensor"}, indent=2))

    write_atomically(target, write)


def synthetic_target(shape: str, build_device: str, seed: int = 0) -> Path:
    """Where the synthetic `shape` checkpoint lives in the cache. CPU and CUDA random generators
    differ: the weights are deterministic per RNG device (`build_device`)."""
    return cache_dir() / "synthetic" / f"{shape}-seed{seed}-{build_device}rng"


def synthetic_cached(target: Path) -> bool:
    """Whether a synthetic checkpoint's weights are in `target` (a build is renamed there whole)."""
    return (target / "model.safetensors").exists() or (target / "model.safetensors.index.json").exists()


def model_type_of(ref: str) -> str | None:
    """The transformers `model_type` a reference loads, where it is known without loading anything
    (a synthetic shape, the fixture, a local checkpoint's config.json); None otherwise (a hub id).
    Lets a worker import the architecture's modeling code ahead of its load."""
    if ref.startswith("synthetic:"):
        return SHAPES.get(ref.split(":", 1)[1], {}).get("model_type")
    if ref in ("fixture", "fixture:llama"):
        config = FIXTURE_DIR / "config.json"
    elif ref.startswith(("hf:", "fake:")):
        return None
    else:
        config = Path(ref).expanduser() / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) and model_type.isidentifier() else None


def resolve(ref: str, *, local_files_only: bool = False, trust_remote_code: bool = False,
            build_device: str | None = None, seed: int = 0) -> ModelSource:
    """Turn a model reference into a ModelSource, building a synthetic checkpoint if needed."""
    if ref.startswith("synthetic:"):
        shape = ref.split(":", 1)[1]
        synthetic_config(shape)  # validates the name
        if build_device is None:
            import torch

            build_device = "cuda" if torch.cuda.is_available() else "cpu"
        target = synthetic_target(shape, build_device, seed)
        built = not synthetic_cached(target)
        if built:
            params = synthetic_parameters(shape)
            require_disk(target.parent, int(params * 2 * 1.02), f"the synthetic {shape} checkpoint")
            build = _build_synthetic_streamed if params > STREAMED_BUILD_PARAMETERS else _build_synthetic
            try:
                # weights deleted by hand (a build in progress is never here: it is renamed in whole)
                if target.is_dir():
                    shutil.rmtree(target)
                build(shape, target, build_device, seed)
            except OSError as exc:
                if not _is_unwritable(exc):
                    raise
                raise unwritable_cache(target.parent, exc, f"the synthetic {shape} checkpoint") from None
        else:
            check_checkpoint(target, f"delete the directory {target} (or the whole cache, {_cache_text()}) and the "
                                     "next run rebuilds it")
        try:
            meta = json.loads((target / "quantperf_synthetic.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{target / 'quantperf_synthetic.json'}: missing or not valid JSON; delete the directory "
                              f"{target} (or the whole cache, {_cache_text()}) and the next run rebuilds it") from None
        return ModelSource(ref, str(target), local_files_only=True, meta=meta, built=built)
    if ref.startswith("fake:") and os.environ.get("QUANTPERF_TEST_BACKENDS") == "1":
        return ModelSource(ref, ref, meta={"fake": True})
    if ref in ("fixture", "fixture:llama"):
        if not (FIXTURE_DIR / "model.safetensors").exists():
            raise ConfigError(
                f"fixture model missing at {FIXTURE_DIR}: reinstall quantperf or run scripts/train_fixture.py"
            )
        return ModelSource(ref, str(FIXTURE_DIR), local_files_only=True, tokenizer=True, meta={"fixture": True})
    if ref.startswith("hf:"):
        return ModelSource(
            ref, ref[3:], local_files_only=local_files_only, trust_remote_code=trust_remote_code, tokenizer=True
        )
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"model directory {path} has no config.json: is it a transformers checkpoint?")
        if not any(path.glob("*.safetensors")):
            raise ConfigError(
                f"model directory {path} has no *.safetensors weights: quantperf loads safetensors only "
                "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
            )
        check_checkpoint(path, "re-save or re-download the checkpoint")
        return ModelSource(ref, str(path), local_files_only=True, trust_remote_code=trust_remote_code,
                           tokenizer=(path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists())
    raise ConfigError(
        f"model {ref!r} is neither `synthetic:<shape>` ({', '.join(SHAPES)}), `fixture`, `hf:<org/name>` "
        "nor an existing directory"
    )


def checkpoint_fingerprint(source: ModelSource) -> str:
    """A cheap identity for a local checkpoint: sizes and mtimes of its weight files."""
    path = Path(source.path_or_id)
    if not path.is_dir():
        return source.path_or_id + (f"@{source.revision}" if source.revision else "")
    parts = [f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(path.glob("*.safetensors"))]
    return "|".join(parts)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids the Hub, read now."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def ensure_available(source: ModelSource) -> None:
    """Before loading: a hub model that may not be downloaded (local_files_only, or offline) must
    be in the local Hugging Face cache; if it is not, one ConfigError naming it, at once (no
    network retries)."""
    if not source.ref.startswith("hf:") or not (source.local_files_only or hub_offline()):
        return
    from huggingface_hub import try_to_load_from_cache

    repo = source.path_or_id
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        found = try_to_load_from_cache(repo, "config.json", cache_dir=cache, revision=source.revision)
    except ValueError as exc:  # HFValidationError: not an org/name id
        raise ConfigError(f"model {source.ref}: {repo!r} is not a Hugging Face model id ({' '.join(str(exc).split())})"
                          ) from None
    if not isinstance(found, str):
        if cache is None:
            from huggingface_hub import constants

            cache = constants.HF_HUB_CACHE
        why = "--local-files-only" if source.local_files_only else "HF_HUB_OFFLINE"
        raise ConfigError(f"model {source.ref}: not in the local Hugging Face cache ({cache}) and {why} forbids "
                          f"downloading it; download it once where the Hub is reachable (`hf download {repo}`), "
                          "or check the id")


def describe_load_error(exc: BaseException, ref: str) -> str | None:
    """One line for a load failure whose cause is a file, the cache or the model id rather than
    the backend (None: nothing more to say than the exception)."""
    text = " ".join(str(exc).split())
    if _is_unwritable(exc) and exc.filename:
        name = Path(str(exc.filename))
        root = cache_dir()
        if name == root or root in name.parents:
            return str(unwritable_cache(name.parent, exc, f"the files of {ref}"))
        return f"cannot write {name}: {exc.strerror or exc}"
    if type(exc).__name__ == "SafetensorError" or "deserializing header" in text or "MetadataIncomplete" in text:
        where = ""
        path = Path(ref).expanduser()
        if path.is_dir():
            where = next((f"{f}: " for f in sorted(path.glob("*.safetensors")) if safetensors_problem(f)), "")
        return (f"{where or ref + ': a '}corrupt safetensors file ({text}); delete it (a cached checkpoint is rebuilt; "
                f"{_cache_text()}) or re-download it")
    if ref.startswith("hf:") and isinstance(exc, OSError):
        return (f"model {ref}: cannot be loaded from the Hugging Face Hub or the local cache ({text[:300]}); "
                "check the id, the network, or pass --local-files-only for a model already downloaded")
    return None
