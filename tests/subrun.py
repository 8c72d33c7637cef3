"""Test helper: a pytest session in a fresh interpreter, for module-scoped fixtures that share one
expensive session among several tests (pytester, which does the same, is per test)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# what the tests' `project` fixtures take out of the environment of the sessions they start
DROPPED = ("QUANTPERF_INJECT_DELAY_MS", "QUANTPERF_PROGRESS", "PYTEST_ADDOPTS", "TOX_ENV_DIR")


def run_pytest(path: Path, *args, env: dict | None = None, drop: tuple = (), timeout: float = 600) -> pytest.RunResult:
    """`pytest ARGS` in `path`, as pytester's runpytest_subprocess runs it (its own basetemp, HOME in
    `path`, no colours), with the fake backends on, `env` added and the variables in `drop` removed."""
    environ = {k: v for k, v in os.environ.items() if k not in DROPPED + tuple(drop)}
    environ |= {"QUANTPERF_TEST_BACKENDS": "1", "PY_COLORS": "0", "HOME": str(path)} | (env or {})
    basetemp = path / f"basetemp-{len(list(path.glob('basetemp-*')))}"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", f"--basetemp={basetemp}", *args], cwd=path, env=environ,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return pytest.RunResult(out.returncode, out.stdout.splitlines(), out.stderr.splitlines(),
                            time.perf_counter() - start)
