"""Both CI workflows are linted offline: schema-valid and zizmor-clean (no untrusted input in
shell, pinned actions)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / ".github" / "workflows").glob("*.yml"))


def _tool(name):
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed: pip install 'quantperf[test]'")
    return path


def test_there_is_a_cpu_and_a_gpu_workflow():
    names = {p.stem for p in WORKFLOWS}
    assert {"cpu", "gpu"} <= names
    gpu = (WORKFLOWS[0].parent / "gpu.yml").read_text()
    assert "self-hosted" in gpu and "gpu" in gpu and "scripts/gpu-job.sh" in gpu


def test_workflows_are_schema_valid():
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                          *map(str, WORKFLOWS)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflows_are_zizmor_clean():
    out = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
