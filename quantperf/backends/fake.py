"""A deterministic test double (like httpx's MockTransport): it loads no model and spends a
fixed, busy-waited time per token, so the plugin, baselines, gate and takeaway logic can be
tested end to end on any CPU. Registered only when QUANTPERF_TEST_BACKENDS=1.

Option `library` (a module name): per token the fake calls `<library>.work(token_ms)` instead of
spinning itself, so its speed depends on which version of that package the worker imports (the
upgrade check's test double). A missing library makes the backend unavailable at load."""

from __future__ import annotations

import importlib
import time

from ..models import ArchInfo, ModelSource
from .base import Backend, LoadedModel

FAKE_PARAMS = {"fake:small": 100_000_000, "fake:medium": 2_000_000_000}


def _spin(ms: float) -> None:
    # sleeps, does not spin: on a 2-core runner with two measuring workers (pytest -n 2) a spinning
    # double lost whole time slices and ran 2 and 3 ms per token both at ~3.8 ms, hiding the very
    # difference the tests measure; a sleep keeps its wall time on a busy machine
    time.sleep(ms / 1e3)


class FakeLoaded(LoadedModel):
    def __init__(self, backend: str, options: dict, params: int):
        self.backend, self.device, self.options = backend, "cpu", options
        self.arch = ArchInfo("fake", params, 4, 4, 64, 256, 1000, False)
        self._bytes = int(params * options["bytes_per_param"])
        library = options.get("library")
        # an ImportError here is reported by the worker as "unavailable", naming the module
        self._work = importlib.import_module(library).work if library else _spin

    def weight_bytes(self) -> int:
        return self._bytes

    def run_round(self, input_ids, new_tokens: int, mode: str, clock) -> list[list[int]]:
        clock.start()
        _spin(self.options["prefill_ms"])
        for _ in range(new_tokens):
            if _:
                self._work(self.options["token_ms"])
            clock.mark()
        return [[1] * new_tokens for _ in range(len(input_ids))]


class FakeBackend(Backend):
    def load(self, source: ModelSource, device: str, mode: str = "eager") -> FakeLoaded:
        if source.ref not in FAKE_PARAMS:
            raise ValueError(f"fake backends take models {list(FAKE_PARAMS)}, got {source.ref!r}")
        return FakeLoaded(self.name, self.identity(device), FAKE_PARAMS[source.ref])
