"""A test double (like httpx's MockTransport): it loads no model and spends a fixed time per
token, so the plugin, baselines, gate and takeaway logic can be tested end to end on any CPU.
Registered only when QUANTPERF_TEST_BACKENDS=1.

Time is simulated: the fake's rounds run on a per-process clock that `spend(ms)` advances by `ms`
(with a 1% Gaussian jitter, so rounds, runs and A/A sides differ as real ones do), and the round's
TokenClock reads that clock, injected delays (QUANTPERF_INJECT_DELAY_MS, the noise experiment's)
included. The figures are those of a quiet machine whatever else runs beside the tests, and a round
takes microseconds. `QUANTPERF_FAKE_CLOCK=real` makes `spend` sleep and the clock real instead.

Option `library` (a module name): per token the fake calls `<library>.work(token_ms)` instead of
spending the time itself, so its speed depends on which version of that package the worker imports
(the upgrade check's test double; such a library spends its time with `spend`, or really). A
missing library makes the backend unavailable at load."""

from __future__ import annotations

import importlib
import os
import random
import time

from ..models import ArchInfo, ModelSource
from .base import Backend, LoadedModel

FAKE_PARAMS = {"fake:small": 100_000_000, "fake:medium": 2_000_000_000}
CLOCK_ENV = "QUANTPERF_FAKE_CLOCK"  # "real": sleep through the time instead of simulating it
JITTER = 0.01  # the sd of one spent interval, relative to its length


class SimulatedClock:
    """Seconds that pass only when spent. Seeded from the OS: two processes (two runs, two sides
    of an A/A comparison) draw different noise."""

    def __init__(self, seed: int | None = None):
        self._now = 0.0
        self._rng = random.Random(seed)

    def now(self) -> float:
        return self._now

    def spend(self, ms: float) -> None:
        self._now += max(0.0, ms * (1 + self._rng.gauss(0.0, JITTER))) / 1e3


CLOCK = SimulatedClock()


def simulated() -> bool:
    return os.environ.get(CLOCK_ENV, "") != "real"


def spend(ms: float) -> None:
    """Let `ms` milliseconds pass for the fake: on the simulated clock, or (QUANTPERF_FAKE_CLOCK=real)
    asleep, which keeps its wall time on a busy machine better than a spin."""
    if simulated():
        CLOCK.spend(ms)
    else:
        time.sleep(ms / 1e3)


class FakeLoaded(LoadedModel):
    def __init__(self, backend: str, options: dict, params: int):
        self.backend, self.device, self.options = backend, "cpu", options
        self.arch = ArchInfo("fake", params, 4, 4, 64, 256, 1000, False)
        self._bytes = int(params * options["bytes_per_param"])
        library = options.get("library")
        # an ImportError here is reported by the worker as "unavailable", naming the module
        self._work = importlib.import_module(library).work if library else spend

    def weight_bytes(self) -> int:
        return self._bytes

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        if simulated():  # the round's marks read the simulated clock, and an injected delay is spent on it
            clock.now, clock.wait = CLOCK.now, CLOCK.spend
        clock.start()
        spend(self.options["prefill_ms"])
        for _ in range(new_tokens):
            if _:
                before = CLOCK.now()
                self._work(self.options["token_ms"])
                if CLOCK.now() == before and simulated() and self.options.get("library"):
                    raise RuntimeError(f"{self.options['library']}.work() spent no time on the fake's simulated clock: "
                                       "it must call quantperf.backends.fake.spend(ms)")
            clock.mark()
        return [[1] * new_tokens for _ in range(len(input_ids))]


class FakeBackend(Backend):
    def load(self, source: ModelSource, device: str, mode: str = "eager") -> FakeLoaded:
        if source.ref not in FAKE_PARAMS:
            raise ValueError(f"fake backends take models {list(FAKE_PARAMS)}, got {source.ref!r}")
        return FakeLoaded(self.name, self.identity(device), FAKE_PARAMS[source.ref])
