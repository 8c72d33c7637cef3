"""The declarative benchmark matrix (TOML): tiers of model x backend x mode x workload.

    [tier.gpu]
    device = "cuda"
    models = ["synthetic:llama-125m", "synthetic:llama-1b"]
    backends = ["torch-fp16", "bnb-int8", "bnb-nf4"]
    modes = ["eager"]
    extra = [{ model = "synthetic:llama-1b", backend = "torch-fp16", mode = "graph" }]
    workload = { batch_size = 1, prompt_tokens = 128, new_tokens = 64, warmup_rounds = 1, rounds = 5 }
    [tier.gpu.quality]
    model = "fixture"
    backends = ["bnb-int8", "bnb-nf4"]

The file is validated (quantperf.config): unknown keys, wrong types, unknown backends, modes
or noise variants fail with the file, the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import MatrixModel, NoiseModel, validate
from .errors import ConfigError, read_toml
from .spec import MODES, RunSpec, Workload


@dataclass
class Tier:
    name: str
    device: str
    configs: list[RunSpec]
    workload: Workload
    quality_configs: list[RunSpec] = field(default_factory=list)
    quality_params: dict = field(default_factory=dict)
    max_rounds: int = 0  # adaptive-rounds budget for takeaway comparisons (0: off)
    noise_configs: list[RunSpec] = field(default_factory=list)
    noise_targets: dict = field(default_factory=dict)  # mode -> max within-run CV of decode tok/s
    # the noise experiment: slowdowns injected, ablation variants, per mode the slowdown the gate
    # must catch (`detect`) and in what share of trials (`detect_rate`)
    noise_settings: dict = field(default_factory=dict)
    slow: bool = False


NOISE_DEFAULTS = {k: v for k, v in NoiseModel().model_dump().items()
                  if k in ("slowdowns", "variants", "detect", "detect_rate", "cv_between_max")}


def _check_names(values: list[str], known, where: str, what: str) -> None:
    for v in values:
        if v not in known:
            raise ConfigError(f"{where}: unknown {what} {v!r}; known: {', '.join(known)}")


def _noise_settings(noise: NoiseModel, where: str) -> dict:
    from .experiments.noise import VARIANTS

    if not all(0 < x < 0.9 for x in noise.slowdowns):
        raise ConfigError(f"{where}.noise.slowdowns: must be fractions in (0, 0.9) (0.05 = 5%), "
                          f"got {noise.slowdowns!r}")
    if noise.variants is not None:
        _check_names(noise.variants, VARIANTS, f"{where}.noise.variants", "noise variant")
    for mode, value in noise.detect.items():
        if mode not in MODES or value not in noise.slowdowns:
            raise ConfigError(f"{where}.noise.detect: must map modes ({', '.join(MODES)}) to one of the slowdowns "
                              f"{noise.slowdowns}, got {noise.detect!r}")
    _check_names(list(noise.cv_within_max), MODES, f"{where}.noise.cv_within_max", "mode")
    _check_names(list(noise.cv_between_max), MODES, f"{where}.noise.cv_between_max", "mode")
    return {"slowdowns": list(noise.slowdowns), "variants": noise.variants, "detect": dict(noise.detect),
            "detect_rate": noise.detect_rate, "cv_between_max": dict(noise.cv_between_max)}


def _list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return value


def _choice(name: str, options: dict, here: str, name_where: str) -> tuple[str, tuple]:
    """One backend with its runtime options (quantperf.fidelity.RUNTIME_OPTIONS), validated; an
    option at its default is dropped (the same configuration as the bare name)."""
    from .backends import BACKENDS, RUNTIME_OPTION_MODULES
    from .fidelity import check_options

    _check_names([name], BACKENDS, name_where, "backend")
    options = check_options(options, here)
    if options and BACKENDS[name].module not in RUNTIME_OPTION_MODULES:
        raise ConfigError(f"{here}: {name} does not load through transformers: the options "
                          f"{', '.join(options)} apply only to the backends of "
                          f"{', '.join(b for b, e in BACKENDS.items() if e.module in RUNTIME_OPTION_MODULES)}")
    return name, tuple(sorted(options.items()))


def _backend_choices(values: list, where: str) -> list[tuple[str, tuple]]:
    """A tier's backends as (name, runtime options): a name, or a table `{ name = "torch-fp16",
    hub_kernels = "hub", attn_implementation = "eager" }`."""
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            out.append(_choice(value, {}, f"{where}.backends", f"{where}.backends"))
            continue
        here = f"{where}.backends[{i}]"
        options = dict(value)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"{here}: a backend table needs its name (name = \"torch-fp16\"), got {value!r}")
        out.append(_choice(name, options, here, f"{here}.name"))
    return out


def load_matrix(path: str | Path, overrides: dict | None = None,
                override_source: str = "the command line") -> dict[str, Tier]:
    """Parse and validate the matrix; `overrides` (models/backends/modes lists, e.g. from
    --qp-models) replace every tier's lists, and a bad value in them is blamed on
    `override_source`, not on the file."""
    from .backends import BACKENDS
    from .models import check_synthetic

    path = Path(path)
    matrix = validate(MatrixModel, read_toml(path, "matrix file", " (set --qp-matrix or the qp_matrix ini option)"),
                      path)
    overrides = {k: _list(v, f"{override_source}: --qp-{k}") for k, v in (overrides or {}).items() if v}
    for key, values in overrides.items():
        known = BACKENDS if key == "backends" else MODES if key == "modes" else None
        if known is not None:
            _check_names(values, known, f"{override_source}: --qp-{key}", key[:-1])
        if key == "models":
            check_synthetic(values, f"{override_source}: --qp-models")
    tiers: dict[str, Tier] = {}
    for name, raw in matrix.tier.items():
        where = f"{path}: tier.{name}"
        choices = _backend_choices(raw.backends, where)
        _check_names(raw.modes, MODES, f"{where}.modes", "mode")
        check_synthetic(raw.models, f"{where}.models")
        extra_options = []
        for i, e in enumerate(raw.extra):
            options = {k: v for k, v in (("hub_kernels", e.hub_kernels), ("attn_implementation", e.attn_implementation))
                       if v is not None}
            extra_options.append(_choice(e.backend, options, f"{where}.extra[{i}]", f"{where}.extra[{i}].backend")[1])
            _check_names([e.mode], MODES, f"{where}.extra[{i}].mode", "mode")
            check_synthetic([e.model], f"{where}.extra[{i}].model")
        workload = Workload(**raw.workload.model_dump())
        models = overrides.get("models", raw.models)
        backends = [(b, ()) for b in overrides["backends"]] if "backends" in overrides else choices
        modes = overrides.get("modes", raw.modes)
        configs = [RunSpec(m, b, raw.device, mode, workload, opts) for m in models for b, opts in backends
                   for mode in modes]
        if not overrides:
            configs += [RunSpec(e.model, e.backend, raw.device, e.mode, workload, opts)
                        for e, opts in zip(raw.extra, extra_options)]
        unique = list({c.id: c for c in configs}.values())
        quality, qparams = [], {}
        if raw.quality is not None:
            q = raw.quality
            qbackends = overrides.get("quality_backends", q.backends)
            _check_names(qbackends, BACKENDS, f"{where}.quality.backends", "backend")
            check_synthetic([q.model], f"{where}.quality.model")
            quality = [RunSpec(q.model, b, raw.device, "eager", workload) for b in qbackends]
            qparams = {"context": q.context, "max_windows": q.max_windows} | ({"corpus": q.corpus} if q.corpus else {})
        noise = raw.noise or NoiseModel()
        by_id = {c.id: c for c in unique}
        missing = [i for i in noise.configs if i not in by_id]
        if missing and not overrides:
            raise ConfigError(f"{where}.noise.configs: names configurations not in the tier: {missing}; "
                              f"the tier has: {', '.join(by_id)}")
        tiers[name] = Tier(name, raw.device, unique, workload, quality, qparams, raw.max_rounds,
                           [by_id[i] for i in noise.configs if i in by_id], dict(noise.cv_within_max),
                           _noise_settings(noise, where), raw.slow)
    if not tiers:
        raise ConfigError(f"{path}: no [tier.NAME] tables")
    return tiers
