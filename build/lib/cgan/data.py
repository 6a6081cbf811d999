"""MNIST-format digit datasets as a LightningDataModule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity

from cgan.errors import ConfigError, DataError

DatasetName = Literal["MNIST", "FashionMNIST", "KMNIST"]


def scale(images: Tensor) -> Tensor:
    """uint8 images (B, 28, 28) -> float (B, 1, 28, 28) in [-1, 1].

    The same operations as the seed's ``ToTensor()`` + ``Normalize(0.5, 0.5)``, so both data
    paths give bit-identical batches.
    """
    return images.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def _dataset_class(dataset: str) -> type[datasets.MNIST]:
    return getattr(datasets, dataset)


def _missing_message(data_dir: str, dataset: str, reason: str) -> str:
    cls = _dataset_class(dataset)
    raw = Path(data_dir) / dataset / "raw"
    names = "\n".join(f"  {name}" for name, _ in cls.resources)
    bad = [name for name, md5 in cls.resources if (raw / name).exists() and not check_integrity(str(raw / name), md5)]
    if bad:
        return (
            f"{dataset} files in {raw} are corrupt or truncated (checksum mismatch: {', '.join(bad)}) "
            f"and fresh copies could not be downloaded ({reason}).\n"
            f"Delete them and copy the official files there again."
        )
    return (
        f"{dataset} was not found in {raw} and could not be downloaded ({reason}).\n"
        f"Put the four official files there (the .gz files, or the extracted ones):\n{names}\n"
        f"or pass --data.data_dir pointing at a folder that holds {dataset}/raw/."
    )


def download(data_dir: str, dataset: DatasetName = "MNIST") -> None:
    """Fetch both splits with torchvision (a no-op when the files are already under ``<data_dir>/<dataset>/raw``)."""
    cls = _dataset_class(dataset)
    raw = Path(data_dir) / dataset / "raw"
    for train in (True, False):
        try:
            cls(data_dir, train=train, download=True)
        except (RuntimeError, OSError) as err:
            if all((raw / Path(name).stem).exists() for name, _ in cls.resources):
                raise DataError(_unreadable_message(raw, err)) from err  # there, but not readable
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise DataError(_missing_message(data_dir, dataset, lines[-1] if lines else type(err).__name__)) from err


def open_split(data_dir: str, dataset: DatasetName = "MNIST", train: bool = True, transform=None) -> datasets.MNIST:
    """The torchvision dataset of one split, with a clear error when its files are missing or unreadable."""
    cls = _dataset_class(dataset)
    raw = Path(data_dir) / dataset / "raw"
    try:
        ds = cls(data_dir, train=train, transform=transform, download=False)
    except RuntimeError as err:
        if "Dataset not found" in str(err):
            if all((raw / name).exists() for name, _ in cls.resources):
                raise DataError(
                    f"{dataset} in {raw} is only there as .gz files. Run with --data.download true (the "
                    f"default): it extracts them without going online."
                ) from err
            raise DataError(_missing_message(data_dir, dataset, "download is off")) from err
        raise DataError(_unreadable_message(raw, err)) from err
    except Exception as err:  # torchvision's IDX reader fails in several ways on a truncated file
        raise DataError(_unreadable_message(raw, err)) from err
    images, labels = ds.data, ds.targets
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) == 0:
        shapes = f"{len(images)} images of {tuple(images.shape[1:])}, {len(labels)} labels"
        raise DataError(_unreadable_message(raw, ValueError(shapes)))
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(_unreadable_message(raw, ValueError("labels outside 0-9")))
    return ds


def load_split(data_dir: str, dataset: DatasetName = "MNIST", train: bool = True) -> tuple[Tensor, Tensor]:
    """One split as tensors: uint8 images (N, 28, 28) and int64 labels (N,)."""
    ds = open_split(data_dir, dataset, train)
    return ds.data, ds.targets.long()


def _unreadable_message(raw: Path, err: Exception) -> str:
    return (
        f"Could not read the dataset files in {raw}: {err}.\n"
        f"A file is probably truncated or corrupt: delete the extracted files (*-ubyte) there and run again "
        f"(they are re-extracted from the .gz files, or downloaded)."
    )


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` over ``n`` items that can start an epoch at a given batch.

    The order is a permutation drawn from ``(seed, epoch)`` alone and sharded across ranks
    exactly like ``DistributedSampler``, so shuffling is reproducible across resume and DDP.
    ``state_dict()`` records the epoch and how many batches of it were trained (asked of
    ``batches_done``: Lightning fetches a batch ahead, so only the trainer knows); after
    ``load_state_dict`` the same epoch yields only the indices of the batches not trained yet.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_done: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self._batches_done = batches_done
        self._resume: dict | None = None

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            if self._resume["epoch"] == self.epoch:
                skip = self._resume["batches_done"]
            self._resume = None
        return iter(list(super().__iter__())[skip * self.batch_size :])

    def state_dict(self) -> dict:
        done = self._batches_done() if self._batches_done is not None else 0
        return {"epoch": self.epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


class _SamplerState:
    """Lightning's stateful-loader protocol (``state_dict``/``load_state_dict``), kept by the loader's sampler."""

    sampler: ResumableSampler

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class InMemoryLoader(_SamplerState):
    """Batches of a whole split held as one uint8 tensor on the training device.

    Yields ``(images (B, 1, 28, 28) float in [-1, 1], labels (B,) int64)`` in the order of a
    ``ResumableSampler``, whose state it exposes (Lightning's stateful-loader protocol), so a
    run resumed mid-epoch continues with the batches it had not trained yet.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, **sampler_args) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler = ResumableSampler(len(images), batch_size, **sampler_args)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch.
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.images.device)
        for idx in order.split(self.batch_size):
            yield scale(self.images.index_select(0, idx)), self.labels.index_select(0, idx)


