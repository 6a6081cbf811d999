"""MNIST-format digit datasets as a LightningDataModule."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity

from cgan.errors import ConfigError, DataError, reason

DatasetName = Literal["MNIST", "FashionMNIST", "KMNIST"]


def scale(images: Tensor) -> Tensor:
    """uint8 images (B, 28, 28) -> float (B, 1, 28, 28) in [-1, 1].

    The same operations as the seed's ``ToTensor()`` + ``Normalize(0.5, 0.5)``, so both data
    paths give bit-identical batches.
    """
    return images.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def _dataset_class(dataset: str) -> type[datasets.MNIST]:
    return getattr(datasets, dataset)


def _missing_message(data_dir: str, dataset: str, why: str) -> str:
    cls = _dataset_class(dataset)
    raw = Path(data_dir) / dataset / "raw"
    names = "\n".join(f"  {name}" for name, _ in cls.resources)
    bad = [name for name, md5 in cls.resources if (raw / name).exists() and not check_integrity(str(raw / name), md5)]
    if bad:
        return (
            f"{dataset} files in {raw} are corrupt or truncated (checksum mismatch: {', '.join(bad)}) "
            f"and fresh copies could not be downloaded ({why}).\n"
            f"Delete them and copy the official files there again."
        )
    if _compressed(raw, dataset):  # all there and sound (checked above), as .gz only
        return (
            f"{dataset} in {raw} is there as .gz files only, and they could not be extracted ({why}).\n"
            f"Make {raw} writable, or extract them into a writable folder's {dataset}/raw/ and pass "
            f"--data.data_dir (cgan-evaluate: --data_dir) pointing at that folder."
        )
    return (
        f"{dataset} was not found in {raw} and could not be downloaded ({why}).\n"
        f"Put the four official files there (the .gz files, or the extracted ones):\n{names}\n"
        f"or pass --data.data_dir (cgan-evaluate: --data_dir) pointing at a folder that holds {dataset}/raw/."
    )


def _extracted(raw: Path, dataset: str) -> bool:
    """Whether all four extracted files are there (torchvision then reads them and never looks at the .gz)."""
    return all((raw / Path(name).stem).is_file() for name, _ in _dataset_class(dataset).resources)


def _compressed(raw: Path, dataset: str) -> bool:
    """Whether all four .gz files are there (whatever their checksums)."""
    return all((raw / name).is_file() for name, _ in _dataset_class(dataset).resources)


def download(data_dir: str, dataset: DatasetName = "MNIST") -> None:
    """Make sure both splits are under ``<data_dir>/<dataset>/raw`` and well-formed, or raise a DataError.

    Missing files are extracted from their .gz when those pass their checksums (offline), else
    fetched by torchvision; then the extracted files are checked. Every file appears under its
    name only once complete, so runs started together on one ``data_dir`` (a sweep) and a run
    after an interrupted one never read half a file; what a killed one left is removed
    (``_remove_stale``). It runs in ``prepare_data``, before the trainer makes a run folder, so
    a bad file stops a run before it writes anything.
    """
    raw = Path(data_dir) / dataset / "raw"
    _remove_stale(raw, dataset)
    if not _extracted(raw, dataset):
        try:
            _extract(raw, dataset)
            if not _extracted(raw, dataset):
                _fetch(raw, dataset)
        except Exception as err:  # offline, a corrupt .gz, a folder that cannot be written, ...
            if not _extracted(raw, dataset):
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                raise DataError(
                    _missing_message(data_dir, dataset, lines[-1] if lines else type(err).__name__)
                ) from err
            # extracted but not readable: check_files below says which file and why
    check_files(data_dir, dataset)


STALE_SECONDS = 3600  # a hidden file or folder of ours this old was left by a killed run
FETCH_PREFIX = ".download-"  # _fetch's temporary folder in raw


def _extract_prefix(name: str) -> str:
    """The start of the hidden file ``_extract`` writes the extracted file ``name`` to."""
    return f".{name}."


def _remove_stale(raw: Path, dataset: str) -> None:
    """Remove what an extraction or a download killed midway (SIGKILL, a power cut) left in
    ``raw``: ``_extract``'s hidden files and ``_fetch``'s folders, once over ``STALE_SECONDS``
    old, so that those another run is writing now are left alone."""
    patterns = [_extract_prefix(Path(name).stem) + "*" for name, _ in _dataset_class(dataset).resources]
    patterns.append(FETCH_PREFIX + "*")
    for left in (path for pattern in patterns for path in raw.glob(pattern)):
        try:
            if time.time() - left.stat().st_mtime > STALE_SECONDS:
                if left.is_dir():
                    shutil.rmtree(left)
                else:
                    left.unlink()
        except OSError:  # gone meanwhile, or a folder this run cannot write to: harmless either way
            pass


def _extract(raw: Path, dataset: str) -> None:
    """Extract each .gz under ``raw`` that passes its checksum and is not extracted yet, writing
    to a hidden file of its own (the usual permissions) that is renamed into place when complete."""
    for name, md5 in _dataset_class(dataset).resources:
        gz, out = raw / name, raw / Path(name).stem
        if out.is_file() or not gz.is_file() or not check_integrity(str(gz), md5):
            continue
        tmp = raw / f"{_extract_prefix(out.name)}{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as dst, gzip.open(gz, "rb") as src:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)


def _fetch(raw: Path, dataset: str) -> None:
    """Download and extract the four files with torchvision into a temporary folder beside them,
    then move each into ``raw`` (files already there are replaced by the fresh copies). A .gz
    in ``raw`` that passes its checksum is linked into that folder first, so only the missing
    or corrupt ones are downloaded."""
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw, prefix=FETCH_PREFIX) as tmp:
        staged = Path(tmp) / dataset / "raw"
        staged.mkdir(parents=True)
        for name, md5 in _dataset_class(dataset).resources:
            if (raw / name).is_file() and check_integrity(str(raw / name), md5):
                try:
                    os.link(raw / name, staged / name)
                except OSError:  # a file system without hard links
                    shutil.copyfile(raw / name, staged / name)
        _dataset_class(dataset)(tmp, train=False, download=True)
        fetched = sorted(staged.iterdir(), key=lambda f: f.suffix != ".gz")
        for f in fetched:  # the .gz files first: the extracted ones are what marks the data as there
            os.replace(f, raw / f.name)


def check_files(data_dir: str, dataset: DatasetName = "MNIST") -> None:
    """Raise a DataError unless both splits' extracted files are there, complete, and agree (see ``_check_split``)."""
    _require_extracted(data_dir, dataset)
    for train in (True, False):
        _check_split(Path(data_dir) / dataset / "raw", train)


