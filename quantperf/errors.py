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


class NonFiniteLogits(QuantperfError):
    """NaN or inf in a model's logits: never averaged away."""
