"""Losses on known logits, and the module's EMA and sampling."""

from __future__ import annotations

import copy
import math
import re
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import Timer

from cgan.errors import CheckpointError, ConfigError, DivergenceError
from cgan.losses import bce_d_loss, bce_g_loss, hinge_d_loss, hinge_g_loss
from cgan.metrics import BatchMeans
from cgan.models import ConvDiscriminator, ConvGenerator, Discriminator, Generator
from cgan.module import CGAN, STATS, run_fraction


def test_bce_losses_match_the_seeds_bce_on_sigmoid():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce = torch.nn.BCELoss()
    expected_d = bce(torch.sigmoid(real), torch.ones(2)) + bce(torch.sigmoid(fake), torch.zeros(2))
    assert torch.allclose(bce_d_loss(real, fake), expected_d)
    assert torch.allclose(bce_g_loss(fake), bce(torch.sigmoid(fake), torch.ones(2)))
    assert math.isclose(bce_g_loss(torch.zeros(3)).item(), math.log(2), rel_tol=1e-6)


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2] -> 1
    assert math.isclose(hinge_d_loss(real, fake).item(), 2.5 / 3 + 1.0, rel_tol=1e-6)
    assert math.isclose(hinge_g_loss(fake).item(), 1 / 3, rel_tol=1e-6)


def make(ema_decay=None, g=None, d=None) -> CGAN:
    adam = partial(torch.optim.Adam, lr=1e-3)
    return CGAN(g or Generator(), d or Discriminator(), adam, adam, ema_decay=ema_decay)


@pytest.mark.parametrize(
    ("warmup", "power", "floor", "batches", "decay"),
    [
        (False, 8.0, 0.0, 1, 0.999),
        (True, 8.0, 0.0, 1, 2 / 11),
        (True, 8.0, 0.0, 990, 0.991),
        (True, 8.0, 0.0, 20000, 0.999),
        (True, 16.0, 0.0, 1, 2 / 19),
        (True, 16.0, 0.0, 990, 991 / 1008),
        (True, 16.0, 0.0, 20000, 0.999),
        (False, 16.0, 0.0, 1, 0.999),
        (True, 16.0, 0.993, 1, 0.993),  # the floor holds the decay up early on
        (True, 16.0, 0.993, 2410, 0.993),  # until the power's decay passes it, after batch 2,410
        (True, 16.0, 0.993, 2411, 2412 / 2429),
        (True, 16.0, 0.993, 20000, 0.999),
        (False, 16.0, 0.993, 1, 0.999),
        (True, 16.0, 0.9995, 1, 0.999),  # a floor above ema_decay: a plain EMA
    ],
)
def test_ema_moves_toward_g_by_the_configured_decay_or_its_warm_up(warmup, power, floor, batches, decay, monkeypatch):
    torch.manual_seed(0)
    adam = partial(torch.optim.Adam, lr=1e-3)
    settings = {"ema_decay": 0.999, "ema_warmup": warmup, "ema_power": power, "ema_floor": floor}
    # in float64, so that a decay off by one batch (1e-6 near batch 2,410) shows
    module = CGAN(Generator(), Discriminator(), adam, adam, **settings).double()
    monkeypatch.setattr(CGAN, "global_step", property(lambda self: 2 * batches))  # two optimizer steps a batch
    before = [p.clone() for p in module.generator_ema.parameters()]
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    module._update_ema()
    for old, ema, live in zip(before, module.generator_ema.parameters(), module.generator.parameters(), strict=True):
        assert torch.allclose(ema, decay * old + (1 - decay) * live, rtol=0, atol=1e-12)
    assert module.sampler is module.generator_ema
    assert not any(p.requires_grad for p in module.generator_ema.parameters())


def test_ema_weights_are_part_of_the_checkpoint_state():
    module = make(ema_decay=0.99)
    keys = module.state_dict().keys()
    assert any(k.startswith("generator_ema.") for k in keys)
    assert {"sample_noise", "sample_labels"} <= set(keys)
    assert module.sample_noise.shape == (100, 128)
    assert torch.equal(module.sample_labels, torch.arange(10).repeat_interleave(10))


