"""What to measure: plain, validated dataclasses (light imports only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

# The one list of modes: each mode names the scenario (quantperf/scenarios/<name>.py) that
# measures it. A new way of measuring is a scenario module plus one line here.
MODES: dict[str, str] = {
    "eager": "generate",  # HF generate with a dynamic KV cache: what most users run
    "graph": "generate",  # generate(cache_implementation="static"): transformers compiles the decode step
    "kernel": "kernel",  # the loaded linear modules alone, at decode and prefill shape, in CUDA graphs
}
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Workload:
    """Fixed work per round: greedy decoding with min_new_tokens == max_new_tokens.

    batch_size: sequences per round; prompt_tokens: prefill length; new_tokens: tokens
    generated per sequence; warmup_rounds: rounds run and discarded; rounds: measured rounds.
    """

    batch_size: int = 1
    prompt_tokens: int = 128
    new_tokens: int = 64
    warmup_rounds: int = 1
    rounds: int = 5

    def __post_init__(self) -> None:
        for name in ("batch_size", "prompt_tokens", "new_tokens", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"Workload.{name} must be an integer >= 1, got {value!r}")
        if self.new_tokens < 2:
            raise ConfigError(
                f"Workload.new_tokens must be >= 2 (decode speed needs at least one decode step), got {self.new_tokens}"
            )
        if not isinstance(self.warmup_rounds, int) or self.warmup_rounds < 0:
            raise ConfigError(f"Workload.warmup_rounds must be an integer >= 0, got {self.warmup_rounds!r}")

    @property
    def id(self) -> str:
        return f"bs{self.batch_size}-p{self.prompt_tokens}-n{self.new_tokens}"


@dataclass(frozen=True)
class RunSpec:
    """One configuration: model x backend x device x workload x mode."""

    model: str
    backend: str
    device: str = "cpu"
    mode: str = "eager"
    workload: Workload = field(default_factory=Workload)
    backend_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"RunSpec.device must be one of {DEVICES}, got {self.device!r}")
        if self.mode not in MODES:
            raise ConfigError(f"RunSpec.mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def model_label(self) -> str:
        """`synthetic:llama-1b` -> `llama-1b`, `hf:org/name` -> `org_name`, `/ckpts/m` -> `m`."""
        if ":" in self.model and not self.model.startswith(("/", ".")):
            label = self.model.split(":", 1)[1]
        else:
            label = self.model.rstrip("/").rsplit("/", 1)[-1]
        return label.replace("/", "_")

    @property
    def backend_label(self) -> str:
        """The backend with its runtime options: `torch-fp16`, `torch-fp16+hubkernels`,
        `torch-fp16+attn-eager` (a configuration of its own for each)."""
        opts = dict(self.backend_options)
        parts = [self.backend] + (["hubkernels"] if opts.get("hub_kernels") == "hub" else [])
        parts += [f"{k.split('_')[0]}-{v}" for k, v in sorted(opts.items()) if k != "hub_kernels"]
        return "+".join(parts)

    @property
    def id(self) -> str:
        """Reads like `llama-1b-bnb-int8-bs1-eager`; the config's stable key in baselines."""
        label = self.model_label
        w = self.workload
        wl = f"bs{w.batch_size}" if (w.prompt_tokens, w.new_tokens) == (128, 64) else w.id
        return f"{label}-{self.backend_label}-{self.device}-{wl}-{self.mode}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backend_options"] = dict(self.backend_options)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["workload"] = Workload(**d.get("workload", {}))
        d["backend_options"] = tuple(sorted((d.get("backend_options") or {}).items()))
        return cls(**d)
