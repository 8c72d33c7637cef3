"""Hardening: environment variables are parsed where they are used, and a missing GPU is one
line (issue #25)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantperf.errors import ConfigError, QuantperfError
from quantperf.spec import RunSpec, Workload

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.mark.parametrize("raw", ["abc", "-5"])
def test_a_bad_worker_timeout_does_not_break_import_or_help(raw, tmp_path):
    env = _env(QUANTPERF_WORKER_TIMEOUT_S=raw)
    out = subprocess.run([sys.executable, "-c", "import quantperf, quantperf.workers"], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "quantperf", "--help"], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "usage" in out.stdout, out.stderr


def test_a_bad_worker_timeout_does_not_break_pytest_in_another_project(tmp_path):
    """The pytest11 plugin is loaded in every pytest of the environment."""
    (tmp_path / "test_other.py").write_text("def test_x():\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
                         capture_output=True, text=True, env=_env(QUANTPERF_WORKER_TIMEOUT_S="abc"), timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr


def test_a_bad_worker_timeout_is_one_line_where_a_worker_starts(monkeypatch):
    from quantperf import workers

    monkeypatch.setenv("QUANTPERF_WORKER_TIMEOUT_S", "abc")
    spec = RunSpec("fake:small", "fake-fp16", "cpu", "eager", Workload())
    with pytest.raises(ConfigError) as info:
        workers.ProcessWorker(spec)
    message = str(info.value)
    assert "QUANTPERF_WORKER_TIMEOUT_S='abc'" in message and "positive number of seconds" in message
    assert "\n" not in message


def test_the_worker_timeout_is_read_when_used(monkeypatch):
    from quantperf import workers

    monkeypatch.setenv("QUANTPERF_WORKER_TIMEOUT_S", "42")
    assert workers.request_timeout_s() == 42.0
    monkeypatch.delenv("QUANTPERF_WORKER_TIMEOUT_S")
    assert workers.request_timeout_s() == 1800.0
    monkeypatch.setattr(workers, "WORKER_TIMEOUT_S", 3.0)  # a test's override still wins
    assert workers.request_timeout_s() == 3.0


# -- 4. --device cuda without a GPU ----------------------------------------------------------
def _no_cuda(monkeypatch):
    from quantperf import envinfo

    monkeypatch.setattr(envinfo, "gpu_info", lambda index=0: None)


def test_no_cuda_device_is_a_project_error(monkeypatch):
    from quantperf import envinfo

    _no_cuda(monkeypatch)
    with pytest.raises(QuantperfError) as info:
        envinfo.profile_id("cuda")
    assert str(info.value) == ("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
                               "run on a GPU machine or use --device cpu")
    assert isinstance(info.value, RuntimeError)  # callers that caught RuntimeError still do
    assert envinfo.profile_id("auto").startswith("cpu-")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("args", [
    ["run", "--model", "fake:small", "--backend", "fake-fp16", "--device", "cuda"],
    ["profile", "--device", "cuda"],
    ["upgrade-check", "--aa", "--device", "cuda", "--model", "fake:small", "--backend", "fake-fp16"],
])
def test_device_cuda_without_a_gpu_is_one_line_on_the_command_line(args, tmp_path):
    out = subprocess.run([sys.executable, "-m", "quantperf", *args], capture_output=True, text=True, env=_env(),
                         timeout=300, cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2 and "--device cuda: no CUDA device is visible" in out.stderr, out.stderr
