"""The code passes ruff with the project's settings (pyproject.toml's [tool.ruff]): pyflakes,
pycodestyle at 120 columns, and sorted imports."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["quantperf", "tests", "benchmarks", "scripts", "conftest.py"]


def test_ruff_finds_nothing():
    # the ruff of this interpreter's environment first, so the test does not depend on PATH
    if importlib.util.find_spec("ruff") is not None:
        ruff = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        ruff = [shutil.which("ruff")]
    else:
        pytest.skip("ruff is not installed: pip install -e '.[test]' (or pip install ruff)")
    out = subprocess.run([*ruff, "check", "--no-cache", *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
