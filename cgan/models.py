"""Generators and discriminators: plain ``nn.Module``s, no Lightning.

Every generator maps ``(z (B, noise_dim), y (B,) int64)`` to images ``(B, 1, 28, 28)`` in
[-1, 1] and exposes ``noise_dim`` and ``num_classes``. Every discriminator maps
``(x (B, 1, 28, 28), y (B,))`` to logits ``(B,)``; the sigmoid lives in the loss. One with a
class head (its ``classifier`` is not None) also takes ``classes=True`` and then returns
``(logits (B,), class_logits (B, num_classes))``, for ``CGAN``'s ``aux_weight``; one with a
twin head too (its ``twin`` is not None) returns ``(logits, class_logits, twin_logits)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from cgan.errors import ConfigError

IMAGE_SIZE = 28 * 28


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU keep-mask is cut from random 32-bit integers. ``(*) -> (*)``.

    A unit is kept when its integer ``r`` (uniform over the int32 range) is at least
    ``round(p * 2**32) - 2**31``, i.e. with probability ``1 - p`` to within ``2**-32``, and
    kept units are scaled by ``1 / (1 - p)``: PyTorch's dropout. The CPU generator is the
    cost (dropout was an eighth of the seed model's step): one 64-bit draw gives two units,
    where ``bernoulli_`` spends one draw on each and ``uniform_`` twice the time. Other
    devices use ``F.dropout``, whose fused kernel is faster there.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None).view(torch.int32)[:n]
        keep = bits.view(x.shape) >= round(self.p * 2**32) - 2**31
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class Generator(nn.Module):
    """The seed's generator: an MLP on noise concatenated with the one-hot label.

    ``Linear(noise_dim + num_classes, hidden_dim) - LeakyReLU(0.2) - Linear(hidden_dim, 784) - Tanh``
    """

    def __init__(self, noise_dim: int = 128, hidden_dim: int = 512, num_classes: int = 10) -> None:
        super().__init__()
        if noise_dim <= 0 or hidden_dim <= 0:
            raise ConfigError(
                f"Generator: noise_dim and hidden_dim must be positive, got {noise_dim} and {hidden_dim}."
            )
        self.noise_dim, self.num_classes = noise_dim, num_classes
        self.model = nn.Sequential(
            nn.Linear(noise_dim + num_classes, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden_dim, IMAGE_SIZE),
            nn.Tanh(),
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        return self.model(h).view(-1, 1, 28, 28)


class Discriminator(nn.Module):
    """The seed's discriminator: an MLP on the flattened image concatenated with the one-hot label.

    ``Linear(784 + num_classes, hidden_dim) - LeakyReLU(0.2) - Dropout(dropout) - Linear(hidden_dim, 1)``
    """

    def __init__(self, hidden_dim: int = 512, dropout: float = 0.3, num_classes: int = 10) -> None:
        super().__init__()
        if hidden_dim <= 0 or not 0 <= dropout < 1:
            raise ConfigError(
                f"Discriminator: hidden_dim must be positive and dropout in [0, 1), got {hidden_dim} and {dropout}."
            )
        self.num_classes = num_classes
        self.model = nn.Sequential(
            nn.Linear(IMAGE_SIZE + num_classes, hidden_dim),
            nn.LeakyReLU(0.2, inplace=True),
            Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), F.one_hot(y, self.num_classes).to(x.dtype)], dim=1)
        return self.model(h).squeeze(1)


@contextmanager
def training_mode(module: nn.Module, mode: bool) -> Iterator[nn.Module]:
    """Put ``module`` in train (``mode=True``) or eval mode for a block, then restore its mode."""
    was_training = module.training
    module.train(mode)
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def recompute_batch_norm(generator: nn.Module, batches: int = 20, batch_size: int = 100, seed: int = 0) -> None:
    """Set the running statistics of ``generator``'s batch norms to their average over fresh samples.

    An EMA copy of G has weights no single training step had, so the statistics copied from
    the live G do not fit it (its eval-mode digits came out grey and smeared). This runs
    ``batches`` forward passes of ``batch_size`` samples, every class equally often, from a
    noise generator seeded with ``seed``: the result depends only on the weights, and the
    global RNG is left alone. A generator without batch norm is left untouched.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes below
    y = torch.arange(batch_size, device=device) % generator.num_classes
    with training_mode(generator, True):
        for _ in range(batches):
            generator(torch.randn(batch_size, generator.noise_dim, generator=rng).to(device), y)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are looked up per class: ``(B, C, H, W), (B,) -> (B, C, H, W)``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class ConvGenerator(nn.Module):
    """A DCGAN-style conditional generator.

    The label enters twice: a learned embedding concatenated to ``z``, and class-conditional
    batch norm after the projection and each upsampling. Shapes: ``z -> (2C, 7, 7) -> (C, 14, 14)
    -> (C/2, 28, 28) -> (1, 28, 28)`` with transposed convolutions.
    """

    def __init__(self, noise_dim: int = 128, channels: int = 64, embed_dim: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        if noise_dim <= 0 or channels < 2:
            raise ConfigError(
                f"ConvGenerator: noise_dim must be positive and channels >= 2, got {noise_dim}, {channels}."
            )
        self.noise_dim, self.num_classes, self.channels = noise_dim, num_classes, channels
        c = channels
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Linear(noise_dim + embed_dim, 2 * c * 7 * 7)
        self.bn0 = ConditionalBatchNorm2d(2 * c, num_classes)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
        self.bn1 = ConditionalBatchNorm2d(c, num_classes)
        self.up2 = nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1)
        self.bn2 = ConditionalBatchNorm2d(c // 2, num_classes)
        self.out = nn.Conv2d(c // 2, 1, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1)).view(-1, 2 * self.channels, 7, 7)
        # Channels-last feature maps make the transposed convolutions ~1.5x faster on a CPU.
        h = F.relu(self.bn0(h.contiguous(memory_format=torch.channels_last), y))
        h = F.relu(self.bn1(self.up1(h), y))
        h = F.relu(self.bn2(self.up2(h), y))
        return torch.tanh(self.out(h))


class ConvDiscriminator(nn.Module):
    """A projection discriminator (Miyato & Koyama, 2018).

    ``logit = w . h(x) + embed(y) . h(x)`` where ``h(x)`` is the flattened conv feature map:
    ``(1, 28, 28) -> (C, 14, 14) -> (2C, 7, 7) -> (4C, 7, 7) -> (4C * 49,)``. Keeping the
    positions matters at this size: pooled over space, the features only said which strokes
    occur, not where, and G never learned whole digits.

    Args:
        channels: ``C`` above.
        num_classes: number of labels.
        spectral: spectral normalization on every layer (Miyato et al., 2018), one way to keep
            D's slopes bounded. Without it, bound them otherwise (``CGAN``'s ``r1_gamma``); the
            class embedding then starts at scale ``1 / sqrt(4C * 49)`` instead of
            ``nn.Embedding``'s 1, which keeps the projection term of the first logits
            ``sqrt(4C * 49)`` (about 80) times smaller.
        classifier: a second head on the same features, ``Linear(4C * 49, num_classes)``,
            that names the digit of an image without being told its label (the auxiliary
            classifier of Odena et al., 2017); ``forward(x, y, classes=True)`` returns its logits too.
            ``CGAN`` trains it only with ``aux_weight``; otherwise it is built and left alone.
        twin: a third head like the class head, which ``CGAN`` trains to name the digits of G
            rather than of real images (the twin classifier of Gong et al., 2019); needs
            ``classifier``. ``forward(x, y, classes=True)`` then returns its logits last.
    """

    def __init__(
        self,
        channels: int = 32,
        num_classes: int = 10,
        spectral: bool = True,
        classifier: bool = False,
        twin: bool = False,
    ) -> None:
        super().__init__()
        if channels <= 0:
            raise ConfigError(f"ConvDiscriminator: channels must be positive, got {channels}.")
        if twin and not classifier:
            raise ConfigError("ConvDiscriminator: twin: true needs the class head too: set classifier: true.")
        self.num_classes = num_classes
        c = channels
        sn = spectral_norm if spectral else (lambda m: m)
        self.features = nn.Sequential(
            sn(nn.Conv2d(1, c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.1, inplace=True),
            sn(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.1, inplace=True),
            sn(nn.Conv2d(2 * c, 4 * c, 3, padding=1)),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Flatten(),
        )
        self.linear = sn(nn.Linear(4 * c * 7 * 7, 1))
        self.embed = sn(nn.Embedding(num_classes, 4 * c * 7 * 7))
        if not spectral:
            nn.init.normal_(self.embed.weight, std=(4 * c * 7 * 7) ** -0.5)
        self.classifier = sn(nn.Linear(4 * c * 7 * 7, num_classes)) if classifier else None
        self.twin = sn(nn.Linear(4 * c * 7 * 7, num_classes)) if twin else None

    def forward(self, x: Tensor, y: Tensor, classes: bool = False) -> Tensor | tuple[Tensor, ...]:
        h = self.features(x)
        logits = self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
        if not classes:
            return logits
        if self.classifier is None:
            raise ConfigError("ConvDiscriminator: classes=True needs the class head: build it with classifier: true.")
        if self.twin is None:
            return logits, self.classifier(h)
        return logits, self.classifier(h), self.twin(h)
