"""The progress line of long steps: drawn on a terminal, silent otherwise (CI logs stay clean)."""

import io

from quantperf import progress
from quantperf.scheduler import measure
from quantperf.spec import RunSpec, Workload


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_status_line_per_step_and_a_pipe_gets_nothing():
    tty, pipe = _Tty(), io.StringIO()
    shown, quiet = progress.Steps(tty), progress.Steps(pipe)
    assert shown.enabled and not quiet.enabled
    for steps in (shown, quiet):
        with steps.step("llama-tiny ort-int8 eager: prepare"):
            pass
    assert "llama-tiny ort-int8 eager: prepare" in tty.getvalue()
    assert pipe.getvalue() == "" and quiet.shown == []


def test_the_scheduler_announces_its_long_steps():
    tty = _Tty()
    steps = progress.Steps(tty)
    progress.activate(steps)
    try:
        spec = RunSpec("fake:small", "fake-fp16", "cpu", "eager",
                       Workload(batch_size=1, prompt_tokens=8, new_tokens=4, warmup_rounds=1, rounds=3))
        result = measure(spec, isolation="inprocess")
    finally:
        progress.activate(None)
    assert result.ok, result.reason
    assert [s.split(": ", 1)[1] for s in steps.shown] == [
        "prepare (one-time builds: checkpoint, export, quantization)", "load", "warm-up", "3 rounds"]


def test_log_mode_writes_a_timestamped_line_per_step_start_and_end(monkeypatch):
    """QUANTPERF_PROGRESS=log: where an unattended run spent its time, and where one that never
    ended was, readable in a plain log; a failing step says so."""
    import re

    import pytest

    monkeypatch.setenv(progress.LOG_ENV, "log")
    assert progress.log_requested()
    pipe = io.StringIO()
    steps = progress.Steps(pipe, log=progress.log_requested())
    assert steps.enabled
    with steps.step("llama-8b torchao-fp8wo kernel: load"):
        pass
    with pytest.raises(RuntimeError), steps.step("llama-8b torchao-fp8wo kernel: warm-up"):
        raise RuntimeError("boom")
    lines = [re.sub(r"^  \[\d\d:\d\d:\d\d\] ", "", x) for x in pipe.getvalue().splitlines()]
    assert len(lines) == 4 and all(x.startswith("llama-8b") for x in lines), pipe.getvalue()
    assert (lines[0] == "llama-8b torchao-fp8wo kernel: load ..."
            and lines[2] == "llama-8b torchao-fp8wo kernel: warm-up ...")
    lines = pipe.getvalue().splitlines()
    assert re.fullmatch(r"  \[\d\d:\d\d:\d\d\] llama-8b torchao-fp8wo kernel: load: done in \d+\.\d s", lines[1])
    assert re.fullmatch(r"  \[\d\d:\d\d:\d\d\] llama-8b torchao-fp8wo kernel: warm-up: failed after \d+\.\d s",
                        lines[3])
    monkeypatch.setenv(progress.LOG_ENV, "")
    assert not progress.log_requested()


def test_an_unknown_progress_value_is_one_clear_error(monkeypatch, tmp_path):
    """QUANTPERF_PROGRESS=lgo is a typo, not a silent "off": one line naming the variable, the
    value and what it accepts, from the CLI (exit 2) and from pytest (a usage error)."""
    import subprocess
    import sys

    import pytest

    from quantperf.errors import ConfigError

    monkeypatch.setenv(progress.LOG_ENV, "lgo")
    with pytest.raises(ConfigError, match=r"QUANTPERF_PROGRESS='lgo': unknown value; set it to 'log'"):
        progress.log_requested()
    cli = subprocess.run([sys.executable, "-m", "quantperf", "backends"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip().startswith("quantperf: QUANTPERF_PROGRESS='lgo'"), cli.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert run.returncode == 4 and "quantperf: QUANTPERF_PROGRESS='lgo'" in run.stderr, (run.stdout, run.stderr)
