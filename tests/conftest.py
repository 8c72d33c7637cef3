import os
import sys

import pytest
from hypothesis import settings

# CI machines are shared and noisy: property tests assert behaviour, never speed.
settings.register_profile("quantperf", deadline=None)
settings.load_profile("quantperf")

# The deterministic fake backends (quantperf/backends/fake.py) are test doubles: enable them
# for the test suite only. Worker subprocesses inherit the variable.
os.environ["QUANTPERF_TEST_BACKENDS"] = "1"

# One OpenMP thread per process (unless the caller chose): the suite runs two xdist workers on a
# 2-core runner, each starting measuring processes, and two OpenMP pools of one thread per core
# spin-wait against each other at every parallel region (the CPU backends' fixtures took half as
# long again, and in-process kernel timings stalled for milliseconds). No test is about thread
# counts; each process records the ones it ran with.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported by a plugin before this file: its pool is already sized
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# `pytest tests` runs on this many pytest-xdist workers unless `-n` is given (`-n 0`: one process).
# Most of the suite's time is interpreters started by the tests (measuring workers, CLIs, pytester
# runs), so two workers halve it on a 2-core runner; no test compares real timings that another
# test's load could blur (the fake backends run on a simulated clock). `pytest benchmarks` never
# reads this file: the benchmarks measure and keep the machine to themselves.
WORKERS_ENV = "QUANTPERF_TEST_WORKERS"
# `--dist loadfile`: each test module runs on one worker, so its module-scoped fixtures (every CPU
# backend measured, ONNX exports, wheels and overlays, an A/A run) are built once. (xdist_group marks
# would split modules finer, but pytest-xdist 3.8's loadgroup cannot rename pytest 9's node ids.)
# xdist hands the modules out in collection order (`--no-loadscope-reorder`; its default order is by
# test count, which put modules of a few long tests last), and the collection puts the longest
# modules first (seconds on a 2-core runner, as measured): longest first, each to the worker that is
# free, so that the two workers finish together instead of one waiting on a long module taken last.
LONGEST_FIRST = ("test_plugin.py", "test_backends_cpu_quality.py", "test_upgrade.py", "test_backends_cpu.py",
                 "test_against.py", "test_history_suite.py", "test_suite_logic.py", "test_phases.py",
                 "test_kernel_scenario.py", "test_cli.py", "test_ort.py", "test_kernel_layer.py",
                 "test_htmlreport.py")


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
            option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The modules of LONGEST_FIRST first, in its order; the others after them as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
