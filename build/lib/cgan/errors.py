"""Errors a user can fix. The CLIs print their message (no traceback) and exit non-zero."""


class CganError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DataError(CganError):
    """The dataset is missing, corrupt, or cannot be downloaded."""


class ConfigError(CganError):
    """A configuration value is out of range."""


class CheckpointError(CganError):
    """A checkpoint is missing, unreadable, or belongs to another architecture."""


class OutputError(CganError):
    """An output file cannot be written where it was asked for."""


class DivergenceError(CganError):
    """A loss or a weight became NaN or infinite during training."""


def reason(err: BaseException) -> str:
    """``"TypeName: first sentence of the message"`` of an underlying error, for a CganError's message to quote."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].split('. ')[0][:200]}" if lines else type(err).__name__
