"""Progress of the long steps of a measurement on a terminal: one status line that names the step
and counts its seconds (a synthetic checkpoint build, an ONNX export and quantization, a load, a
compile warm-up, the timed rounds), replaced by the next step and erased at the end, so pytest's
own output and the one-line-per-configuration report stay as they are. Quiet when the output is
not a terminal (CI logs, pipes): nothing is written at all, unless QUANTPERF_PROGRESS=log asks for
one timestamped line at the start and the end of each step (an unattended GPU runner's log then
says where a slow run spent its time, and which step a run that never ended was in).

Drawn with tqdm (which the project already pulls in through transformers), on stderr for the
CLI; under pytest the plugin passes a stream that writes past pytest's output capture. The
scheduler announces steps with `step(label)`; who shows them is set once with `activate()`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

REFRESH_S = 1.0
LOG_ENV = "QUANTPERF_PROGRESS"  # "log": a timestamped line per step start and end, terminal or not


def log_requested() -> bool:
    """Whether QUANTPERF_PROGRESS asks for the log lines; any other value than "log" or empty is an error."""
    value = os.environ.get(LOG_ENV, "").strip()
    if value.lower() not in ("", "log"):
        from .errors import ConfigError

        raise ConfigError(f"{LOG_ENV}={value!r}: unknown value; set it to 'log' (a timestamped line per long step) "
                          "or leave it unset (a status line on a terminal only)")
    return value.lower() == "log"


class Steps:
    """A status line per step: `with steps.step("llama-1b bnb-nf4: load"): ...`."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None, log: bool = False):
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.log = log
        self.enabled = log or (bool(isatty and isatty()) if enabled is None else enabled)
        self.shown: list[str] = []  # labels shown, in order (for tests and the curious)

    def _line(self, text: str) -> None:
        self.stream.write(f"  [{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.log:
            self.shown.append(label)
            self._line(f"{label} ...")
            t0, outcome = time.perf_counter(), "failed after"
            try:
                yield
                outcome = "done in"
            finally:
                self._line(f"{label}: {outcome} {time.perf_counter() - t0:.1f} s")
            return
        from tqdm import tqdm

        self.shown.append(label)
        bar = tqdm(total=None, desc=label, bar_format="  {desc} ... {elapsed}", file=self.stream, leave=False,
                   dynamic_ncols=True)
        stop = threading.Event()

        def tick() -> None:  # tqdm redraws only on updates: the clock of a silent step needs a tick
            while not stop.wait(REFRESH_S):
                bar.refresh()

        ticker = threading.Thread(target=tick, name="quantperf-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            bar.close()


_quiet = Steps(enabled=False)
_active: Steps = _quiet


def activate(steps: Steps | None) -> None:
    """Show the scheduler's steps with `steps` from now on (None: quiet again)."""
    global _active
    _active = steps or _quiet


def step(label: str):
    """The active display's context manager for one long step (a no-op when quiet)."""
    return _active.step(label)


def note(line: str) -> None:
    """One timestamped line in the log (QUANTPERF_PROGRESS=log), for what the run did otherwise
    than planned; nothing on a terminal's status line or when quiet."""
    if _active.enabled and _active.log:
        _active.shown.append(line)
        _active._line(line)
