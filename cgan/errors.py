"""Errors a user can fix. The CLIs print their message (no traceback) and exit non-zero."""

from pathlib import Path


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


def cannot_write(path: Path, err: OSError, flag: str) -> OutputError:
    """The ``OutputError`` for ``path`` that ``err`` kept from being written; ``flag`` (e.g. "an --out")
    is the option to change."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    why = f"{blocker} is a file, not a folder" if blocker else err.strerror or type(err).__name__
    return OutputError(f"cannot write {path}: {why}. Pass {flag} in a folder you can write to.")
