"""Errors that name the problem and the fix."""


class GmError(Exception):
    """Base class of every error gm-bench raises on purpose."""


class ConfigError(GmError, ValueError):
    """A parameter is unknown, of the wrong type or out of range.

    The message always starts with the dotted name of the field.
    """

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field = field
        msg = f"{field}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class DataError(GmError):
    """A dataset is missing, corrupt or has the wrong checksum."""


class CheckpointError(GmError):
    """A checkpoint is corrupt, foreign or from another model."""


class DivergenceError(GmError):
    """Training produced a non-finite loss or parameter."""
