"""Checkpoint files: atomic writes, finding the last one, loading one and checking it before a resume.

File handling only: rebuilding the model from a checkpoint is ``CGAN.from_checkpoint``.
"""

from __future__ import annotations

import json
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


ABSENT = object()  # a setting the checkpoint does not have: written before the setting existed


def changed_settings(
    checkpoint: dict, model: Mapping, data: Mapping, defaults: Mapping | None = None
) -> list[tuple[str, Any, Any]]:
    """``(name, the checkpoint's value, this run's value)`` for each setting a resumed run changes.

    ``model`` and ``data`` are the new run's hyperparameters (the module's and the data
    module's ``hparams``: LightningCLI loads both sides from the config's YAML, so they hold
    dicts, lists and scalars; its ``_instantiator`` entry is not a setting). Names are as in
    the config (``model.g_optimizer.init_args.lr``). Two mappings of the same class (or none)
    are compared key by key, anything else as a whole (a scheduler switched on: null in the
    checkpoint, its ``class_path``/``init_args`` now). A top-level model setting the checkpoint
    lacks is taken to have been added after it was written, and settings are added with a
    default that keeps the old behaviour: given the model's ``defaults`` (its ``__init__``'s,
    YAML-like values), it is compared as that default, which is what the checkpoint trained
    with. A top-level setting without a default there (and a data setting) the checkpoint lacks
    is reported, with ``ABSENT`` as its old value, unless it is null now. Below the top level,
    such keys (an optimizer argument a newer torch added) are left out. Of the data settings
    only ``batch_size`` and ``dataset`` are compared: the others say where and how the files
    are read and give the same batches (the shuffling seed is ``model.seed``'s twin).
    """
    data = {k: v for k, v in data.items() if k in ("batch_size", "dataset")}
    model = {k: v for k, v in model.items() if not k.startswith("_")}
    saved = {**(defaults or {}), **(checkpoint.get("hyper_parameters") or {})}
    changed = _diff(saved, model, "model", top=True)
    return changed + _diff(checkpoint.get("datamodule_hyper_parameters") or {}, data, "data", top=True)


def _diff(theirs: Mapping, ours: Mapping, prefix: str, top: bool = False) -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(ours):  # what the new run lacks it does not train with: nothing to say
        if key not in theirs and not top:
            continue
        name, old, new = f"{prefix}.{key}", theirs.get(key, ABSENT), ours[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping) and old.get("class_path") == new.get("class_path"):
            out += _diff(old, new, name)
        elif old != new and not (old is ABSENT and new is None):  # one not there, one off: alike
            out.append((name, old, new))
    return out


def show(value: Any) -> str:
    """A setting's value as YAML writes it on one line: ``null``, ``true``, ``0.5``,
    ``[0.0,0.9]``, ``{"class_path":...}`` (lists and mappings as JSON, which YAML reads)."""
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
