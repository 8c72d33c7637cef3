"""Validated configuration files: the benchmark matrix, the takeaway claims and the baselines.

Every file is parsed into pydantic models that reject unknown keys and wrong types. A typo
never turns into an empty tier or a dropped expectation: the error names the file, the key
path, the value and the keys that are allowed there, e.g.

    benchmarks/matrix.toml: tier.gpu: unknown key 'backend' (value ['torch-fp16']);
    allowed keys: backends, device, extra, max_rounds, models, modes, noise, quality, workload

Models here only describe shapes and ranges; what the values mean (backend names, modes,
profiles) is checked by the modules that use them, with the same kind of message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class Strict(BaseModel):
    """Unknown keys are errors; ints are not silently read from strings."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _path_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model that holds the location `loc` (for unknown-key errors)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        field = fields.get(part)
        if field is None:
            # a dict of models (tier.NAME): the value type is the next model
            continue
        current = _model_of(field.annotation)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _model_of(annotation) -> Any:
    """The BaseModel inside an annotation such as `list[Side]`, `dict[str, Tier]`, `Side | None`."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def validate(model: type[BaseModel], data: Any, source: str | Path, prefix: str = "") -> Any:
    """`model.model_validate(data)`, with errors rewritten as one ConfigError naming the file,
    the key path, the value and what is allowed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(p for p in (prefix, _path_text(loc)) if p)
            value = err.get("input")
            if err["type"] == "extra_forbidden":
                parent = ".".join(p for p in (prefix, _path_text(loc[:-1])) if p) or "top level"
                allowed = _allowed_keys(model, loc)
                lines.append(f"{parent}: unknown key {loc[-1]!r} (value {value!r}); allowed keys: {', '.join(allowed)}")
            elif err["type"] == "missing":
                lines.append(f"{where}: missing required key")
            else:
                lines.append(f"{where}: {err['msg'].lower()}, got {value!r}")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


# -- benchmark matrix ------------------------------------------------------------------------
class WorkloadModel(Strict):
    batch_size: int = Field(1, ge=1)
    prompt_tokens: int = Field(128, ge=1)
    new_tokens: int = Field(64, ge=2)
    warmup_rounds: int = Field(1, ge=0)
    rounds: int = Field(5, ge=1)


class ExtraConfig(Strict):
    model: str
    backend: str
    mode: str = "eager"


class QualityModel(Strict):
    model: str = "fixture"
    backends: list[str] = []
    context: int = Field(256, ge=2)
    max_windows: int = Field(16, ge=1)
    corpus: str | None = None


class NoiseModel(Strict):
    configs: list[str] = []
    cv_within_max: dict[str, float] = {}
    cv_between_max: dict[str, float] = {}
    slowdowns: list[float] = [0.05, 0.10]
    variants: list[str] | None = None
    detect: dict[str, float] = {"graph": 0.05, "eager": 0.10}
    detect_rate: float = Field(0.9, gt=0, le=1)


class TierModel(Strict):
    device: Literal["cpu", "cuda"]
    models: list[str] = []
    backends: list[str] = []
    modes: list[str] = ["eager"]
    extra: list[ExtraConfig] = []
    workload: WorkloadModel = WorkloadModel()
    max_rounds: int = Field(0, ge=0)
    slow: bool = False
    quality: QualityModel | None = None
    noise: NoiseModel | None = None


class MatrixModel(Strict):
    tier: dict[str, TierModel] = {}


# -- takeaway claims -------------------------------------------------------------------------
class SideModel(Strict):
    model: str
    backend: str
    mode: str = "eager"


class ClaimModel(Strict):
    id: str
    sentence: str
    source: str = ""
    metric: str
    relation: Literal["lower", "higher", "within", "bounds"] | None = None
    within: float | None = Field(None, gt=0, lt=1)
    bounds: tuple[float, float] | None = None
    claimed_ratio: float | None = None
    device: Literal["cpu", "cuda"] = "cuda"
    profiles: list[str] = ["*"]
    a: SideModel
    b: SideModel
    batch_size: int | None = Field(None, ge=1, le=1024)  # None: the tier's workload's
    expect: dict[str, Literal["holds", "flipped"]] = {}

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # TOML ints may stand for floats


class ClaimsModel(Strict):
    claim: list[ClaimModel] = []


# -- baselines -------------------------------------------------------------------------------
class BaselineMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[float] = Field(min_length=1)
    median: float
    cv: float = 0.0
    unit: str = ""
    higher_is_better: bool = True
    kind: str = "speed"
    run_medians: list[float] = []
    runs: list[dict] = []
    stderr: float | None = None


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recorded_at: str | None = None
    git_revision: str | None = None
    packages: dict[str, str | None] = {}
    gpu: str | None = None
    backend_identity: dict = {}
    kernel_methods: list[str] = []  # kernel mode: how the figures were timed (RunResult.timing_methods)
    spec: dict = {}
    metrics: dict[str, BaselineMetric]
    takeaways: dict = {}


class BaselineFileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: int = Field(alias="schema")
    profile: str
    provenance: dict = {}
    configs: dict[str, BaselineConfig]
    takeaways: dict[str, dict] = {}
