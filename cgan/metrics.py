"""torchmetrics metrics of training and of generated digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from cgan.data import scale
from cgan.models import training_mode


class BatchMeans(Metric):
    """Per-epoch means of a few scalars, one ``update`` per batch with all of them at once.

    ``update(values (K,), counts (K,) | None)``; ``compute() -> (K,)`` averaged over batches
    and, under DDP, ranks. One state vector instead of K ``MeanMetric``s keeps the training
    step's overhead small. Each scalar keeps its own count, so one that a batch has no value for
    (count 0) or whose running sum had to start over (a resume from a checkpoint that did not
    log it) is averaged over the batches it has values from.
    """

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.add_state("total", torch.zeros(len(self.names)), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(len(self.names)), dist_reduce_fx="sum")

    def update(self, values: Tensor, counts: Tensor | None = None) -> None:
        """Add a batch's ``values``; where ``counts`` is 0, that scalar skips this batch (default: all count)."""
        self.total += values if counts is None else values * counts
        self.count += 1 if counts is None else counts

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


class PrecisionRecall(Metric):
    """Precision and recall of generated samples (Kynkäänniemi et al., 2019), in a feature space.

    Each set's manifold is the union of balls around its points, each ball reaching the
    point's ``k``-th nearest neighbour within the same set. Precision: the fraction of
    generated points inside the real manifold (are the samples realistic?). Recall: the
    fraction of real points inside the generated manifold (are all real styles drawn?). FID
    mixes the two; a sharp but collapsed generator has high precision and low recall.

    ``update(features (B, F), real)``; ``compute() -> (precision, recall)``, scalars in [0, 1].
    The features are cat states, so under DDP every rank's points count. Real features are
    kept across ``reset`` (as FID's ``reset_real_features=False``): set them once. So are their
    radii, computed at the first ``compute`` after real features were added, so each later
    evaluation pays only for the generated points.

    Args:
        k: the neighbour that sets each ball's radius (the paper's default, 3).
        chunk: rows of the distance matrix computed at a time (memory: ``chunk x N`` floats).
        kwargs: torchmetrics' ``Metric`` options (``dist_sync_fn``, ...).
    """

    full_state_update = False

    def __init__(self, k: int = 3, chunk: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k, self.chunk = k, chunk
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self._real_radii: Tensor | None = None  # of the real features as last computed

    def update(self, features: Tensor, real: bool) -> None:
        if real:
            self._real_radii = None
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if min(len(real), len(fake)) <= self.k:
            raise ValueError(f"precision and recall need more than k={self.k} real and generated points")
        if self._real_radii is None:
            self._real_radii = self._radii(real)
        real_radii, fake_radii = self._real_radii.to(real.device), self._radii(fake)
        # one pass over the generated-to-real distances serves both
        inside_real, covered = [], torch.zeros(len(real), dtype=torch.bool, device=real.device)
        for rows, radii in zip(fake.split(self.chunk), fake_radii.split(self.chunk)):
            distances = torch.cdist(rows, real)  # (chunk, N real)
            inside_real.append((distances <= real_radii).any(dim=1))  # in some real point's ball
            covered |= (distances <= radii[:, None]).any(dim=0)  # in some of these generated balls
        return torch.cat(inside_real).float().mean(), covered.float().mean()

    def _radii(self, points: Tensor) -> Tensor:
        """``(N,)``: each point's distance to its k-th nearest other point of the set."""
        # the k+1 smallest distances of each row include the point itself (distance 0)
        nearest = [
            torch.cdist(rows, points).topk(self.k + 1, largest=False).values for rows in points.split(self.chunk)
        ]
        return torch.cat(nearest)[:, -1]

    def reset(self) -> None:
        """Forget the generated points; the real ones stay."""
        real = list(self.real_features)  # reset clears the list in place
        super().reset()
        self.real_features = real


class DigitQuality(nn.Module):
    """FID, intra-class FID and conditional accuracy of digits, judged by the MNIST classifier.

    ``update(images (B, 1, 28, 28) in [-1, 1], labels (B,), real)``: real images set the
    reference statistics (kept across ``reset``), generated ones are scored against them.
    ``compute()`` returns ``fid``, ``fid_intra`` (mean of the 10 per-class FIDs), ``acc``
    (classifier agrees with the conditioning label), ``precision`` and ``recall`` (see
    ``PrecisionRecall``), ``fid_class`` and ``acc_class`` (10,).
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
        self.precision_recall = PrecisionRecall()
        self.acc_class = MulticlassAccuracy(num_classes, average=None)

    @torch.no_grad()
    def update(self, images: Tensor, labels: Tensor, real: bool) -> None:
        feats = self.classifier.features(images)
        self.fid.update(feats, real=real)
        self.precision_recall.update(feats, real=real)
        for c, fid in enumerate(self.fid_class):
            fid.update(feats[labels == c], real=real)
        if not real:
            logits = self.classifier.head(feats)
            self.acc.update(logits, labels)
            self.acc_class.update(logits, labels)

    def compute(self) -> dict[str, Tensor]:
        fid_class = torch.stack([fid.compute() for fid in self.fid_class]).float()
        precision, recall = self.precision_recall.compute()
        return {
            "fid": self.fid.compute().float(),
            "fid_intra": fid_class.mean(),
            "acc": self.acc.compute(),
            "precision": precision,
            "recall": recall,
            "fid_class": fid_class,
            "acc_class": self.acc_class.compute(),
        }

    def reset(self) -> None:
        """Forget the generated digits; the real statistics stay."""
        for metric in (self.fid, *self.fid_class, self.acc, self.acc_class, self.precision_recall):
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
