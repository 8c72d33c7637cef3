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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, read_toml
from .spec import DEVICES, MODES, RunSpec, Workload


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


# variants None: the mode's defaults (quantperf.sensitivity.DEFAULT_VARIANTS)
NOISE_DEFAULTS = {"slowdowns": [0.05, 0.10], "variants": None,
                  "detect": {"graph": 0.05, "eager": 0.10}, "detect_rate": 0.9}


def _noise_settings(noise: dict, where: str) -> dict:
    from .sensitivity import VARIANTS

    out = {k: noise.get(k, v) for k, v in NOISE_DEFAULTS.items()}
    slow, detect, rate = out["slowdowns"], out["detect"], out["detect_rate"]
    if not isinstance(slow, list) or not all(isinstance(x, (int, float)) and 0 < x < 0.9 for x in slow):
        raise ConfigError(f"{where}.noise.slowdowns must be a list of fractions in (0, 0.9) (0.05 = 5%), got {slow!r}")
    variants = None if out["variants"] is None else _list(out["variants"], f"{where}.noise.variants")
    if variants is not None and any(v not in VARIANTS for v in variants):
        raise ConfigError(f"{where}.noise.variants: {variants!r} has unknown names; choose from {', '.join(VARIANTS)}")
    if not isinstance(detect, dict) or any(m not in MODES or v not in slow for m, v in detect.items()):
        raise ConfigError(f"{where}.noise.detect must map modes ({', '.join(MODES)}) to one of the slowdowns "
                          f"{slow}, got {detect!r}")
    if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise ConfigError(f"{where}.noise.detect_rate must be a fraction in (0, 1], got {rate!r}")
    return {"slowdowns": [float(x) for x in slow], "variants": variants, "detect": dict(detect), "detect_rate": float(rate)}


def _list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return value


def load_matrix(path: str | Path, overrides: dict | None = None) -> dict[str, Tier]:
    """Parse the matrix; `overrides` (models/backends/modes lists) replace every tier's lists."""
    path = Path(path)
    data = read_toml(path, "matrix file", " (set --qp-matrix or the qp_matrix ini option)")
    overrides = {k: v for k, v in (overrides or {}).items() if v}
    tiers: dict[str, Tier] = {}
    for name, raw in data.get("tier", {}).items():
        where = f"{path}: tier.{name}"
        device = raw.get("device")
        if device not in DEVICES:
            raise ConfigError(f"{where}.device is {device!r}; use one of {DEVICES}")
        try:
            workload = Workload(**raw.get("workload", {}))
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{where}.workload: {exc}") from None
        models = _list(overrides.get("models", raw.get("models", [])), f"{where}.models")
        backends = _list(overrides.get("backends", raw.get("backends", [])), f"{where}.backends")
        modes = _list(overrides.get("modes", raw.get("modes", ["eager"])), f"{where}.modes")
        for m in modes:
            if m not in MODES:
                raise ConfigError(f"{where}.modes has {m!r}; use {MODES}")
        from .backends import BACKENDS

        for b in backends:
            if b not in BACKENDS:
                raise ConfigError(f"{where}.backends has unknown backend {b!r}; known: {', '.join(BACKENDS)}")
        configs = [RunSpec(m, b, device, mode, workload) for m in models for b in backends for mode in modes]
        if not overrides:
            for i, e in enumerate(raw.get("extra", [])):
                try:
                    configs.append(RunSpec(e["model"], e["backend"], device, e.get("mode", "eager"), workload))
                except KeyError as exc:
                    raise ConfigError(f"{where}.extra[{i}] misses field {exc.args[0]!r}") from None
        seen, unique = set(), []
        for c in configs:
            if c.id not in seen:
                seen.add(c.id)
                unique.append(c)
        q = raw.get("quality", {})
        qbackends = _list(overrides.get("quality_backends", q.get("backends", [])), f"{where}.quality.backends")
        quality = [RunSpec(q.get("model", "fixture"), b, device, "eager", workload) for b in qbackends]
        qparams = {k: q[k] for k in ("context", "max_windows", "corpus") if k in q}
        noise = raw.get("noise", {})
        noise_ids = _list(noise.get("configs", []), f"{where}.noise.configs")
        by_id = {c.id: c for c in unique}
        missing = [i for i in noise_ids if i not in by_id]
        if missing and not overrides:
            raise ConfigError(f"{where}.noise.configs names configurations not in the tier: {missing}")
        try:
            targets = {k: float(v) for k, v in noise.get("cv_within_max", {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.noise.cv_within_max must map modes to numbers (0.01 = 1%), "
                              f"got {noise.get('cv_within_max')!r}") from None
        tiers[name] = Tier(name, device, unique, workload, quality, qparams, int(raw.get("max_rounds", 0)),
                           [by_id[i] for i in noise_ids if i in by_id], targets, _noise_settings(noise, where))
    if not tiers:
        raise ConfigError(f"{path}: no [tier.NAME] tables")
    return tiers
