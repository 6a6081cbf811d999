"""The conditional GAN as a LightningModule: alternating D and G updates, manual optimization."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable, instantiate_module
from torch import Tensor, nn

from cgan.checkpoint import check_compatible, show
from cgan.checkpoint import load as load_checkpoint
from cgan.errors import CheckpointError, ConfigError, DivergenceError, reason
from cgan.losses import LOSSES
from cgan.metrics import BatchMeans
from cgan.models import recompute_batch_norm, training_mode

STATS = ("d_loss", "g_loss", "d_real", "d_fake")
AUX_STATS = ("d_class", "g_class")  # logged too with aux_weight
TWIN_STATS = ("d_twin", "g_twin")  # and with a twin head
MS_STATS = ("mode_seeking",)  # with mode_seeking
OLD_LAYOUT = (*STATS, *AUX_STATS, "d_twin")  # the columns of a checkpoint saved without their names


def reseed_global_rng(*key: int) -> None:
    """Seed torch's global RNG (CPU and every GPU) from a tuple of non-negative integers.

    The key is mixed by numpy's ``SeedSequence``, so nearby keys give unrelated streams.
    """
    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))


def run_fraction(trainer: pl.Trainer, batch_idx: int) -> float:
    """How much of the run is done before batch ``batch_idx`` of this epoch, in [0, 1].

    The run ends at the first of the trainer's limits: ``max_epochs``, ``max_steps`` (two
    optimizer steps per batch here) and ``max_time``; this is the largest fraction of any of them
    used so far. The first two give the same answer in every run of a config; the clock does not.
    """
    done = [0.0]
    if trainer.max_steps > 0:
        done.append(trainer.global_step / trainer.max_steps)
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        done.append((trainer.current_epoch + batch_idx / trainer.num_training_batches) / trainer.max_epochs)
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None:
        elapsed = timer.time_elapsed()
        done.append(elapsed / max(elapsed + remaining, 1e-9))
    return min(max(done), 1.0)


def saved_train_stats(checkpoint: dict) -> tuple[tuple[str, ...], Tensor, Tensor] | None:
    """The running loss sums a checkpoint carries: ``(names, total (world, K), count (world, K))``,
    one row per process, or None. Checkpoints written before the names were saved hold one
    ``(world, K + 1)`` tensor with a shared count; their names follow from K (the class heads'
    columns came after the four GAN ones, the twin's last)."""
    saved = checkpoint.get("train_stats")
    if saved is None:
        return None
    if isinstance(saved, Tensor):
        k = saved.size(1) - 1
        return OLD_LAYOUT[:k], saved[:, :k], saved[:, k:].expand(-1, k)
    return tuple(saved["names"]), saved["total"], saved["count"]


class CGAN(pl.LightningModule):
    """A conditional GAN: G draws the digit it is asked for, D judges (image, label) pairs.

    Each batch makes one D update (real vs. generated) and then one G update against the
    updated D, as the seed does. G's output is computed once per batch and reused for both
    updates; D scores the real and the generated images as one batch (our discriminators have
    no batch statistics, so this is the same maths); during the G update D's parameters are
    frozen, so each backward pass touches only the network it updates.

    Logged per epoch (x-axis: batches trained): ``train/d_loss``, ``train/g_loss``,
    ``train/d_real`` (mean D(x)) and ``train/d_fake`` (mean D(G(z))), D's outputs as
    probabilities; with ``aux_weight``, also ``train/d_class`` and ``train/g_class``, the class
    head's cross-entropy on the real digits and on G's, and with a twin head ``train/d_twin``
    and ``train/g_twin``, its cross-entropy on G's digits in D's update and in G's (G's loss
    subtracts it); with ``mode_seeking``, ``train/mode_seeking``, the term unweighted
    (``mode_seeking_term``: lower is more varied). ``d_loss`` and ``g_loss`` are the GAN losses
    alone, without the R1 penalty, the class heads' terms or the mode-seeking term.

    Args:
        generator: ``(z (B, noise_dim), y (B,)) -> (B, 1, 28, 28)``; must expose ``noise_dim``
            and ``num_classes``.
        discriminator: ``(x (B, 1, 28, 28), y (B,)) -> logits (B,)``.
        g_optimizer: builds G's optimizer from its parameters (from the config, e.g. Adam lr 0.001).
        d_optimizer: builds D's optimizer from its parameters.
        g_scheduler: optional LR scheduler for G, stepped once per epoch.
        d_scheduler: optional LR scheduler for D, stepped once per epoch.
        loss: ``bce`` (the seed's, non-saturating for G) or ``hinge``.
        ema_decay: if set, an exponential moving average of G's weights is kept and used
            for sample grids, metrics and generation. Its batch-norm statistics are recomputed
            for its own weights whenever it is used after an update.
        ema_warmup: average over fewer batches early on: the decay after batch ``n`` is
            ``min(ema_decay, max(ema_floor, (1 + n) / (n + ema_power + 2)))``, so a short run's
            average is not weighed down by G's first, random weights (``ema_decay ** n`` of them
            otherwise).
        ema_power: the warm-up's power. Until ``ema_decay`` caps the decay, G's weights after
            batch ``k`` count in the average about in proportion to ``k ** ema_power`` (a
            power-function EMA, Karras et al., 2024): the weights it averages are on average
            ``1 / (ema_power + 2)`` of the run old, however long the run has gone.
        ema_floor: the least decay of the warm-up (0: none), so that the average never spans
            fewer than about ``1 / (1 - ema_floor)`` batches: a short run's power-function average
            would otherwise keep the noise of its last few. The power's decay passes the floor
            after ``(ema_floor * (ema_power + 2) - 1) / (1 - ema_floor)`` batches (2,410 for 16 and
            0.993); in a run much longer than that, the floor has all but no effect. The random start
            keeps ``ema_floor ** n`` of the average after batch ``n`` (0.993: 0.12 after 300), and a
            floor at or above ``ema_decay`` leaves a plain EMA of decay ``ema_decay``.
        lr_decay: if set, both learning rates fall linearly to zero, batch by batch, over the
            last ``lr_decay`` of the run (1.0: the whole run). The run's length is that of
            ``run_fraction``: a run stopped on the clock (``max_time``) ends its decay on time.
        r1_gamma: if set, D's loss gets the zero-centred gradient penalty ``r1_penalty`` with
            this weight, which keeps G's digits varied within each class.
        r1_every: compute that penalty on every ``r1_every``-th batch only (weighted up to match).
        mismatch: if set, this share of each batch's real digits is shown to D a second time
            with a wrong label, among the generated ones (the matching-aware discriminator of
            Reed et al., 2016), so D learns to check the label and G to draw the digit asked for.
        aux_weight: if set, the discriminator's class head (``ConvDiscriminator(classifier=True)``)
            learns to name the digits of real images (cross-entropy in D's loss, with weight 1 like
            D's GAN loss: the balance that is tuned is G's), and
            G's loss gets ``aux_weight`` times that head's cross-entropy on G's digits against the
            labels asked for, so a digit that could be read as another one costs G directly
            (Odena et al., 2017's auxiliary classifier, trained on real digits only: trained on
            G's too, D could help G by finding its digits easy to name). With a twin head as well
            (``ConvDiscriminator(twin=True)``), that head learns to name G's digits (in D's loss,
            weight 1) and G's loss gets minus ``aux_weight`` times its cross-entropy: G is then
            pushed to draw digits as easy to name as real ones, not easier, which keeps their
            variety (Gong et al., 2019's twin auxiliary classifiers).
        mode_seeking: if set, G's loss gets this weight times ``mode_seeking_term``, which grows as
            G draws alike digits of a label from different noise (Mao et al., 2019): more variety
            within each digit (recall), paid for with sharpness (precision); the distance is
            taken between pixels, so a large weight also buys it with grey backgrounds.
        sample_seed: seed of the fixed noise behind the sample grids (10 per digit).
        seed: seed of the training noise and dropout: each batch draws from the global RNG
            seeded with ``(seed, epoch, batch, rank)``, so a run resumed at any batch draws
            exactly what the uninterrupted run drew. Linked to ``seed_everything`` by the CLI.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: OptimizerCallable,
        d_optimizer: OptimizerCallable,
        g_scheduler: LRSchedulerCallable | None = None,
        d_scheduler: LRSchedulerCallable | None = None,
        loss: Literal["bce", "hinge"] = "bce",
        ema_decay: float | None = None,
        ema_warmup: bool = False,
        ema_power: float = 8.0,
        ema_floor: float = 0.0,
        lr_decay: float | None = None,
        r1_gamma: float | None = None,
        r1_every: int = 4,
        mismatch: float | None = None,
        aux_weight: float | None = None,
        mode_seeking: float | None = None,
        sample_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}.")
        if not 0.0 < ema_power < float("inf"):
            raise ConfigError(f"model.ema_power must be positive and finite, got {ema_power}.")
        if not 0.0 <= ema_floor < 1.0:
            raise ConfigError(f"model.ema_floor must be in [0, 1), got {ema_floor}.")
        if lr_decay is not None and not 0.0 < lr_decay <= 1.0:
            raise ConfigError(f"model.lr_decay must be in (0, 1] or null, got {lr_decay}.")
        if r1_gamma is not None and not r1_gamma > 0:
            raise ConfigError(f"model.r1_gamma must be positive or null, got {r1_gamma}.")
        if r1_every < 1:
            raise ConfigError(f"model.r1_every must be 1 or more (batches), got {r1_every}.")
        if mismatch is not None and not 0.0 < mismatch <= 1.0:
            raise ConfigError(f"model.mismatch must be in (0, 1] or null, got {mismatch}.")
        if aux_weight is not None and not aux_weight > 0:
            raise ConfigError(f"model.aux_weight must be positive or null, got {aux_weight}.")
        if mode_seeking is not None and not mode_seeking > 0:
            raise ConfigError(f"model.mode_seeking must be positive or null, got {mode_seeking}.")
        if aux_weight is not None and getattr(discriminator, "classifier", None) is None:
            raise ConfigError(
                f"model.aux_weight needs a discriminator with a class head; {type(discriminator).__name__} has none. "
                f"Use cgan.models.ConvDiscriminator with classifier: true, or set model.aux_weight: null."
            )
        if lr_decay is not None and (g_scheduler is not None or d_scheduler is not None):
            raise ConfigError("model.lr_decay and an LR scheduler both set the learning rates: use one of them.")
        # Built from a config (LightningCLI), the networks are stored as class_path/init_args and
        # from_checkpoint rebuilds them. Built in Python they are objects: keep them out.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        objects = [k for k in ("generator", "discriminator") if isinstance(self.hparams.get(k), nn.Module)]
        if objects:
            self.remove_ignored_hparams(objects)
        self.automatic_optimization = False

        self.generator, self.discriminator = generator, discriminator
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay is not None else None
        self.ema_decay, self.ema_warmup, self.ema_power, self.ema_floor = ema_decay, ema_warmup, ema_power, ema_floor
        self.lr_decay, self.seed = lr_decay, seed
        self.r1_gamma, self.r1_every, self.mismatch, self.aux_weight = r1_gamma, r1_every, mismatch, aux_weight
        self.mode_seeking = mode_seeking
        self._ema_stats_stale = True
        self.noise_dim, self.num_classes = generator.noise_dim, generator.num_classes
        self.optimizer_fns = {"g_optimizer": g_optimizer, "d_optimizer": d_optimizer}
        self.scheduler_fns = (g_scheduler, d_scheduler)
        self.d_loss_fn, self.g_loss_fn = LOSSES[loss]
        self.twin = aux_weight is not None and getattr(discriminator, "twin", None) is not None
        self.train_stats = BatchMeans(
            STATS
            + (AUX_STATS if aux_weight is not None else ())
            + (TWIN_STATS if self.twin else ())
            + (MS_STATS if mode_seeking is not None else ())
        )

        noise = torch.randn(10 * self.num_classes, self.noise_dim, generator=torch.Generator().manual_seed(sample_seed))
        self.register_buffer("sample_noise", noise)
        self.register_buffer("sample_labels", torch.arange(self.num_classes).repeat_interleave(10))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> CGAN:
        """The trained module of a checkpoint written by train.py, in eval mode, on ``map_location``.

        The file is read once, by ``checkpoint.load`` (clear errors for a missing or unreadable file).
        The module is rebuilt from the hyperparameters LightningCLI saved in it (the networks as
        class_path/init_args) the way ``load_from_checkpoint`` does, then given the weights, EMA
        generator included. Raises ``CheckpointError`` when that cannot be done.
        """
        ckpt = load_checkpoint(path)
        try:
            # "_instantiator" names the function LightningCLI rebuilds modules with: this one
            hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k != "_instantiator"}
            module = instantiate_module(cls, hparams)
        except Exception as err:  # no or broken hyperparameters, a class path that does not import, ...
            raise CheckpointError(
                f"could not rebuild the model from {path} ({reason(err)}). "
                f"Checkpoints written by train.py carry their config; pass one of those."
            ) from err
        module.on_load_checkpoint(ckpt)  # a clear error when the weights do not fit
        module.load_state_dict(ckpt["state_dict"])
        return module.to(map_location).eval()

    @property
    def sampler(self) -> nn.Module:
        """The generator used for pictures and metrics: the EMA copy when there is one."""
        if self.generator_ema is None:
            return self.generator
        if self._ema_stats_stale:
            recompute_batch_norm(self.generator_ema, seed=self.hparams.sample_seed)
            self._ema_stats_stale = False
        return self.generator_ema

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor) -> Tensor:
        """Images ``(B, 1, 28, 28)`` in [-1, 1] from the sampling generator in eval mode."""
        with training_mode(self.sampler, False) as g:
            return g(z, y)

    def configure_optimizers(self):
        opts = []
        for name, net in (("g_optimizer", self.generator), ("d_optimizer", self.discriminator)):
            try:
                opt = self.optimizer_fns[name](net.parameters())
            except ValueError as err:
                raise ConfigError(f"model.{name}: {err}. Use values in range, e.g. a positive lr.") from err
            lr = opt.param_groups[0].get("lr", 1.0)
            if not lr > 0:
                raise ConfigError(f"model.{name}: the learning rate must be positive, got {lr}.")
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])  # as torch's schedulers keep it
            opts.append(opt)
        scheds = [fn(opt) for fn, opt in zip(self.scheduler_fns, opts) if fn is not None]
        return opts, scheds

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        reseed_global_rng(self.seed, self.current_epoch, batch_idx, self.global_rank)
        if self.lr_decay is not None:
            self._decay_learning_rates(batch_idx)

    def _decay_learning_rates(self, batch_idx: int) -> None:
        factor = min(1.0, (1.0 - run_fraction(self.trainer, batch_idx)) / self.lr_decay)
        if self.trainer.world_size > 1:  # the clock differs between processes: rank 0's reading for all
            factor = float(self.trainer.strategy.broadcast(torch.tensor(factor)))
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(x.size(0), self.noise_dim, device=x.device)
        fake = self.generator(z, y)

        # Real and generated images go through D as one batch (same maths, one matmul each); with
        # `mismatch`, some real digits come again under a wrong label, on the generated side.
        x_in, y_in = torch.cat([x, fake.detach()]), torch.cat([y, y])
        if self.mismatch is not None:
            m = max(1, round(self.mismatch * x.size(0)))
            wrong = (y[:m] + torch.randint_like(y[:m], 1, self.num_classes)) % self.num_classes
            x_in, y_in = torch.cat([x_in, x[:m]]), torch.cat([y_in, wrong])
        scores, classes, twin = self._judge(x_in, y_in)
        d_real, d_fake_side = scores.split([x.size(0), x_in.size(0) - x.size(0)])
        d_loss = self.d_loss_fn(d_real, d_fake_side)
        d_fake = d_fake_side[: x.size(0)]  # the generated digits' scores alone, for train/d_fake
        d_total = d_loss
        if classes is not None:  # the class head learns from the real digits only
            d_class = F.cross_entropy(classes[: x.size(0)], y)
            d_total = d_total + d_class
        if twin is not None:  # and the twin head from G's only
            d_twin = F.cross_entropy(twin[x.size(0) : 2 * x.size(0)], y)
            d_total = d_total + d_twin
        penalty = self.r1_penalty(x, y, batch_idx)
        if penalty is not None:
            d_total = d_total + penalty
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_total)
        opt_d.step()

        self.discriminator.requires_grad_(False)
        scores, classes, twin_g = self._judge(fake, y)
        g_loss = g_total = self.g_loss_fn(scores)
        if classes is not None:
            g_class = F.cross_entropy(classes, y)
            g_total = g_total + self.aux_weight * g_class
        if twin_g is not None:
            g_twin = F.cross_entropy(twin_g, y)
            g_total = g_total - self.aux_weight * g_twin
        if self.mode_seeking is not None:
            ms_term = self.mode_seeking_term(z, fake, y)
            g_total = g_total + self.mode_seeking * ms_term
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_total)
        opt_g.step()
        self.discriminator.requires_grad_(True)

        if self.generator_ema is not None:
            self._update_ema()
        with torch.no_grad():
            stats = [d_loss, g_loss, torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean()]
            if classes is not None:
                stats += [d_class, g_class]
            if twin is not None:
                stats += [d_twin, g_twin]
            counts = None
            if self.mode_seeking is not None:  # a batch with no two digits of a label has no term (0): skip it
                stats.append(ms_term)
                counts = torch.ones(len(stats), device=ms_term.device)
                counts[-1] = ms_term > 0
            self.train_stats.update(torch.stack(stats).float(), counts)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self._check_finite(f"batch {batch_idx + 1}")

    @staticmethod
    def mode_seeking_term(z: Tensor, fake: Tensor, y: Tensor) -> Tensor:
        """``1 / (d_img / d_z + 1e-5)`` for G's digits ``fake (B, 1, 28, 28)`` drawn from ``z (B, noise_dim)``
        for labels ``y (B,)``: a scalar, large when different noise gives alike digits.

        ``d_img`` and ``d_z`` are absolute differences over pairs of the same label (with the
        batch sorted by label, each digit and the next one), each averaged within a pair and
        summed over the same pairs, so their ratio is that of the means (Mao et al., 2019's
        mode-seeking term, for one condition at a time). A batch with no two digits of a label
        gives 0, and no gradient.
        """
        order = torch.argsort(y, stable=True)
        a, b = order[:-1], order[1:]
        pair = (y[a] == y[b]).to(fake.dtype)  # (B - 1,): weights, not indices, so no host sync
        d_img = ((fake[a] - fake[b]).abs().flatten(1).mean(1) * pair).sum()
        d_z = ((z[a] - z[b]).abs().mean(1) * pair).sum()  # both summed over the same pairs
        term = 1.0 / (d_img / d_z.clamp_min(1e-12) + 1e-5)
        return torch.where(pair.any(), term, torch.zeros_like(term))

    def _judge(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """D's logits ``(B,)`` for ``(x, y)``, its class logits ``(B, num_classes)`` with
        ``aux_weight`` and its twin head's with a twin head (else None), from one pass."""
        if self.aux_weight is None:
            return self.discriminator(x, y), None, None
        out = self.discriminator(x, y, classes=True)
        return out if self.twin else (*out, None)

    def r1_penalty(self, x: Tensor, y: Tensor, batch_idx: int) -> Tensor | None:
        """D's R1 penalty on real digits ``x (B, 1, 28, 28)``, or None on batches that skip it.

        ``r1_gamma / 2 * mean_i ||grad_x D(x_i, y_i)||^2`` (Mescheder et al., 2018): D's slope
        at the data is pushed to zero, so it stops sharpening its boundary around the real
        digits and G keeps being pulled toward all of them. Computed lazily (Karras et al.,
        2020) on every ``r1_every``-th batch and weighted by ``r1_every``, which keeps its
        average; on those batches it costs a second D pass over the real digits and a double
        backward pass.
        """
        if self.r1_gamma is None or batch_idx % self.r1_every:
            return None
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(x, y).sum(), x, create_graph=True)
        return 0.5 * self.r1_gamma * self.r1_every * grad.square().flatten(1).sum(1).mean()

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema, live = self.generator_ema, self.generator
        decay = self.ema_decay
        if self.ema_warmup:
            batches = self.global_step // 2  # two optimizer steps per batch, this one's included
            decay = min(decay, max(self.ema_floor, (1 + batches) / (batches + self.ema_power + 2)))
        torch._foreach_lerp_(list(ema.parameters()), list(live.parameters()), 1.0 - decay)
        self._ema_stats_stale = True

    def on_train_epoch_end(self) -> None:
        self._check_finite("the end of the epoch")
        means = self.train_stats.compute()
        self.train_stats.reset()
        names = self.train_stats.names
        self.log_dict({f"train/{name}": value for name, value in zip(names, means)})  # synced by compute()
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            sched.step()

    def _check_finite(self, where: str) -> None:
        """Stop with a clear message once a loss of this epoch is NaN or infinite (one host sync)."""
        totals = self.train_stats.total
        if bool(torch.isfinite(totals).all()):
            return
        bad = [  # the losses (D's mean outputs are non-finite only with D's loss)
            name for name, v in zip(self.train_stats.names, totals) if name not in STATS[2:] and not torch.isfinite(v)
        ]
        raise DivergenceError(
            f"{' and '.join(bad)} became non-finite in epoch {self.current_epoch} (detected at {where}, "
            f"global step {self.global_step}). Training stopped; the last saved checkpoint was kept. "
            f"Lower the learning rate or change the config, then resume from that checkpoint or start again."
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for name, t in self.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise DivergenceError(
                    f"weight {name} is non-finite at epoch {self.current_epoch}: refusing to write a checkpoint "
                    f"with broken weights (the previous one is kept). Lower the learning rate or change the config."
                )
        # The epoch's running sums and counts (zero at an epoch's end), one row per rank, by name:
        # a run resumed mid-epoch logs the same per-epoch means as an uninterrupted one.
        sums = self.all_gather(torch.stack([self.train_stats.total, self.train_stats.count]))
        sums = sums.reshape(-1, 2, len(self.train_stats.names)).cpu()
        checkpoint["train_stats"] = {"names": list(self.train_stats.names), "total": sums[:, 0], "count": sums[:, 1]}

    def check_resumable(self, checkpoint: dict) -> None:
        """Raise ``CheckpointError`` unless this module can train on from ``checkpoint``: its weights
        fit (``check_compatible``) and its class head is trained as there (with ``aux_weight`` or not)."""
        check_compatible(self, checkpoint)
        saved = saved_train_stats(checkpoint)
        if saved is not None and ("d_class" in saved[0]) != ("d_class" in self.train_stats.names):
            theirs = checkpoint.get("hyper_parameters", {}).get("aux_weight")
            raise CheckpointError(
                f"the checkpoint was trained with model.aux_weight {show(theirs)} and this run has "
                f"{show(self.aux_weight)}: resume with the run's own value (--model.aux_weight={show(theirs)})."
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_resumable(checkpoint)
        self._ema_stats_stale = True
        saved = saved_train_stats(checkpoint)
        if saved is None:
            return
        names, total, count = saved
        world, rank = (self.trainer.world_size if self._trainer is not None else 1), self.global_rank
        if len(total) != world:  # resumed on another number of processes: rank 0 carries the whole sums
            total, count = (t.sum(0) if rank == 0 else torch.zeros_like(t[0]) for t in (total, count))
        else:
            total, count = total[rank], count[rank]
        self.train_stats.reset()  # zero sums and counts (and no stale compute()): what it did not log starts there
        for i, name in enumerate(self.train_stats.names):
            if name in names:
                j = names.index(name)
                self.train_stats.total[i], self.train_stats.count[i] = total[j], count[j]
