"""Test-only callbacks, reachable by class path from the CLI (tests/ is on sys.path)."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

# Training flags for a machine with a GPU, which the default accelerator ("auto") picks: tests that
# compare two runs tensor for tensor need deterministic kernels there. On a CPU, none.
GPU_FLAGS = ["--trainer.deterministic=true"] if torch.cuda.is_available() else []
# Flags for a short run on the tiny MNIST, with GPU_FLAGS.
FAST = ["--data.batch_size=20", "--trainer.enable_model_summary=false", *GPU_FLAGS]


class Recorder(pl.Callback):
    """Records the initial weights and the epochs and batches a run actually trains."""

    def __init__(self) -> None:
        self.initial: dict = {}
        self.epochs: list[int] = []
        self.batches: list[tuple[int, int]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        # a copy on the CPU: on a GPU, Lightning moves the module back to the CPU after fit
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx))


def callbacks_config(path: Path, init_args: dict[str, dict], extra: tuple[str, ...] = ()) -> Path:
    """A config file at ``path`` holding the default config's callbacks, those whose class name is
    a key of ``init_args`` given those arguments, plus the ``extra`` class paths."""
    from cgan.cli import config_dir

    callbacks = yaml.safe_load((config_dir() / "default.yaml").read_text())["trainer"]["callbacks"]
    for cb in callbacks:
        cb["init_args"] = init_args.get(cb["class_path"].rsplit(".", 1)[-1], cb.get("init_args", {}))
    callbacks += [{"class_path": class_path} for class_path in extra]
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def recorder(trainer: pl.Trainer) -> Recorder:
    return next(cb for cb in trainer.callbacks if isinstance(cb, Recorder))


class BatchLog(pl.Callback):
    """Appends ``epoch batch_idx digest`` to ``path`` as each batch starts: which data each batch held."""

    def __init__(self, path: str = "batches.txt") -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        Path(self.path + ".started").touch()  # lets a test signal once the loop runs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = batch
        digest = hashlib.sha1(x.cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()[:16]
        with open(self.path, "a") as f:
            f.write(f"{trainer.current_epoch} {batch_idx} {digest}\n")


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process at one moment of batch ``batch`` of epoch ``epoch``.

    ``point``: ``batch_start`` (between two batches), ``between_d_and_g`` (inside the training
    step, after D's update and before G's), ``batch_end``, ``checkpoint_write`` (while the
    epoch's checkpoint is being written; ``batch`` ignored) or ``epoch_end``.
    """

    def __init__(self, point: str, epoch: int, batch: int = 0, signum: int = int(signal.SIGTERM)) -> None:
        self.point, self.epoch, self.batch, self.signum = point, epoch, batch, signum
        self.sent = False

    def _maybe(self, trainer, point: str, batch_idx: int | None = None) -> None:
        if self.sent or point != self.point or trainer.current_epoch != self.epoch:
            return
        if batch_idx is not None and batch_idx != self.batch:
            return
        self.sent = True
        os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe(trainer, "batch_start", batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if optimizer is trainer.optimizers[0]:  # G's step: D's update of this batch is done
            self._maybe(trainer, "between_d_and_g", trainer.fit_loop.epoch_loop.batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(trainer, "batch_end", batch_idx)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._maybe(trainer, "checkpoint_write")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "epoch_end")


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


class OutputDtypes(pl.Callback):
    """Records the dtypes of G's outputs during training (what mixed precision really computes in)."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.generator.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype))


class MarkedGenerator(torch.nn.Module):
    """A stand-in G whose every pixel is 0.5: ``(z (B, noise_dim), y (B,)) -> (B, 1, 28, 28)``."""

    def __init__(self, noise_dim: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.noise_dim, self.num_classes = noise_dim, num_classes
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, y):
        return torch.full((len(z), 1, 28, 28), 0.5, device=z.device) + 0 * self.unused


class MarkedDiscriminator(torch.nn.Module):
    """A stand-in D with logit -3 for G's images (pixel (0, 0) at 0.5) and +3 for real ones."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, y):
        return torch.where(x[:, 0, 0, 0] == 0.5, -3.0, 3.0) + 0 * x.mean(dim=(1, 2, 3)) + 0 * self.unused


class NamingDiscriminator(MarkedDiscriminator):
    """``MarkedDiscriminator`` with a class head: ``classes=True`` adds class logits ``(B, 10)``,
    all 0 for real images and ``+4`` for digit 0 (else 0) for G's."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Identity()  # what CGAN's aux_weight looks for

    def forward(self, x, y, classes=False):
        logits = super().forward(x, y)
        if not classes:
            return logits
        named = torch.zeros(len(x), 10, device=x.device) + 0 * self.unused
        named[:, 0] = torch.where(x[:, 0, 0, 0] == 0.5, 4.0, 0.0)
        return logits, named


class ShiftedGenerator(MarkedGenerator):
    """``MarkedGenerator`` whose pixels are ``0.5 + shift``, ``shift`` a trained parameter (starting at 0)."""

    def __init__(self, noise_dim: int = 4, num_classes: int = 10) -> None:
        super().__init__(noise_dim, num_classes)
        self.shift = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, y):
        return super().forward(z, y) + self.shift


class NoiseImageGenerator(torch.nn.Module):
    """A stand-in G that draws its noise: each of the 784 pixels is ``scale * z_i``, each noise value
    filling ``784 / noise_dim`` pixels (``noise_dim`` must divide 784), so any two images differ
    ``scale`` times as much as their noise (mean absolute differences). ``scale`` is a trained
    parameter, starting at 1."""

    def __init__(self, noise_dim: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.noise_dim, self.num_classes = noise_dim, num_classes
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, z, y):
        return (self.scale * z).repeat(1, 784 // self.noise_dim).view(-1, 1, 28, 28)


class TwinNamingDiscriminator(NamingDiscriminator):
    """``NamingDiscriminator`` with a twin head whose logit for the label asked for is 10 x the
    image's mean pixel plus ``twin_bias`` (a trained parameter, starting at 0), the others 0: for
    G's images before D's first update, ``log(e^5 + 9) - 5`` (the cross-entropy), whose slopes in
    ``twin_bias`` and in a shift of all pixels are ``p - 1`` and ``10 * (p - 1)``, ``p = e^5 / (e^5 + 9)``."""

    def __init__(self) -> None:
        super().__init__()
        self.twin = torch.nn.Identity()  # what CGAN looks for
        self.twin_bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, y, classes=False):
        if not classes:
            return super().forward(x, y)
        logits, named = super().forward(x, y, classes=True)
        label_logit = 10 * x.mean(dim=(1, 2, 3)) + self.twin_bias
        return logits, named, label_logit[:, None] * torch.nn.functional.one_hot(y, 10)


class LRLog(pl.Callback):
    """The learning rates each batch trains with, ``(G's, D's)``, recorded after the module set them."""

    def __init__(self) -> None:
        self.rates: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rates.append(tuple(opt.param_groups[0]["lr"] for opt in trainer.optimizers))
