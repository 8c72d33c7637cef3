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
DIST_ENV = "QUANTPERF_TEST_DIST"

# Module-scoped fixtures that build something expensive (ONNX exports, a loaded model, wheels and
# overlays, an A/A run): the tests of such a module stay on one xdist worker, so it is built once.
ONE_WORKER_MODULES = ("test_ort", "test_kernel_scenario", "test_upgrade", "test_upgrade_env", "test_against")
# ... or, where one module has two such fixtures (every CPU backend measured for speed, and again for
# quality: a minute or two each), the tests of each fixture stay together and the rest go anywhere.
ONE_WORKER_FIXTURES = {"test_backends_cpu": ("cpu_results", "quality_results")}


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
    """Before xdist reads its options: `-n` defaults to `default_workers()` with `--dist loadgroup`."""
    option = config.option
    if hasattr(config, "workerinput"):
        # an xdist worker parses the command line as given, without the defaults set here: it is told
        # to name its tests' groups (in the node ids the controller schedules by) through the environment
        if os.environ.get(DIST_ENV) == "loadgroup":
            option.loadgroup = True
        return
    if (not hasattr(option, "numprocesses") or option.numprocesses is not None or hasattr(config, "workerinput")
            or os.environ.get("PYTEST_XDIST_WORKER") or config.getoption("usepdb", False)
            or config.getoption("collectonly", False)):
        return
    workers = default_workers()
    if workers > 1:
        option.numprocesses = workers
        if option.dist == "no":
            option.dist = "loadgroup"
            os.environ[DIST_ENV] = "loadgroup"  # inherited by the workers


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.module.__name__ if getattr(item, "module", None) else ""
        if module in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
        for fixture in ONE_WORKER_FIXTURES.get(module, ()):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(f"{module}-{fixture}"))
                break


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
