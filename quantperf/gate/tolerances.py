"""Tolerances of the gate: the defaults per metric kind (and per runtime mode), the
`KIND[.MODE]:N%` strings that override them, and which layer's value applies."""

from __future__ import annotations

from ..errors import ConfigError
from ..spec import MODES

# A key `KIND.MODE` applies to one runtime mode. Graph mode is steady enough within a run to
# gate a 3% slowdown; eager-mode HF generate is host-bound and wanders more.
DEFAULT_TOLERANCES = {"speed": 0.05, "speed.graph": 0.03, "speed.kernel": 0.01, "memory": 0.05, "quality": 0.02}
KINDS = ("speed", "memory", "quality")


def parse_tolerances(text: str) -> dict[str, float]:
    """`"speed:5%,speed.graph:2%,memory:1%"` -> {"speed": 0.05, "speed.graph": 0.02, "memory": 0.01}
    (pytest-benchmark style strings; `KIND.MODE` applies to one runtime mode)."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = item.partition(":")
        base, dot, mode = kind.partition(".")
        if not sep or base not in KINDS or (dot and mode not in MODES):
            raise ConfigError(f"tolerance {item!r}: expected KIND:N% or KIND.MODE:N% with KIND one of "
                              f"{', '.join(KINDS)} and MODE one of {', '.join(MODES)}")
        try:
            number = float(value.strip().rstrip("%")) / 100
        except ValueError:
            raise ConfigError(f"tolerance {item!r}: {value!r} is not a number or percentage") from None
        if not value.strip().endswith("%"):
            raise ConfigError(f"tolerance {item!r}: write the value as a percentage ({kind}:{value.strip()}% or "
                              f"{kind}:{_as_pct(value)}); a bare number is ambiguous")
        if not 0 <= number < 10:
            raise ConfigError(f"tolerance {item!r}: must be between 0 and 1000%, got {value}")
        out[kind] = number
    return out


def _as_pct(value: str) -> str:
    try:
        return f"{float(value) * 100:g}%"
    except ValueError:
        return "N%"


def resolve_tolerance(layers: list[dict], kind: str, mode: str) -> float:
    """The tolerance for a metric kind in a mode from layered settings (defaults first, then
    session, profile, test). In each layer `KIND.MODE` beats `KIND`; a later layer that sets
    either replaces what earlier layers said, so `speed:10%` on the command line covers graph
    mode too unless `speed.graph` is given with it."""
    value = None
    for layer in layers:
        for key in (f"{kind}.{mode}", kind):
            if key in layer:
                value = layer[key]
                break
    if value is None:
        raise ConfigError(f"no tolerance for metric kind {kind!r}")
    return float(value)
