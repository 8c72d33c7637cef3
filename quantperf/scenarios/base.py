"""The interface every scenario implements, and the measurement hygiene all of them share."""

from __future__ import annotations

import gc

from .. import trackers as M
from ..results import Metric


class Scenario:
    """One way of measuring a loaded model.

    Runs inside a worker: `warmup` and `round` touch the model (heavy imports inside methods);
    `metrics` and `figures` are pure functions of the raw rounds, so the parent process (and the
    noise experiment, and a re-evaluation of stored data) derives figures the same way.

    Settings change between rounds of one loaded model (`Worker.configure`): `inject_ms` (the
    sensitivity experiment's device delay), `gc_off`, `tokens_factor`.
    """

    name = ""

    def __init__(self, spec, loaded, settings: dict | None = None):
        self.spec, self.loaded = spec, loaded
        self.settings = {"gc_off": True, "inject_ms": None, "tokens_factor": 1, **(settings or {})}

    def unsupported(self) -> str | None:
        """None when this scenario can measure the loaded model; else why not."""
        return None

    def warmup_times(self) -> bool:
        """Whether the warm-up times something that the rounds depend on (then two processes on one
        device warm up one after the other, never at once). Unless a scenario knows better: yes."""
        return True

    def build(self) -> dict:
        """What the warm-up would make before it times anything (kernel mode: layer 0's copies and the
        captured inputs), made now: a pair's two processes may build at once, nothing is timed then.
        Most scenarios have nothing to build."""
        return {}

    def warmup(self, rounds: int) -> dict:
        for _ in range(rounds):
            self.round()
        return {"warmup_rounds": rounds}

    def round(self) -> dict:
        """One round of fixed work with the shared hygiene: garbage collector off inside the timed
        region, GPU clock/throttle state and host load read before and after."""
        device = self.spec.device
        gc.collect()
        before = M.gpu_state() if device == "cuda" else None
        host = M.HostLoad()
        gc_off = self.settings["gc_off"]
        if gc_off:
            gc.disable()
        try:
            raw = self.measure_round()
        finally:
            if gc_off:
                gc.enable()
        after = M.gpu_state() if device == "cuda" else None
        throttled, reasons = M.throttle_verdict(before, after)
        return raw | {
            "throttled": throttled,
            "throttle_reasons": reasons,
            "sm_clock_mhz": [s.sm_clock_mhz if s else None for s in (before, after)],
            "temperature_c": [s.temperature_c if s else None for s in (before, after)],
            "host": host.finish(),
        }

    def measure_round(self) -> dict:
        raise NotImplementedError

    # -- pure: raw rounds -> figures --------------------------------------------------------
    @classmethod
    def metrics(cls, spec, rounds: list[dict]) -> dict[str, Metric]:
        """Per-round samples of each metric this scenario produces."""
        raise NotImplementedError

    gated: tuple[str, ...] = ()  # the metrics the speed gate judges (run level)

    @classmethod
    def figures(cls, spec, load_info: dict, rounds: list[dict], metrics: dict[str, Metric], environment: dict) -> dict:
        """Derived sections of the result (e.g. the roofline); empty by default."""
        return {}
