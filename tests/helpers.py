"""Test-only callbacks, reachable by class path from the CLI (tests/ is on sys.path)."""

from __future__ import annotations

import copy

import pytorch_lightning as pl


class Recorder(pl.Callback):
    """Records the initial weights and the epochs and batches a run actually trains."""

    def __init__(self) -> None:
        self.initial: dict = {}
        self.epochs: list[int] = []
        self.batches: list[tuple[int, int]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.initial = copy.deepcopy(pl_module.state_dict())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx))


def recorder(trainer: pl.Trainer) -> Recorder:
    return next(cb for cb in trainer.callbacks if isinstance(cb, Recorder))
