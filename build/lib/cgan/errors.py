"""Errors a user can fix. The CLIs print their message (no traceback) and exit non-zero."""


class CganError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DataError(CganError):
    """The dataset is missing, corrupt, or cannot be downloaded."""


class ConfigError(CganError):
    """A configuration value is out of range."""


class CheckpointError(CganError):
    """A checkpoint is missing, unreadable, or belongs to another architecture."""


class DivergenceError(CganError):
    """A loss or a weight became NaN or infinite during training."""
