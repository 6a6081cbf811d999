"""torchmetrics metrics of training and of generated digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance

from cgan.data import scale
from cgan.models import training_mode


class BatchMeans(Metric):
    """Per-epoch means of a few scalars, one ``update`` per batch with all of them at once.

    ``update(values (K,))``; ``compute() -> (K,)`` averaged over batches and, under DDP, ranks.
    One state vector instead of K ``MeanMetric``s keeps the training step's overhead small.
    """

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.add_state("total", torch.zeros(len(self.names)), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.total += values
        self.count += 1

    def compute(self) -> Tensor:
        return self.total / self.count.clamp(min=1)


class FeatureInput(nn.Module):
    """The identity, as torchmetrics' FID "feature extractor": ``update`` receives features
    the classifier already computed (torchmetrics >= 1.4 passes custom-model inputs unchanged),
    so one classifier pass serves FID, intra-class FID and accuracy. ``(B, F) -> (B, F)``."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class DigitQuality(nn.Module):
    """FID, intra-class FID and conditional accuracy of digits, judged by the MNIST classifier.

    ``update(images (B, 1, 28, 28) in [-1, 1], labels (B,), real)``: real images set the
    reference statistics (kept across ``reset``), generated ones are scored against them.
    ``compute()`` returns ``fid``, ``fid_intra`` (mean of the 10 per-class FIDs), ``acc``
    (classifier agrees with the conditioning label), ``fid_class`` and ``acc_class`` (10,).
    All states are torchmetrics states, so under DDP every rank's samples count.
    """

    def __init__(self, classifier: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        features = FeatureInput(classifier.num_features)
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
        self.fid_class = nn.ModuleList(
            FrechetInceptionDistance(feature=features, reset_real_features=False) for _ in range(num_classes)
        )
        self.acc = MulticlassAccuracy(num_classes, average="micro")
        self.acc_class = MulticlassAccuracy(num_classes, average=None)

    @torch.no_grad()
    def update(self, images: Tensor, labels: Tensor, real: bool) -> None:
        feats = self.classifier.features(images)
        self.fid.update(feats, real=real)
        for c, fid in enumerate(self.fid_class):
            fid.update(feats[labels == c], real=real)
        if not real:
            logits = self.classifier.head(feats)
            self.acc.update(logits, labels)
            self.acc_class.update(logits, labels)

    def compute(self) -> dict[str, Tensor]:
        fid_class = torch.stack([fid.compute() for fid in self.fid_class]).float()
        return {
            "fid": self.fid.compute().float(),
            "fid_intra": fid_class.mean(),
            "acc": self.acc.compute(),
            "fid_class": fid_class,
            "acc_class": self.acc_class.compute(),
        }

    def reset(self) -> None:
        """Forget the generated digits; the real statistics stay."""
        for metric in (self.fid, *self.fid_class, self.acc, self.acc_class):
            metric.reset()

    def score(self, batches) -> dict[str, Tensor]:
        """Scores of the ``(images, labels)`` batches against the real statistics, then ``reset``."""
        for images, labels in batches:
            self.update(images.float(), labels, real=False)
        scores = self.compute()
        self.reset()
        return scores


def scaled_batches(images: Tensor, labels: Tensor, batch_size: int = 1000, device=None):
    """Yield ``(images (B, 1, 28, 28) in [-1, 1], labels)`` from uint8 images ``(N, 28, 28)``."""
    for i in range(0, len(images), batch_size):
        yield scale(images[i : i + batch_size]).to(device), labels[i : i + batch_size].to(device)


@torch.no_grad()
def generate_per_class(
    generator: nn.Module, per_class: int, seed: int, batch_size: int = 1000, rank: int = 0, world_size: int = 1
):
    """Yield ``(images, labels)`` batches: ``per_class`` digits of every class from fixed noise.

    The noise comes from its own generator seeded with ``seed``, so evaluations compare across
    epochs and runs and leave the training RNG alone. Under DDP each rank takes every
    ``world_size``-th sample.
    """
    device = next(generator.parameters()).device
    labels = torch.arange(generator.num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), generator.noise_dim, generator=torch.Generator().manual_seed(seed))
    labels, noise = labels[rank::world_size], noise[rank::world_size]
    with training_mode(generator, False):
        for i in range(0, len(labels), batch_size):
            y = labels[i : i + batch_size].to(device)
            yield generator(noise[i : i + batch_size].to(device), y), y
