"""What the commands share: the workload options and how they resolve, the device, writing
report files, and running a command with quantperf's errors as one line and exit status 2."""

from __future__ import annotations

import sys


def workload_args(p, rounds_help: str = "measured rounds") -> None:
    g = p.add_argument_group("workload (default: the matrix tier of the device, so results match the suite's "
                             "configuration ids and `quantperf gate` finds their baselines)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--prompt-tokens", type=int)
    g.add_argument("--new-tokens", type=int)
    g.add_argument("--rounds", type=int, help=rounds_help)
    g.add_argument("--warmup", type=int)
    g.add_argument("--matrix", default="benchmarks/matrix.toml", help="where the tier workloads come from")


def workload_of(args, device: str):
    """The device's tier workload from the matrix (when the file is there), with any option given
    on the command line replacing its field."""
    from dataclasses import asdict
    from pathlib import Path

    from ..matrix import load_matrix
    from ..spec import Workload

    base = asdict(Workload())
    if Path(args.matrix).is_file():
        tier = next((t for t in load_matrix(args.matrix).values() if t.device == device), None)
        if tier is not None:
            base = asdict(tier.workload)
    given = {"batch_size": args.batch_size, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
             "rounds": args.rounds, "warmup_rounds": args.warmup}
    return Workload(**(base | {k: v for k, v in given.items() if v is not None}))


def device_of(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_outputs(outputs: list[tuple[str | None, str]]) -> int:
    """Write report files atomically (a reader never sees half a file); 2 with one line on failure."""
    from ..errors import StoreWriteError
    from ..results import atomic_write_text

    for path, text in outputs:
        if not path:
            continue
        try:
            atomic_write_text(path, text)
        except StoreWriteError as exc:  # names the file, the OS error and what to do
            print(f"quantperf: {exc}", file=sys.stderr)
            return 2
    return 0


DEFAULT_TAKEAWAYS = "baselines/takeaways.toml"


def takeaways_path(given: str | None, option: str = "--takeaways") -> str | None:
    """The takeaway claims file of a command: the one given (which must exist: a misspelt path is
    one ConfigError naming the option and the path), else baselines/takeaways.toml when it
    exists, else none (silently: the user asked for nothing)."""
    from pathlib import Path

    from ..errors import ConfigError

    if given is None:
        return DEFAULT_TAKEAWAYS if Path(DEFAULT_TAKEAWAYS).is_file() else None
    if not Path(given).is_file():
        raise ConfigError(f"{option} {given}: does not exist (the takeaway claims TOML); fix the path, or leave "
                          f"{option} out to use {DEFAULT_TAKEAWAYS} when it exists")
    return given


def run_command(args) -> int:
    """Run the parsed command with a progress line on a terminal; quantperf's errors become one line
    on stderr and exit status 2."""
    from .. import progress

    try:
        # a status line per long step on a terminal; silent in pipes and logs unless QUANTPERF_PROGRESS=log
        progress.activate(progress.Steps(log=progress.log_requested()))
        return args.fn(args)
    except BrokenPipeError:
        # the reader went away (`quantperf profile | head -1`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from ..errors import QuantperfError

        if isinstance(exc, QuantperfError):
            print(f"quantperf: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        progress.activate(None)