class ResumableDataLoader(_SamplerState, DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler``: the seed's per-image path, resumable like the in-memory one."""


class MNISTDataModule(pl.LightningDataModule):
    """MNIST (or FashionMNIST / KMNIST): train = the 60k split, validation = the 10k test split.

    Images are scaled to [-1, 1], labels are class indices. With ``in_memory`` (the default) the
    split lives as one uint8 tensor on the training device and batches are cut from it; without
    it, the seed's path runs: torchvision transforms per image in a ``DataLoader``.

    Args:
        data_dir: folder holding ``<dataset>/raw/`` (downloaded there when missing).
        batch_size: images per batch and per process (under DDP the global batch is
            ``batch_size * world_size``).
        num_workers: DataLoader workers for the non-in-memory path.
        in_memory: keep the split on the training device (fast); False uses a DataLoader.
        dataset: which torchvision MNIST-format dataset.
        download: try to download missing files (torchvision; offline it uses what is there).
        seed: seed of the shuffling; the order of an epoch depends on ``(seed, epoch)`` only, the
            same on both paths. Linked to ``seed_everything`` by the CLI.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        in_memory: bool = True,
        dataset: DatasetName = "MNIST",
        download: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 or more, got {num_workers}.")
        if dataset not in ("MNIST", "FashionMNIST", "KMNIST"):
            raise ConfigError(f"data.dataset must be one of MNIST, FashionMNIST, KMNIST, got {dataset!r}.")
        self.save_hyperparameters()
        self.train_data: tuple[Tensor, Tensor] | None = None
        self.val_data: tuple[Tensor, Tensor] | None = None
        self.train_set: datasets.MNIST | None = None

    def prepare_data(self) -> None:
        if self.hparams.download:
            download(self.hparams.data_dir, self.hparams.dataset)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.val_data is None:
            self.val_data = load_split(hp.data_dir, hp.dataset, train=False)
        if hp.in_memory and self.train_data is None:
            images, labels = load_split(hp.data_dir, hp.dataset, train=True)
            self.train_data = (images.to(device), labels.to(device))
        if not hp.in_memory and self.train_set is None:
            tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))])
            self.train_set = open_split(hp.data_dir, hp.dataset, train=True, transform=tf)

    def train_dataloader(self):
        hp, trainer = self.hparams, self.trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress if trainer is not None else None
        sampler_args = dict(
            batch_size=hp.batch_size,
            seed=hp.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            # batches of the epoch whose updates are done (counted before Lightning marks them
            # completed, so a checkpoint written at a batch's end counts that batch)
            batches_done=(lambda: progress.current.processed) if progress is not None else None,
        )
        if hp.in_memory:
            return InMemoryLoader(*self.train_data, **sampler_args)
        return ResumableDataLoader(
            self.train_set,
            batch_size=hp.batch_size,
            sampler=ResumableSampler(len(self.train_set), **sampler_args),
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )
