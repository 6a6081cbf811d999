"""Stopping a run at any moment and resuming it exactly: signals, timed checkpoints, SLURM requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from cgan.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint (not an error: the run can go on)."""

    def __init__(self, signum: int, path: Path, epoch: int, batches: int, requeued: str | None = None) -> None:
        self.signum, self.path, self.epoch, self.batches, self.requeued = signum, path, epoch, batches, requeued
        super().__init__(
            f"Stopped by {signal.Signals(signum).name} after {batches} batches of epoch {epoch}; saved {path}."
        )


def slurm_job_id() -> str | None:
    """The SLURM job of this process (``JOB_TASK`` for an array task), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_note(root: str | Path, job_id: str) -> Path:
    """The file through which a requeued SLURM job finds the checkpoint its first run saved."""
    return Path(root) / f"slurm-{job_id}.resume"


class LastCheckpoint(Checkpoint):
    """Keeps ``last.ckpt`` ready to resume from, whatever stops the run.

    - **SIGINT (Ctrl-C), SIGTERM, SIGUSR1**: the batch in flight finishes (both the D and the
      G update), ``last.ckpt`` is written, and ``fit`` raises ``Stopped``. A second Ctrl-C
      aborts at once; the checkpoint IO writes atomically, so the previous file survives.
    - **Every ``every_minutes`` of training** ``last.ckpt`` is rewritten after a batch, so a
      ``kill -9`` or a power cut loses at most that much.
    - **SLURM**: on SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``) in a SLURM job, the job is also
      requeued with ``scontrol requeue``, and the requeued job resumes from the saved
      checkpoint by itself (the CLI reads ``requeue_note``).

    Checkpoints are written at the end of a batch, where Lightning restores them as "restarted
    on train batch end": the resumed run starts with the first batch not trained; after an
    epoch's last batch, at the end of the epoch. It is a ``Checkpoint`` callback, so Lightning
    runs its hooks after the other callbacks'. Under DDP the ranks agree on stopping or saving
    after every batch (one small all-reduce).

    Args:
        every_minutes: minutes between timed saves inside an epoch; None turns them off.
        requeue: requeue the SLURM job on SIGUSR1.
    """

    def __init__(self, every_minutes: float | None = 5.0, requeue: bool = True) -> None:
        if every_minutes is not None and not every_minutes > 0:
            raise ConfigError(f"LastCheckpoint.every_minutes must be positive or null, got {every_minutes}.")
        self.every_minutes, self.requeue = every_minutes, requeue
        self.signum: int | None = None  # the first stop signal received
        self._stop: Stopped | None = None  # decided at an epoch's end, raised when the next one starts
        self._previous: dict[int, object] = {}
        self._last_save = time.monotonic()

    # --- signals -------------------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # os.write, not print: the handler may run in the middle of another print to the same stream
        if self.signum is not None and signum == signal.SIGINT:
            os.write(2, b"\nSecond Ctrl-C: stopping now; the last checkpoint written is kept.\n")
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            os.write(2, f"\n{name}: finishing this batch and saving a checkpoint (Ctrl-C again to abort).\n".encode())

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning's own handlers, so that its SLURM handler (which saves in the middle
        # of a batch) is not installed for SIGUSR1.
        self.signum, self._stop = None, None
        self._install()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has put its SIGTERM handler in front of ours by now; take SIGTERM back, or it
        # would stop the loop before the checkpoint is written.
        self._install()
        self._last_save = time.monotonic()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    # --- saving --------------------------------------------------------------------------

    @staticmethod
    def _model_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
        return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)

    def path(self, trainer: pl.Trainer) -> str:
        """The run's ``last.ckpt``, named as ModelCheckpoint names it when there is one."""
        ckpt_cb = self._model_checkpoint(trainer)
        if ckpt_cb is not None and ckpt_cb.dirpath:
            return ckpt_cb.format_checkpoint_name({}, ckpt_cb.CHECKPOINT_NAME_LAST)
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints", "last.ckpt")

    def _decide(self, trainer: pl.Trainer) -> tuple[int, bool]:
        """(stop signal or 0, whether a timed save is due), the same on every rank."""
        due = self.every_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_minutes
        if trainer.world_size == 1:
            return self.signum or 0, due
        flags = torch.tensor([self.signum or 0, int(due)], device=trainer.strategy.root_device)
        signum, due = trainer.strategy.reduce(flags, reduce_op="max").tolist()
        return int(signum), bool(due)

    def _save(self, trainer: pl.Trainer, saved_by_model_checkpoint: bool = False) -> Stopped | None:
        """Write last.ckpt if a stop signal came or a timed save is due; the stop to raise, if any."""
        signum, due = self._decide(trainer)
        if saved_by_model_checkpoint:
            self._last_save = time.monotonic()
        if not (signum or due):
            return None  # the common case, once per batch: nothing more to do
        path = self.path(trainer)
        if not saved_by_model_checkpoint:
            ckpt_cb = self._model_checkpoint(trainer)
            if ckpt_cb is not None:  # ModelCheckpoint's file from now on: overwritten, not versioned (last-v1)
                ckpt_cb.last_model_path = path
            trainer.save_checkpoint(path)
        self._last_save = time.monotonic()
        if not signum:
            return None
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        requeued = self._requeue(trainer, path) if signum == signal.SIGUSR1 and self.requeue else None
        return Stopped(signum, Path(path), trainer.current_epoch, batches, requeued)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        # After an epoch's last batch the epoch's end comes first (means, grids, its checkpoint);
        # a checkpoint written between the two would resume without it.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and (stop := self._save(trainer)):
            raise stop

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A Checkpoint callback: Lightning calls it after the module's hook and after ModelCheckpoint.
        # A stop waits for the next epoch's start: Lightning writes the epoch's logged means after this.
        ckpt_cb = self._model_checkpoint(trainer)
        self._stop = self._save(trainer, saved_by_model_checkpoint=ckpt_cb is not None and bool(ckpt_cb.save_last))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            raise stop

    # --- SLURM ---------------------------------------------------------------------------

    def _requeue(self, trainer: pl.Trainer, path: str) -> str | None:
        """Requeue this SLURM job (rank 0) and leave it a note of the checkpoint; the job id or None."""
        job_id = slurm_job_id()
        if job_id is None:
            return None
        if trainer.is_global_zero:
            note = requeue_note(trainer.default_root_dir, job_id)
            note.write_text(f"{Path(path).resolve()}\n")
            try:
                result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
                output = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
                failure = output if result.returncode != 0 else None
            except OSError as err:
                failure = str(err)
            if failure:
                note.unlink()
                rank_zero_warn(f"scontrol requeue {job_id} failed ({failure}); resume the run by hand.")
                return None
        return job_id

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        job_id = slurm_job_id()
        if job_id is not None and trainer.is_global_zero:
            requeue_note(trainer.default_root_dir, job_id).unlink(missing_ok=True)  # the run is complete
