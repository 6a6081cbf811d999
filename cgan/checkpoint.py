"""Checkpoint files: atomic writes, finding the last one, loading one and checking it before a resume.

File handling only: rebuilding the model from a checkpoint is ``CGAN.from_checkpoint``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cgan.errors import CheckpointError, reason


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``PATH.tmp``, flushes it to disk, then renames it over ``PATH``.

    A crash or a kill during a save leaves the previous checkpoint intact, never a half-written one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def find_last(root: Path) -> Path:
    """The newest ``<root>/version_*/checkpoints/last.ckpt``."""
    candidates = sorted(Path(root).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints/. "
            f"Train first, or pass the path of a checkpoint."
        )
    return candidates[-1]


def run_version(ckpt: Path) -> int | None:
    """N when ``ckpt`` lies in ``.../version_N/checkpoints/``, so a resumed run keeps logging there."""
    run = Path(ckpt).resolve().parent.parent
    if Path(ckpt).resolve().parent.name == "checkpoints" and run.name.startswith("version_"):
        suffix = run.name[len("version_") :]
        if suffix.isdigit():
            return int(suffix)
    return None


def load(path) -> dict:
    """Load a training checkpoint on the CPU, or explain why it cannot be one."""
    if path is None or str(path).strip() == "":  # Path("") would be the current folder
        raise CheckpointError("the checkpoint path is empty. Pass the path of a .ckpt file.")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a file. Pass a .ckpt file "
            f"(a run keeps them in lightning_logs/version_N/checkpoints/)."
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Pass an existing .ckpt file, or 'last'.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes). It was not written completely: pick another checkpoint of the run."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({reason(err)}). "
            f"It may be truncated or another kind of file: pick another checkpoint of the run."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a cgan checkpoint (it has no 'state_dict'). Pick a .ckpt of a cgan run.")
    return ckpt


def check_compatible(module: torch.nn.Module, checkpoint: dict) -> None:
    """Raise a clear error unless ``checkpoint``'s weights fit ``module`` key for key and shape for shape."""
    theirs = checkpoint.get("state_dict", {})
    own = module.state_dict()
    problems = [f"missing {k}" for k in sorted(own.keys() - theirs.keys())]
    problems += [f"unexpected {k}" for k in sorted(theirs.keys() - own.keys())]
    problems += [
        f"{k}: {tuple(theirs[k].shape)} in the checkpoint, {tuple(own[k].shape)} here"
        for k in sorted(own.keys() & theirs.keys())
        if theirs[k].shape != own[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise CheckpointError(
            f"the checkpoint was made with a different architecture ({shown}). "
            f"Use the config it was trained with (its run folder holds config.yaml: --config that file)."
        )


def changed_settings(checkpoint: dict, model: Mapping, data: Mapping) -> list[str]:
    """The settings a resumed run trains with that differ from ``checkpoint``'s, one line each.

    ``model`` and ``data`` are the new run's hyperparameters (the module's and the data
    module's ``hparams``); nested ones are compared leaf by leaf and named as on the command
    line: ``"model.g_optimizer.init_args.lr: 0.0008 in the checkpoint, 0.0004 now"``. Of the
    data settings only ``batch_size`` and ``dataset`` are compared: the others say where and
    how the files are read, and give the same batches (the shuffling seed is ``model.seed``'s
    twin). Settings one side lacks (a checkpoint from an older version) are left out.
    """
    data = {k: v for k, v in data.items() if k in ("batch_size", "dataset")}
    lines = []
    for section, own, key in (("model", model, "hyper_parameters"), ("data", data, "datamodule_hyper_parameters")):
        theirs, ours = _leaves(checkpoint.get(key) or {}), _leaves(own)
        lines += [
            f"{section}.{name}: {_show(theirs[name])} in the checkpoint, {_show(ours[name])} now"
            for name in sorted(theirs.keys() & ours.keys())
            if theirs[name] != ours[name]
        ]
    return lines


def _leaves(hparams: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every non-mapping value under ``hparams`` (tuples as lists)."""
    out = {}
    for key, value in hparams.items():
        if key.startswith("_"):  # LightningCLI's bookkeeping (_instantiator), not a setting
            continue
        if isinstance(value, Mapping) or hasattr(value, "as_dict"):  # a dict or a jsonargparse Namespace
            out.update(_leaves(value if isinstance(value, Mapping) else value.as_dict(), f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
