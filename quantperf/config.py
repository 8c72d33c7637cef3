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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .status import CLAIM_VERDICTS, EXPECTABLE_VERDICTS


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
        # one line, whatever the keys and values hold
        message = f"{source}: " + "; ".join(lines)
        raise ConfigError(message.replace("\n", "\\n").replace("\r", "\\r")) from None


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
    hub_kernels: str | None = None  # runtime options, as in a backend table (quantperf.fidelity)
    attn_implementation: str | None = None


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
    # a name, or a table with the name and runtime options: { name = "torch-fp16", hub_kernels = "hub" }
    backends: list[str | dict[str, str]] = []
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
    expect: dict[str, Literal[EXPECTABLE_VERDICTS]] = {}

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # TOML ints may stand for floats


class ClaimsModel(Strict):
    claim: list[ClaimModel] = []


# -- baselines ---------------------------------------------------------------------------------
# Every field a reader uses has its type checked at load (strict: no string read as a number),
# so a hand-edited or damaged file fails there, naming the file, the key path and the value,
# never later with a KeyError in the gate or a wrong verdict.
class BaselineRun(BaseModel):
    """One recorded run of one metric (BaselineStore.update writes it; the gate, the upgrade
    check and `compare` read `value`; the session grouping reads host, boot_id, started_at)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    value: float
    run_id: str | None = None
    host: str | None = None
    boot_id: str | None = None
    started_at: str | None = None

    @field_validator("started_at")
    @classmethod
    def _iso_time(cls, v: str | None) -> str | None:
        if v is not None:
            from datetime import datetime

            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                raise ValueError("not an ISO 8601 time such as 2026-12-01T09:30:00+00:00") from None
            if t.tzinfo is None:
                raise ValueError("an ISO 8601 time without its UTC offset (e.g. +00:00)")
        return v


class BaselineMetric(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    samples: list[float] = Field(min_length=1)
    median: float
    cv: float = 0.0
    unit: str = ""
    higher_is_better: bool = True
    kind: str = "speed"
    run_medians: list[float] = []
    runs: list[BaselineRun] = []
    stderr: float | None = None


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    recorded_at: str | None = None
    git_revision: str | None = None
    packages: dict[str, str | None] = {}
    gpu: str | None = None
    backend_identity: dict = {}
    kernel_methods: list[str] = []  # kernel mode: how the figures were timed (RunResult.timing_methods)
    runtime: dict = {}  # what really ran (quantperf.fidelity); absent in baselines recorded before it was kept
    spec: dict = {}
    metrics: dict[str, BaselineMetric]
    takeaways: dict = {}


class BaselineTakeaway(BaseModel):
    """A claim's recorded verdict (BaselineStore.record_takeaway), or a published profile's
    expected one (`published`: where the figures come from)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    verdict: Literal[CLAIM_VERDICTS]
    ratio: float | None = None
    ci: list[float | None] = Field([], max_length=2)
    packages: dict[str, str | None] = {}
    recorded_at: str | None = None
    source: str | None = None
    published: dict | None = None


class BaselineFileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    schema_: int = Field(alias="schema")
    profile: str
    provenance: dict = {}
    configs: dict[str, BaselineConfig]
    takeaways: dict[str, BaselineTakeaway] = {}
