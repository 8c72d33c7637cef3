"""Exceptions that carry a one-line, actionable message."""


class QuantperfError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class BackendUnavailable(QuantperfError):
    """The backend cannot run here; the message says what to install or which hardware it needs."""


class ModeUnsupported(QuantperfError):
    """The backend runs, but not in the requested runtime mode."""


class ConfigError(QuantperfError):
    """Bad user input: names the file/field/value and what to do about it."""


class BaselineError(QuantperfError):
    """A corrupt or mismatched baseline file."""


class ResultsError(QuantperfError):
    """A results file that cannot be read as quantperf results."""


class StoreWriteError(QuantperfError):
    """A baselines or results file could not be written (read-only file or directory, disk
    full): the message names the path, the OS error and what to do. Nothing was written: the
    file keeps its previous contents and no temporary file is left beside it."""


class DeviceUnavailable(QuantperfError, RuntimeError):
    """The requested device is not visible here (`--device cuda` without a GPU). A RuntimeError
    too, so callers that caught the RuntimeError this used to be still do."""


class TornLineWarning(UserWarning):
    """A results file holds a line that was cut off mid-write (a killed run, a full disk): it
    is skipped, and the warning names the file and the line."""


class NonFiniteLogits(QuantperfError):
    """NaN or inf in a model's logits: never averaged away."""


def read_toml(path, what: str, hint: str = "") -> dict:
    """Parse a TOML config file; a missing or malformed file is a ConfigError naming it."""
    import tomllib
    from pathlib import Path

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist{hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
