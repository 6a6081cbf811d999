"""GAN losses on discriminator logits.

``d_loss(real_logits, fake_logits)`` is minimised by D, ``g_loss(fake_logits)`` by G.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bce_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """The seed's D loss: ``BCE(sigmoid(real), 1) + BCE(sigmoid(fake), 0)``, computed on logits."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def bce_g_loss(fake: Tensor) -> Tensor:
    """The seed's non-saturating G loss: ``BCE(sigmoid(D(G(z))), 1)``."""
    return F.softplus(-fake).mean()


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge loss for D: ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g_loss(fake: Tensor) -> Tensor:
    """Hinge loss for G: ``-mean(fake)``."""
    return -fake.mean()


LOSSES = {"bce": (bce_d_loss, bce_g_loss), "hinge": (hinge_d_loss, hinge_g_loss)}
