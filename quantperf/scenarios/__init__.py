"""Scenarios: the ways quantperf measures a loaded model, one module each.

A scenario (`base.Scenario`) warms a loaded model up, runs one round of fixed work and turns
raw rounds into metrics. `quantperf.spec.MODES` maps each mode to its scenario module; a new
way of measuring is a module here plus one line there.

- `generate`: HF `generate` (eager: dynamic cache; graph: static cache, compiled) with a
  timestamp per token: decode tok/s, prefill ms, end-to-end tok/s, roofline.
- `quality`: log-probabilities over held-out text against a reference backend.
"""

from __future__ import annotations

import importlib

from ..spec import MODES


def scenario_for(mode: str):
    """The Scenario class that measures `mode` (imports its module, never a heavy library)."""
    module = importlib.import_module(f".{MODES[mode]}", __name__)
    return module.SCENARIO
