"""torchmetrics metrics of training and of generated digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


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
