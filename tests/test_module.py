"""Losses on known logits, and the module's EMA and sampling."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch

from cgan.losses import bce_d_loss, bce_g_loss, hinge_d_loss, hinge_g_loss
from cgan.models import ConvDiscriminator, ConvGenerator, Discriminator, Generator
from cgan.module import CGAN


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


def test_ema_moves_toward_g_by_the_configured_decay():
    torch.manual_seed(0)
    module = make(ema_decay=0.9)
    before = [p.clone() for p in module.generator_ema.parameters()]
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    module._update_ema()
    for old, ema, live in zip(before, module.generator_ema.parameters(), module.generator.parameters(), strict=True):
        assert torch.allclose(ema, 0.9 * old + 0.1 * live)
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