def test_ema_batch_norm_statistics_are_recomputed_for_the_ema_weights_once_per_update():
    from cgan.models import recompute_batch_norm

    torch.manual_seed(0)
    module = make(ema_decay=0.5, g=ConvGenerator(channels=8), d=ConvDiscriminator(channels=4))
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    module._update_ema()
    expected = copy.deepcopy(module.generator_ema)
    recompute_batch_norm(expected, seed=module.hparams.sample_seed)
    sampler = module.sampler
    for (name, b), ref in zip(sampler.named_buffers(), expected.buffers(), strict=True):
        assert torch.equal(b, ref), name
    live = dict(module.generator.named_buffers())
    assert not torch.equal(sampler.bn1.bn.running_mean, live["bn1.bn.running_mean"])
    sampler.bn1.bn.running_mean.fill_(3.0)  # not recomputed again until the next update
    assert torch.equal(module.sampler.bn1.bn.running_mean, torch.full((8,), 3.0))
    module._update_ema()
    assert not torch.equal(module.sampler.bn1.bn.running_mean, torch.full((8,), 3.0))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_ema_decay_out_of_range_is_refused(decay):
    from cgan.errors import ConfigError

    with pytest.raises(ConfigError, match=f"model.ema_decay must be in \\(0, 1\\) or null, got {decay}"):
        make(ema_decay=decay)


@pytest.mark.parametrize("was_training", [True, False])
def test_sample_uses_eval_mode_and_restores_the_mode(was_training):
    module = make(g=ConvGenerator(channels=8), d=ConvDiscriminator(channels=4))
    module.train(was_training)
    z, y = module.sample_noise[:20], module.sample_labels[:20]
    images = module.sample(z, y)
    assert images.shape == (20, 1, 28, 28)
    assert module.generator.training == was_training
    # eval-mode batch norm: each digit depends on its own noise only, not on the rest of the batch
    assert torch.allclose(module.sample(z[:5], y[:5]), images[:5], atol=1e-6)
    with torch.no_grad():  # in train mode it would depend on the batch
        assert not torch.allclose(module.generator.train()(z[:5], y[:5]), module.generator(z, y)[:5], atol=1e-3)


class FakeTimer(Timer):
    def __init__(self, elapsed: float, remaining: float | None) -> None:
        super().__init__()
        self.elapsed, self.remaining = elapsed, remaining

    def time_elapsed(self, stage="train") -> float:
        return self.elapsed

    def time_remaining(self, stage="train") -> float | None:
        return self.remaining


def fake_trainer(max_epochs=-1, max_steps=-1, global_step=0, current_epoch=0, timer=None):
    return SimpleNamespace(
        max_epochs=max_epochs,
        max_steps=max_steps,
        global_step=global_step,
        current_epoch=current_epoch,
        num_training_batches=10,
        callbacks=[timer] if timer else [],
    )


def test_run_fraction_is_the_largest_share_of_any_limit_used():
    assert run_fraction(fake_trainer(max_epochs=4, current_epoch=1), batch_idx=5) == 1.5 / 4
    assert run_fraction(fake_trainer(max_epochs=4, max_steps=100, global_step=50), batch_idx=0) == 0.5
    assert run_fraction(fake_trainer(timer=FakeTimer(elapsed=30.0, remaining=90.0)), batch_idx=0) == 0.25
    assert run_fraction(fake_trainer(max_epochs=100, timer=FakeTimer(30.0, None)), batch_idx=0) == 0.0
    assert run_fraction(fake_trainer(timer=FakeTimer(elapsed=130.0, remaining=-10.0)), batch_idx=0) == 1.0


@pytest.mark.parametrize("decay", [0.0, 1.5, -0.2])
def test_lr_decay_out_of_range_is_refused(decay):
    with pytest.raises(ConfigError, match=rf"model.lr_decay must be in \(0, 1\] or null, got {decay}"):
        CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam, lr_decay=decay)


