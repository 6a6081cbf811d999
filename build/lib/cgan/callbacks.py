"""Training callbacks: sample grids, in-training metrics, epoch times."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid, save_image

from cgan.classifier import load_classifier
from cgan.metrics import DigitQuality, generate_per_class, scaled_batches


def _due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Whether the epoch now ending is an n-th one or the last."""
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


class SampleGrid(pl.Callback):
    """Draws the module's fixed samples every epoch: a grid with one row per digit.

    The grid goes to ``<run dir>/samples/NNN.png`` (NNN = epoch, as the seed's ``samples/``)
    and to TensorBoard as image ``samples`` with step = epoch. The noise and labels are a
    buffer of the module, so grids compare across epochs and across a resume. Rank 0 only.

    Args:
        every_n_epochs: draw every n-th epoch (and always on the last one).
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch
        log_dir = Path(trainer.log_dir or ".")  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        images = pl_module.sample(pl_module.sample_noise, pl_module.sample_labels)
        grid = make_grid(images.float().cpu(), nrow=10, normalize=True, value_range=(-1, 1))
        path = log_dir / "samples" / f"{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=epoch)


class DigitMetrics(pl.Callback):
    """Scores the generator during training: ``val/fid``, ``val/fid_intra`` and ``val/acc``.

    Every ``every_n_epochs`` epochs (and on the last one) the sampling generator (EMA when
    there is one) draws ``per_class`` digits of each class from fixed noise; they are scored
    against the validation split (the 10k test images, whose statistics are computed once)
    with the shipped MNIST classifier (see ``cgan.metrics.DigitQuality``). Under DDP each rank
    draws and scores its share and the statistics are combined.

    Args:
        every_n_epochs: evaluate every n-th epoch (and always after the last).
        per_class: generated digits per class (1000 gives 10,000 in all).
        seed: seed of the evaluation noise.
    """

    def __init__(self, every_n_epochs: int = 10, per_class: int = 1000, seed: int = 1234) -> None:
        self.every_n_epochs, self.per_class, self.seed = every_n_epochs, per_class, seed
        self.quality: DigitQuality | None = None
        self.seconds: dict[int, float] = {}  # epoch -> seconds of its evaluation

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.quality = DigitQuality(load_classifier()).to(pl_module.device)
        images, labels = trainer.datamodule.val_data
        rank, world = trainer.global_rank, trainer.world_size
        for batch, y in scaled_batches(images[rank::world], labels[rank::world], device=pl_module.device):
            self.quality.update(batch, y, real=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        start = time.perf_counter()
        batches = generate_per_class(
            pl_module.sampler, self.per_class, self.seed, rank=trainer.global_rank, world_size=trainer.world_size
        )
        scores = self.quality.score(batches)
        # Already combined over all ranks by torchmetrics: no sync_dist (Lightning would reduce
        # lazily, when the rank-0-only progress bar reads it, and the other ranks would not join).
        pl_module.log_dict({f"val/{k}": scores[k] for k in ("fid", "fid_intra", "acc")})
        self.seconds[trainer.current_epoch] = time.perf_counter() - start


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch (start to start, the last one to the end of
    training, so checkpointing and sample grids count), logged as ``time/epoch_seconds``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start)
            for logger in trainer.loggers:
                logger.log_metrics({"time/epoch_seconds": self.times[-1]}, step=trainer.current_epoch - 1)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)
        self._start = None
