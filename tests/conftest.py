import os

import pytest
from hypothesis import settings

# CI machines are shared and noisy: property tests assert behaviour, never speed.
settings.register_profile("quantperf", deadline=None)
settings.load_profile("quantperf")

# The deterministic fake backends (quantperf/backends/fake.py) are test doubles: enable them
# for the test suite only. Worker subprocesses inherit the variable.
os.environ["QUANTPERF_TEST_BACKENDS"] = "1"

# `pytest tests` runs on this many pytest-xdist workers unless `-n` is given (`-n 0`: one process).
# Most of the suite's time is interpreters started by the tests (measuring workers, CLIs, pytester
# runs), so two workers halve it on a 2-core runner; no test compares real timings that another
# test's load could blur (the fake backends run on a simulated clock). `pytest benchmarks` never
# reads this file: the benchmarks measure and keep the machine to themselves.
WORKERS_ENV = "QUANTPERF_TEST_WORKERS"
# `--dist loadfile`: each test module runs on one worker, so its module-scoped fixtures (every CPU
# backend measured, ONNX exports, wheels and overlays, an A/A run) are built once. (xdist_group marks
# would split modules finer, but pytest-xdist 3.8's loadgroup cannot rename pytest 9's node ids.)


def default_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "")
    if raw.strip():
        try:
            return max(0, int(raw))
        except ValueError:
            raise pytest.UsageError(f"{WORKERS_ENV}={raw!r}: not a number of workers (0: no xdist)") from None
    return min(os.cpu_count() or 1, 4)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Before xdist reads its options: `-n` defaults to `default_workers()` with `--dist loadfile`."""
    option = config.option
    if (not hasattr(option, "numprocesses") or option.numprocesses is not None or hasattr(config, "workerinput")
            or os.environ.get("PYTEST_XDIST_WORKER") or config.getoption("usepdb", False)
            or config.getoption("collectonly", False)):
        return
    workers = default_workers()
    if workers > 1:
        option.numprocesses = workers
        if option.dist == "no":
            option.dist = "loadfile"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One synthetic-checkpoint / ONNX cache for the whole test session, shared by its xdist
    workers (each build is written aside and renamed into place, so concurrent builders are safe)."""
    path = os.environ.get("QUANTPERF_CACHE")
    if not path:
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # the controller's basetemp, above every worker's own
        path = str(base / "qpcache")
        os.makedirs(path, exist_ok=True)
    os.environ["QUANTPERF_CACHE"] = path
    return path