class LinearD(torch.nn.Module):
    """``logit = w . x + b[y]``: its slope in ``x`` is ``w`` everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(1, 28, 28))
        self.b = torch.nn.Parameter(torch.randn(10))

    def forward(self, x, y):
        return (x * self.w).flatten(1).sum(1) + self.b[y]


def test_r1_penalty_is_half_gamma_times_the_squared_slope_at_the_real_digits_every_nth_batch():
    torch.manual_seed(0)
    adam = partial(torch.optim.Adam, lr=1e-3)
    d = LinearD()
    module = CGAN(Generator(), d, adam, adam, r1_gamma=0.5, r1_every=3)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    slope = d.w.detach().square().sum()
    for batch_idx in (0, 3, 6):  # weighted by r1_every on the batches that compute it
        assert torch.allclose(module.r1_penalty(x, y, batch_idx), 0.5 / 2 * 3 * slope)
    assert [module.r1_penalty(x, y, i) for i in (1, 2, 4)] == [None, None, None]
    module.r1_penalty(x, y, 0).backward()  # differentiable in D's weights: d/dw = gamma/2 * 3 * 2w
    assert torch.allclose(d.w.grad, 0.5 / 2 * 3 * 2 * d.w.detach())
    assert not x.requires_grad  # the batch itself is left alone
    off = CGAN(Generator(), Discriminator(), adam, adam)
    assert off.r1_penalty(x, y, 0) is None


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"r1_gamma": 0.0}, "model.r1_gamma must be positive or null, got 0.0"),
        ({"r1_gamma": -1.0}, "model.r1_gamma must be positive or null, got -1.0"),
        ({"r1_gamma": 1.0, "r1_every": 0}, r"model.r1_every must be 1 or more \(batches\), got 0"),
        ({"mismatch": 0.0}, r"model.mismatch must be in \(0, 1\] or null, got 0.0"),
        ({"mismatch": 1.5}, r"model.mismatch must be in \(0, 1\] or null, got 1.5"),
        ({"aux_weight": 0.0}, "model.aux_weight must be positive or null, got 0.0"),
        ({"aux_weight": -0.5}, "model.aux_weight must be positive or null, got -0.5"),
        ({"mode_seeking": 0.0}, "model.mode_seeking must be positive or null, got 0.0"),
        ({"mode_seeking": -0.1}, "model.mode_seeking must be positive or null, got -0.1"),
        ({"ema_power": 0.0}, "model.ema_power must be positive and finite, got 0.0"),
        ({"ema_power": -1.0}, "model.ema_power must be positive and finite, got -1.0"),
        ({"ema_power": float("inf")}, "model.ema_power must be positive and finite, got inf"),
        ({"ema_floor": -0.1}, r"model.ema_floor must be in \[0, 1\), got -0.1"),
        ({"ema_floor": 1.0}, r"model.ema_floor must be in \[0, 1\), got 1.0"),
    ],
)
def test_loss_term_settings_out_of_range_are_refused(kwargs, text):
    with pytest.raises(ConfigError, match=text):
        CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam, **kwargs)


def test_aux_weight_without_a_class_head_is_refused_with_the_fix():
    text = (
        "model.aux_weight needs a discriminator with a class head; ConvDiscriminator has none. "
        "Use cgan.models.ConvDiscriminator with classifier: true, or set model.aux_weight: null."
    )
    with pytest.raises(ConfigError, match=re.escape(text)):
        CGAN(ConvGenerator(), ConvDiscriminator(), torch.optim.Adam, torch.optim.Adam, aux_weight=0.5)
    with pytest.raises(ConfigError, match="Discriminator has none"):
        CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam, aux_weight=0.5)
    module = CGAN(
        ConvGenerator(), ConvDiscriminator(classifier=True), torch.optim.Adam, torch.optim.Adam, aux_weight=0.5
    )
    assert module.train_stats.names == ("d_loss", "g_loss", "d_real", "d_fake", "d_class", "g_class")


def test_a_twin_heads_loss_is_logged_with_aux_weight_only():
    twin = ConvDiscriminator(classifier=True, twin=True)
    module = CGAN(ConvGenerator(), twin, torch.optim.Adam, torch.optim.Adam, aux_weight=0.5)
    assert module.train_stats.names == (*STATS, "d_class", "g_class", "d_twin", "g_twin")
    assert CGAN(ConvGenerator(), twin, torch.optim.Adam, torch.optim.Adam).train_stats.names == STATS
    seeking = CGAN(ConvGenerator(), twin, torch.optim.Adam, torch.optim.Adam, aux_weight=0.5, mode_seeking=0.1)
    assert seeking.train_stats.names == module.train_stats.names + ("mode_seeking",)  # last, after the heads'


def test_batch_means_leave_a_scalar_out_of_the_batches_it_has_no_value_from():
    means = BatchMeans(("a", "b"))
    means.update(torch.tensor([1.0, 4.0]))
    means.update(torch.tensor([3.0, 0.0]), counts=torch.tensor([1.0, 0.0]))
    assert means.compute().tolist() == [2.0, 4.0]
    assert means.count.tolist() == [2.0, 1.0]


def test_a_checkpoint_from_before_the_stats_had_names_resumes_its_sums_by_position():
    twin = ConvDiscriminator(classifier=True, twin=True)
    module = CGAN(ConvGenerator(), twin, torch.optim.Adam, torch.optim.Adam, aux_weight=0.5, mode_seeking=0.1)
    # the older layout: one row per process, the seven losses' sums then one count shared by all
    old = {"state_dict": module.state_dict(), "train_stats": torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 3]])}
    module.on_load_checkpoint(old)
    assert module.train_stats.total.tolist() == [1, 2, 3, 4, 5, 6, 7, 0, 0]
    assert module.train_stats.count.tolist() == [3] * 7 + [0, 0]  # it did not log G's twin term or mode seeking
    module.train_stats.update(torch.full((9,), 9.0))
    means = module.train_stats.compute().tolist()
    assert means[:7] == pytest.approx([(v + 9) / 4 for v in range(1, 8)]) and means[7:] == [9, 9]  # its own batch
    headless = CGAN(ConvGenerator(), twin, torch.optim.Adam, torch.optim.Adam)
    with pytest.raises(CheckpointError, match=r"^the checkpoint was trained with model.aux_weight null and this run"):
        module.on_load_checkpoint({"state_dict": module.state_dict(), "train_stats": torch.zeros(1, 5)})
    headless.on_load_checkpoint({"state_dict": headless.state_dict(), "train_stats": torch.tensor([[1.0, 2, 3, 4, 2]])})
    assert headless.train_stats.compute().tolist() == [0.5, 1, 1.5, 2]
    # saved by two processes, resumed in one: it carries both rows' sums (not the means computed above)
    two = {"names": list(STATS), "total": torch.tensor([[1.0, 2, 3, 4], [3, 2, 1, 0]]), "count": torch.ones(2, 4)}
    headless.on_load_checkpoint({"state_dict": headless.state_dict(), "train_stats": two})
    assert headless.train_stats.compute().tolist() == [2, 2, 2, 2]


def test_a_non_finite_class_loss_stops_training_by_its_name():
    module = CGAN(
        ConvGenerator(), ConvDiscriminator(classifier=True), torch.optim.Adam, torch.optim.Adam, aux_weight=0.5
    )
    module.train_stats.update(torch.tensor([0.5, 0.5, 0.5, 0.5, 2.0, 2.0]))
    module._check_finite("batch 1")  # all finite: nothing happens
    module.train_stats.update(torch.tensor([0.5, 0.5, 0.5, 0.5, 2.0, float("inf")]))
    with pytest.raises(DivergenceError, match=r"^g_class became non-finite in epoch 0 \(detected at batch 2,"):
        module._check_finite("batch 2")


def test_lr_decay_and_a_scheduler_together_are_refused():
    with pytest.raises(ConfigError, match="model.lr_decay and an LR scheduler both set the learning rates"):
        CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam, g_scheduler=object(), lr_decay=0.5)


def test_under_ddp_every_process_takes_rank_0s_lr_factor():
    adam = partial(torch.optim.Adam, lr=1e-3)
    module = CGAN(Generator(), Discriminator(), adam, adam, lr_decay=1.0)
    opt_g, opt_d = module.configure_optimizers()[0]
    # this process's clock says a quarter of the run is done; rank 0's said 0.3 (a factor of 0.7)
    trainer = fake_trainer(timer=FakeTimer(elapsed=25.0, remaining=75.0))
    trainer.world_size, trainer.optimizers = 2, [opt_g, opt_d]
    trainer.strategy = SimpleNamespace(broadcast=lambda value: torch.tensor(0.7))
    module._trainer = trainer
    module._decay_learning_rates(batch_idx=0)
    assert [opt.param_groups[0]["lr"] for opt in (opt_g, opt_d)] == pytest.approx([0.0007, 0.0007])
    trainer.world_size = 1
    module._decay_learning_rates(batch_idx=0)
    assert [opt.param_groups[0]["lr"] for opt in (opt_g, opt_d)] == pytest.approx([0.00075, 0.00075])


def test_the_mode_seeking_term_compares_digits_of_the_same_label_only():
    y = torch.tensor([1, 0, 1, 0, 2])  # pairs (1, 3) and (0, 2); digit 4 has no partner
    fake = torch.tensor([0.1, 0.5, 0.4, 0.9, -1.0])[:, None, None, None].expand(5, 1, 28, 28)
    z = torch.tensor([0.0, 1.0, 2.0, 0.0, 9.0])[:, None].expand(5, 8)
    ratio = ((0.9 - 0.5) + (0.4 - 0.1)) / 2 / ((1.0 + 2.0) / 2)
    assert CGAN.mode_seeking_term(z, fake, y).item() == pytest.approx(1 / (ratio + 1e-5))
    alike = fake.clone()
    alike[2] = alike[0]  # label 1 collapsed to one digit: the term grows
    assert CGAN.mode_seeking_term(z, alike, y) > CGAN.mode_seeking_term(z, fake, y)
    for labels in (torch.arange(5), torch.zeros(1, dtype=torch.long)):  # no pairs: no term, no slope
        drawn = fake[: len(labels)].clone().requires_grad_(True)
        term = CGAN.mode_seeking_term(z[: len(labels)], drawn, labels)
        (grad,) = torch.autograd.grad(term, drawn)
        assert term.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
