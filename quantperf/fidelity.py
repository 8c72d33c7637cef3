"""What a run really ran: the runtime identity read back from the loaded model and the process,
and the Hub-kernels switch quantperf decides for every model load.

transformers with the `kernels` package fetches kernels from the Hub at model load on CUDA
unless told otherwise (`USE_HUB_KERNELS`, default YES, read at each `from_pretrained`): offline
every load fails, online a benchmark measures code downloaded at run time. quantperf turns them
off in every process it loads a model in (`apply_hub_kernels`) and passes `use_kernels=False`,
unless a configuration asks for them (backend option `hub_kernels = "hub"`).

A result's `runtime` holds two parts (`runtime_identity`):

- `settings`: what changes which code runs -- the Hub-kernels setting, the layers and functions
  kernelized (per repository: count and revision), the attention implementation and the KV-cache
  class actually used, float32 matmul precision and the TF32 / reduced-precision flags. Two runs
  that differ here are not the same configuration and never gate each other (quantperf.gate).
- `versions`: torch's CUDA, cuDNN, cuBLAS and the `kernels` package. What an upgrade changes:
  named when they differ, never a reason not to gate.

Light imports only: torch, transformers and kernels are read where they are already loaded or
inside functions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from functools import lru_cache

HUB_KERNELS_ENV = "USE_HUB_KERNELS"
# backend options a transformers configuration may set in the matrix, and their allowed values
HUB_KERNELS = ("off", "hub")  # "off": the default, built-in code only; "hub": kernels fetched from the Hub
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
RUNTIME_OPTIONS = {"hub_kernels": HUB_KERNELS, "attn_implementation": ATTN_IMPLEMENTATIONS}
DEFAULT_OPTIONS = {"hub_kernels": "off"}  # an option at its default is no option (the configuration id is unchanged)
# the transformers release that reads USE_HUB_KERNELS and accepts from_pretrained(use_kernels=...)
HUB_KERNELS_TRANSFORMERS = "5.0"
SETTINGS = ("hub_kernels", "kernelized", "attn_implementation", "cache_implementation", "matmul_precision",
            "allow_tf32_matmul", "allow_tf32_cudnn", "fp16_reduced_precision_reduction",
            "bf16_reduced_precision_reduction", "kernel_walk")
# what a run recorded before a setting was kept ran with: every kernel baseline recorded before kernel
# mode's one-layer walk walked all layers
SETTINGS_BEFORE = {"kernel_walk": "full"}
VERSIONS = ("torch_cuda", "cudnn", "cublas", "kernels")
PROBE_TIMEOUT_S = 3.0  # the connectivity probe of an opt-in configuration: bounded, never a hang


def check_options(options: dict, where: str) -> dict:
    """The runtime options of a backend entry, validated and with defaults dropped; an unknown
    value is one ConfigError naming `where`, the field, the value and the allowed values."""
    from .errors import ConfigError

    out = {}
    for key, value in options.items():
        allowed = RUNTIME_OPTIONS.get(key)
        if allowed is None:
            raise ConfigError(f"{where}: unknown backend option {key!r} (value {value!r}); allowed options: "
                              f"{', '.join(RUNTIME_OPTIONS)}")
        if value not in allowed:
            raise ConfigError(f"{where}.{key}: unknown value {value!r}; allowed: {', '.join(allowed)}")
        if DEFAULT_OPTIONS.get(key) != value:
            out[key] = value
    return out


def apply_hub_kernels(setting: str = "off") -> None:
    """Set the process's USE_HUB_KERNELS for the next model load (transformers reads it at each
    `from_pretrained`): NO unless the configuration asked for Hub kernels."""
    os.environ[HUB_KERNELS_ENV] = "YES" if setting == "hub" else "NO"


def hub_kernels_applied() -> str:
    """The Hub-kernels setting this process runs with, read back from its environment."""
    value = os.environ.get(HUB_KERNELS_ENV, "YES").strip().upper()
    return "hub" if value in ("1", "ON", "YES", "TRUE") else "off"


@lru_cache(maxsize=1)
def _accepts_use_kernels() -> bool:
    try:
        import inspect

        from transformers import PreTrainedModel

        source = inspect.getsource(PreTrainedModel.from_pretrained)
    except (ImportError, OSError, TypeError):
        return False
    return "use_kernels" in source


def load_kwargs(options: dict) -> dict:
    """from_pretrained keyword arguments for a configuration's runtime options: `use_kernels`
    (where the installed transformers knows it) and `attn_implementation` (when chosen). Applies
    the Hub-kernels setting to the process too."""
    setting = options.get("hub_kernels", "off")
    apply_hub_kernels(setting)
    out: dict = {}
    if _accepts_use_kernels():
        out["use_kernels"] = setting == "hub"
    if options.get("attn_implementation"):
        out["attn_implementation"] = options["attn_implementation"]
    return out


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """`5.25.0.dev0` -> (5, 25, 0): the numeric release, enough to compare with a minimum."""
    import re

    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def hub_kernels_reason(options: dict, probe=None) -> str | None:
    """Why an opt-in Hub-kernels configuration cannot run here (None: it can, or it did not opt in):
    a transformers too old to know Hub kernels, `kernels` not installed, or the Hub unreachable
    (HF_HUB_OFFLINE set, or the bounded probe fails) with no LOCAL_KERNELS directory."""
    if options.get("hub_kernels") != "hub":
        return None
    transformers = _version("transformers")
    if transformers is None or importlib.util.find_spec("transformers.integrations.hub_kernels") is None \
            or _release(transformers) < _release(HUB_KERNELS_TRANSFORMERS):
        return (f"hub_kernels = 'hub' needs transformers >= {HUB_KERNELS_TRANSFORMERS} (installed: "
                f"{transformers or 'none'}): pip install -U transformers")
    if _version("kernels") is None:
        return "hub_kernels = 'hub' needs the kernels package: pip install kernels"
    if os.environ.get("LOCAL_KERNELS"):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if offline or not (probe or hub_reachable)():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub did not answer"
        return (f"hub_kernels = 'hub' needs the Hugging Face Hub or a local kernels directory: {why} and "
                "LOCAL_KERNELS is not set (set LOCAL_KERNELS to a directory of kernels, or run online)")
    return None


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the Hub endpoint huggingface_hub is configured with, within `timeout_s`
    (asked once per process: a configuration's prepare and load ask the same question)."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except ImportError:
        return False
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout_s):
            return True
    except OSError:
        return False


def kernelized(model) -> dict:
    """The layers and functions `kernels` replaced in `model`, per repository: {repo: {"layers": n,
    "funcs": n, "revision": r}} ({} where nothing was kernelized or `kernels` is not loaded)."""
    kernels = sys.modules.get("kernels")
    if kernels is None or model is None:
        return {}
    out: dict = {}
    try:
        used = kernels.get_kernelized_layers(model)
        for kind, items in (("layers", used.layers.values()), ("funcs", used.funcs.values())):
            for item in items:
                repo = str(getattr(getattr(item, "repo", None), "repo_id", None) or getattr(item, "repo", "?"))
                entry = out.setdefault(repo, {"layers": 0, "funcs": 0, "revision": None})
                entry[kind] += 1
        for loaded in kernels.get_loaded_kernels():
            info = loaded.repo_info
            if info is not None:
                entry = out.setdefault(info.repo_id, {"layers": 0, "funcs": 0, "revision": None})
                entry["revision"] = info.revision
    except Exception as exc:  # a kernels release with another API: say so, never fail the run
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return out


def _matmul_flags() -> dict:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    out: dict = {"matmul_precision": torch.get_float32_matmul_precision()}
    for key, obj, attr in (("allow_tf32_matmul", torch.backends.cuda.matmul, "allow_tf32"),
                           ("allow_tf32_cudnn", torch.backends.cudnn, "allow_tf32"),
                           ("fp16_reduced_precision_reduction", torch.backends.cuda.matmul,
                            "allow_fp16_reduced_precision_reduction"),
                           ("bf16_reduced_precision_reduction", torch.backends.cuda.matmul,
                            "allow_bf16_reduced_precision_reduction")):
        try:
            out[key] = getattr(obj, attr)
        except (AttributeError, RuntimeError):
            pass
    return out


def cublas_version() -> str | None:
    """cuBLAS as installed beside torch (the nvidia-cublas wheel); None where absent."""
    for name in ("nvidia-cublas-cu12", "nvidia-cublas-cu13", "nvidia-cublas", "nvidia-cublas-cu11"):
        if (v := _version(name)) is not None:
            return v
    return None


def runtime_versions() -> dict:
    torch = sys.modules.get("torch")
    out: dict = {"kernels": _version("kernels"), "cublas": cublas_version()}
    if torch is not None:
        out["torch_cuda"] = torch.version.cuda
        try:
            out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        except RuntimeError:
            out["cudnn"] = None
    return out


def runtime_identity(model=None, cache_implementation: str | None = None) -> dict:
    """The runtime identity of this process and `model` (a transformers model, or None for a backend
    that has none): read back from what was loaded, never from what was asked."""
    settings: dict = {"hub_kernels": hub_kernels_applied()}
    if model is not None:
        settings["kernelized"] = kernelized(model)
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if attn is not None:
            settings["attn_implementation"] = attn
    if cache_implementation is not None:
        settings["cache_implementation"] = cache_implementation
    settings |= _matmul_flags()
    return {"settings": settings, "versions": runtime_versions()}


def as_recorded(runtime: dict | None) -> dict:
    """A stored runtime identity with the settings it did not record at the value every run had
    before they were kept (SETTINGS_BEFORE): what a baseline's run really ran."""
    runtime = runtime or {}
    return {"settings": SETTINGS_BEFORE | (runtime.get("settings") or {}), "versions": runtime.get("versions") or {}}


def setting_changes(before: dict, now: dict) -> dict[str, tuple]:
    """Runtime settings that differ between two identities: {field: (before, now)}. A field one side
    did not record (an older quantperf, a backend without it) is no difference."""
    a, b = (before or {}).get("settings") or {}, (now or {}).get("settings") or {}
    return {k: (a[k], b[k]) for k in SETTINGS if k in a and k in b and a[k] != b[k]}


def version_changes(before: dict, now: dict) -> dict[str, tuple]:
    """Runtime versions (CUDA, cuDNN, cuBLAS, kernels) that differ: {field: (before, now)}."""
    a, b = (before or {}).get("versions") or {}, (now or {}).get("versions") or {}
    return {k: (a.get(k), b.get(k)) for k in VERSIONS if (k in a or k in b) and a.get(k) != b.get(k)}


def changes_text(changes: dict[str, tuple]) -> str:
    """`attn_implementation sdpa -> eager, hub_kernels off -> hub`."""
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
