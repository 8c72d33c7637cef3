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
