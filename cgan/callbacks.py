"""Training callbacks: sample grids, in-training metrics, the run's row in TensorBoard's HPARAMS view, epoch times."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid

from cgan.classifier import load_classifier
from cgan.metrics import DigitQuality, generate_per_class, scaled_batches

VAL_METRICS = ("val/fid", "val/fid_intra", "val/acc", "val/precision", "val/recall")  # what DigitMetrics logs


def _due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Whether the epoch now ending is an n-th one or the last: ``max_epochs`` reached, or the
    trainer stopping for another reason, as at ``max_time`` (decided on every rank alike)."""
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs or trainer.should_stop


def log_image(logger: Logger, key: str, image: np.ndarray, step: int) -> None:
    """Send ``image`` (H, W, 3) uint8 through ``logger``'s own image call, if it has one.

    TensorBoard: image ``key`` at ``step``; Weights & Biases: ``key`` with ``trainer/global_step``
    = ``step``; MLflow: the artifact ``key/NNN.png`` (NNN = ``step``). Other loggers take no images.
    The logger classes import without wandb or mlflow, so neither is needed unless it is used.
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[image], step=step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, image, artifact_file=f"{key}/{step:03d}.png")


class SampleGrid(pl.Callback):
    """Draws the module's fixed samples every epoch: a grid with one row per digit.

    The grid goes to ``<run dir>/samples/NNN.png`` (NNN = epoch, as the seed's ``samples/``)
    and, as image ``samples`` with step = epoch, to every logger that takes images (see
    ``log_image``); the same pixels everywhere. The noise and labels are a buffer of the
    module, so grids compare across epochs and across a resume. Rank 0 only.

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
        # (3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded as torchvision's save_image does
        image = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).byte().numpy()
        path = log_dir / "samples" / f"{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        for logger in trainer.loggers:
            log_image(logger, "samples", image, epoch)


class DigitMetrics(pl.Callback):
    """Scores the generator during training: ``val/fid``, ``val/fid_intra``, ``val/acc``,
    ``val/precision`` and ``val/recall``.

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
        pl_module.log_dict({tag: scores[tag.removeprefix("val/")] for tag in VAL_METRICS})
        self.seconds[trainer.current_epoch] = time.perf_counter() - start


class HparamsTable(pl.Callback):
    """Puts the run in TensorBoard's HPARAMS view: one row of its key settings, with the ``val/*``
    metrics as the columns to sort runs by.

    At fit start, each ``TensorBoardLogger`` gets the settings below and NaN ("not scored yet")
    as the first value of each ``val/*`` metric of ``DigitMetrics``. TensorBoard shows the last
    value of each, so the scores ``DigitMetrics`` logs later fill the columns. Settings:
    ``generator`` and ``discriminator`` (class names), ``loss``, ``g_lr`` and ``d_lr`` (the
    optimizers' initial learning rates), ``batch_size`` (per process), ``ema_decay`` (0 when
    there is no EMA: an average with decay 0 is the live generator), ``ema_power`` and
    ``ema_floor`` (0 without the EMA's warm-up), ``lr_decay``, ``r1_gamma`` (0 for none) and
    ``r1_every`` (0 without R1), ``mismatch`` and ``aux_weight`` (0 for none), ``twin`` (whether
    G is also judged by a twin class head), ``mode_seeking`` (0 for none), ``max_epochs`` and
    ``dataset``; Lightning adds them to the run's ``hparams.yaml`` too.

    A run resumed into the folder it logged to keeps its one row, with the settings it started
    with: the checkpoint records where the row was written. Rank 0 only, as the logger.
    """

    def __init__(self) -> None:
        self.logged_to: list[str] = []  # the log folders that hold this run's row

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            log_dir = str(Path(logger.log_dir).resolve()) if isinstance(logger, TensorBoardLogger) else None
            if log_dir is None or log_dir in self.logged_to:
                continue
            logger.log_hyperparams(settings(trainer, pl_module), dict.fromkeys(VAL_METRICS, float("nan")))
            self.logged_to.append(log_dir)

    def state_dict(self) -> dict:
        return {"logged_to": self.logged_to}

    def load_state_dict(self, state_dict: dict) -> None:
        self.logged_to = list(state_dict["logged_to"])


def settings(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str | float]:
    """The key settings of a run, by the names ``HparamsTable`` shows them under."""
    opt_g, opt_d = trainer.optimizers  # the module returns G's optimizer first
    data = trainer.datamodule.hparams
    warmup = bool(pl_module.ema_decay and pl_module.ema_warmup)  # the EMA's power and floor act only then
    return {
        "generator": type(pl_module.generator).__name__,
        "discriminator": type(pl_module.discriminator).__name__,
        "loss": pl_module.hparams.loss,
        "g_lr": _initial_lr(opt_g),
        "d_lr": _initial_lr(opt_d),
        "batch_size": data.batch_size,
        "ema_decay": pl_module.ema_decay or 0.0,
        "ema_power": pl_module.ema_power if warmup else 0.0,
        "ema_floor": pl_module.ema_floor if warmup else 0.0,
        "lr_decay": pl_module.lr_decay or 0.0,
        "r1_gamma": pl_module.r1_gamma or 0.0,
        "r1_every": pl_module.r1_every if pl_module.r1_gamma is not None else 0,
        "mismatch": pl_module.mismatch or 0.0,
        "aux_weight": pl_module.aux_weight or 0.0,
        "twin": pl_module.twin,
        "mode_seeking": pl_module.mode_seeking or 0.0,
        "max_epochs": trainer.max_epochs,
        "dataset": data.dataset,
    }


def _initial_lr(optimizer) -> float:
    group = optimizer.param_groups[0]
    return group.get("initial_lr", group["lr"])  # an LR scheduler keeps the configured value there


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