def _require_extracted(data_dir: str, dataset: str) -> None:
    """Raise a DataError saying what to do when an extracted file is missing (the .gz files are not read)."""
    raw = Path(data_dir) / dataset / "raw"
    if _extracted(raw, dataset):
        return
    if _compressed(raw, dataset):
        raise DataError(
            f"{dataset} in {raw} is only there as .gz files. Run with --data.download true (the "
            f"default): it extracts them without going online."
        )
    raise DataError(_missing_message(data_dir, dataset, "download is off"))


def _check_split(raw: Path, train: bool) -> None:
    """Check one split's two IDX files from their headers and sizes, and the labels' values.

    Reads a few kB (the headers and the labels), not the images, so it is cheap enough to run
    before every read. torchvision's reader would fail on these files with a bare ValueError or
    AssertionError, or not at all (a labels file with too few labels).
    """
    images_path, labels_path = _split_files(raw, train)
    images = _idx_dims(images_path, 3)
    labels = _idx_dims(labels_path, 1)
    if images[1:] != (28, 28):
        raise _bad_file(images_path, f"its images are {images[1]} x {images[2]} pixels, not 28 x 28")
    if images[0] == 0:
        raise _bad_file(images_path, "it holds no images")
    if labels[0] != images[0]:
        raise _bad_file(labels_path, f"it holds {labels[0]} labels but {images_path.name} holds {images[0]} images")
    largest = max(labels_path.read_bytes()[8:])
    if largest > 9:
        raise _bad_file(labels_path, f"it holds labels outside 0-9 (up to {largest})")


def _split_files(raw: Path, train: bool) -> tuple[Path, Path]:
    """One split's extracted images and labels files under ``raw``."""
    split = "train" if train else "t10k"
    return raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"


def split_size(data_dir: str, dataset: DatasetName = "MNIST", train: bool = True) -> int:
    """How many digits one split holds, from its labels file's header (no image is read)."""
    _require_extracted(data_dir, dataset)
    return _idx_dims(_split_files(Path(data_dir) / dataset / "raw", train)[1], 1)[0]


def _idx_dims(path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions in the header of an IDX file of unsigned bytes, checked against the file's size."""
    header_size = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(header_size)
    except OSError as err:
        raise DataError(f"could not read {path}: {err.strerror or err}. Make it a readable file.") from err
    if len(header) < header_size:
        raise _bad_file(path, f"it has {size} bytes, fewer than the {header_size} bytes of its header")
    magic = bytes([0, 0, 0x08, ndim])  # unsigned bytes, ndim dimensions
    if header[:4] != magic:
        kind = "images" if ndim == 3 else "labels"
        raise _bad_file(
            path, f"it starts with {header[:4].hex(' ')}, where an IDX file of {kind} starts with {magic.hex(' ')}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_size + math.prod(dims)
    if size != expected:
        shape = " x ".join(map(str, dims))
        raise _bad_file(path, f"its header announces {shape} values, {expected} bytes in all, but it has {size} bytes")
    return dims


def _bad_file(path: Path, problem: str) -> DataError:
    return DataError(
        f"{path} is truncated or corrupt: {problem}.\n"
        f"Delete it and run again (it is extracted again from {path.name}.gz, or downloaded), "
        f"or copy the official file there again."
    )


def open_split(data_dir: str, dataset: DatasetName = "MNIST", train: bool = True, transform=None) -> datasets.MNIST:
    """The torchvision dataset of one split, with a clear error when its files are missing or unreadable."""
    raw = Path(data_dir) / dataset / "raw"
    _require_extracted(data_dir, dataset)
    _check_split(raw, train)
    try:
        return _dataset_class(dataset)(data_dir, train=train, transform=transform, download=False)
    except Exception as err:  # not expected once the files passed the checks; still no traceback
        raise DataError(
            f"Could not read the {dataset} files in {raw} ({reason(err)}).\n"
            f"Delete the extracted files (*-ubyte) there and run again (they are extracted again from the .gz "
            f"files, or downloaded)."
        ) from err


def load_split(data_dir: str, dataset: DatasetName = "MNIST", train: bool = True) -> tuple[Tensor, Tensor]:
    """One split as tensors: uint8 images (N, 28, 28) and int64 labels (N,)."""
    ds = open_split(data_dir, dataset, train)
    return ds.data, ds.targets.long()


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
        # Before the trainer makes a run folder: missing or broken files stop the run before it writes anything.
        if self.hparams.download:
            download(self.hparams.data_dir, self.hparams.dataset)
        else:
            check_files(self.hparams.data_dir, self.hparams.dataset)

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
