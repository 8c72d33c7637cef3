"""Shard balancing for several GPUs under pytest-xdist, as pure functions testable without
pytest: which shard a test belongs to (the configurations gated together and the claims between
them), an estimate of each shard's seconds, and a deterministic split of shards over workers."""

from __future__ import annotations


def shard_of(spec) -> str:
    """The shard of a speed/memory configuration: what is gated together and compared by claims
    (a claim's sides share a model, mode and batch: a claim at its own batch has its own shard)."""
    return f"{spec.device}-{spec.model_label}-{spec.mode}-bs{spec.workload.batch_size}"


# The estimate that balances shards over workers: seconds per configuration measured (two
# fresh processes, imports, load, warm-up, rounds), plus seconds per billion parameters (reading
# and quantizing the weights). From the H200 large tier's progress log: an 8B configuration takes
# 45-75 s, a 1B one about 15 s. A model of unknown size (a hub id, a directory) counts as 1B.
SHARD_CONFIG_S = 10.0
SHARD_S_PER_BPARAM = 6.0
UNKNOWN_PARAMETERS = 1e9


def spec_cost(model: str) -> float:
    """Estimated seconds to measure one configuration of `model` (see SHARD_CONFIG_S)."""
    from .models import SHAPES, synthetic_parameters

    name = model.split(":", 1)[1] if model.startswith("synthetic:") else None
    if model in ("fixture", "fixture:llama"):
        params = 0
    else:
        params = synthetic_parameters(name) if name in SHAPES else UNKNOWN_PARAMETERS
    return SHARD_CONFIG_S + SHARD_S_PER_BPARAM * params / 1e9


def item_shard(item) -> tuple[str, dict[str, float]]:
    """The shard of a collected test (see shard_of) and what it measures: {configuration id:
    estimated seconds}. Tests that measure nothing form their own shard."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    try:
        return _params_shard(params), _params_costs(params)
    except (AttributeError, TypeError, ValueError):  # an empty parametrization (pytest's NOTSET)
        return f"test-{item.nodeid}", {}


def _params_costs(params: dict) -> dict[str, float]:
    if "qp_config" in params:
        spec = params["qp_config"]
        return {spec.id: spec_cost(spec.model)}
    if "qp_quality_config" in params:
        spec = params["qp_quality_config"]
        return {f"quality:{spec.id}": spec_cost(spec.model)}
    if "qp_claim" in params:
        claim, workload = params["qp_claim"]
        return {s.id: spec_cost(s.model) for s in claim.specs(workload)}
    return {}


def _params_shard(params: dict) -> str:
    if "qp_config" in params:
        return shard_of(params["qp_config"])
    if "qp_quality_config" in params:
        spec = params["qp_quality_config"]
        return f"quality-{spec.device}-{spec.model_label}"
    if "qp_claim" in params:
        from .divergence import QUALITY_METRICS

        claim, workload = params["qp_claim"]
        a = claim.specs(workload)[0]
        return f"quality-{a.device}-{a.model_label}" if claim.metric in QUALITY_METRICS else shard_of(a)
    if "qp_noise_config" in params:
        return f"noise-{params['qp_noise_config'][0].id}"
    raise ValueError("not a quantperf test")


def assign_shards(keys: list[str], workers: int, costs: list[dict[str, float]] | None = None) -> dict[str, int]:
    """Shards to workers: the costliest shard first, each to the least loaded worker (longest
    processing time first); the same answer in every worker (ties broken by name). A shard's cost
    is the estimated seconds of the configurations its tests measure, each counted once (`costs`,
    one {config id: seconds} per key; speed and memory tests of a configuration share one
    measurement); without `costs`, its test count."""
    if costs is None:  # each test its own unit of work
        costs = [{f"test-{i}": 1.0} for i in range(len(keys))]
    measured: dict[str, dict[str, float]] = {}
    for k, c in zip(keys, costs):
        measured.setdefault(k, {}).update(c)
    sizes = {k: sum(m.values()) or 1.0 for k, m in measured.items()}
    load = [0.0] * max(workers, 1)
    out: dict[str, int] = {}
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        w = min(range(len(load)), key=lambda i: (load[i], i))
        out[key] = w
        load[w] += sizes[key]
    return out
