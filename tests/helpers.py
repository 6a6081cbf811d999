"""Test-only callbacks, reachable by class path from the CLI (tests/ is on sys.path)."""

from __future__ import annotations

import copy
import time

import pytorch_lightning as pl
import torch


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


class SlowBatches(pl.Callback):
    """Sleeps after every batch and marks the batches trained in a file, so a test can signal mid-epoch."""

    def __init__(self, seconds: float = 0.05, marker: str = "progress.txt") -> None:
        self.seconds, self.marker = seconds, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
        with open(self.marker, "a") as f:
            f.write(f"{trainer.current_epoch} {batch_idx}\n")


class InjectNaN(pl.Callback):
    """Puts a NaN into G's first weight at the start of batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int = 1, batch: int = 3) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                pl_module.generator.model[0].weight[0, 0] = float("nan")


class RankReport(pl.Callback):
    """Each rank writes ``rank{N}.pt``: its final weights and how many batches it trained."""

    def __init__(self, out: str = ".") -> None:
        self.out, self.batches = out, 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "batches": self.batches}, f"{self.out}/rank{trainer.global_rank}.pt")
