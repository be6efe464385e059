"""User-facing errors.

Every mistake a user can make (unknown method or dataset, bad shapes, NaN/Inf in data, invalid configuration,
a directory that is not a run) raises a subclass of :class:`SBridgeError` whose message is one sentence naming
the problem and the fix. The CLI prints that sentence without a traceback and exits with code 2.
"""

from __future__ import annotations


class SBridgeError(Exception):
    """Base class for errors caused by user input; the message is meant to be shown as-is."""


class DataError(SBridgeError):
    """Input data has the wrong shape, type or contains non-finite values."""


class ConfigError(SBridgeError):
    """A configuration value (method, dataset, option) is unknown or out of range."""


class RunDirError(SBridgeError):
    """A path given as a run directory is missing or does not hold an sbridge run."""


class TrainingDivergedError(SBridgeError):
    """The loss became NaN or Inf; training stopped and the last good checkpoint was kept."""


class NotPositiveDefiniteError(SBridgeError):
    """A covariance built from (possibly learned) process coefficients is not positive definite."""


class SBridgeWarning(UserWarning):
    """Something the user should know about a run that did not stop it; the CLI prints it as one line."""


class LossGrowthWarning(SBridgeWarning):
    """The training loss grew by orders of magnitude over its lowest value: the run is probably diverging."""


class UnknownOptionError(ConfigError, TypeError):
    """A constructor keyword the class does not take: a :class:`ConfigError` with one sentence, and a ``TypeError``
    like Python's own; ``name`` is the keyword, which callers that list the valid options (the CLI) read."""

    def __init__(self, owner: str, name: str) -> None:
        super().__init__(f"{owner} has no option {name!r}; help(sbridge.{owner}) lists its options.")
        self.name = name
