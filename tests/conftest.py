"""Fixtures: a tiny MNIST written in the real IDX format, so the real loading code runs."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from cgan.callbacks import DigitMetrics
from cgan.data import download

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"
RAW_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("t10k", "images"): "t10k-images-idx3-ubyte",
    ("t10k", "labels"): "t10k-labels-idx1-ubyte",
}


def pytest_configure(config: pytest.Config) -> None:
    """In each of pytest-xdist's worker processes (``make test`` runs two), torch and the
    processes the tests start use one thread: two workers of several OpenMP threads each on a
    small machine spin against each other and run several times slower. Sets the worker's
    thread count and ``OMP_NUM_THREADS`` for the rest of its life."""
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write uint8 ``array`` as an IDX file (magic 0x0801 for labels, 0x0803 for images)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images: a bright bar whose position encodes the label, plus faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 + 2 * label : 6 + 2 * label, 4:24] = 255
    return images, labels.astype(np.uint8)


def make_mnist(root: Path, n_train: int = 200, n_test: int = 50, compress: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_digits(n, seed)
        write_idx(raw / RAW_NAMES[(split, "images")], images, compress)
        write_idx(raw / RAW_NAMES[(split, "labels")], labels, compress)
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A data_dir holding MNIST/raw with 200 train and 50 test images (extracted IDX files)."""
    return make_mnist(tmp_path / "data")


@pytest.fixture
def offline(monkeypatch):
    """No download can succeed: every mirror points at a closed local port."""
    for cls in (datasets.MNIST, datasets.FashionMNIST, datasets.KMNIST):
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])


@pytest.fixture
def real_mnist(tmp_path: Path) -> Path:
    """A writable copy of the official MNIST files, when the shared copy exists."""
    src = REAL_MNIST / "MNIST" / "raw"
    if not src.is_dir():
        if os.environ.get("CGAN_REQUIRE_REAL_MNIST"):  # set by CI where the files exist: never skip there
            pytest.fail(f"CGAN_REQUIRE_REAL_MNIST is set but {src} does not exist")
        pytest.skip("the real MNIST files are not available")
    dst = tmp_path / "real" / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for file in src.iterdir():  # contents only: copytree would keep the read-only modes, and the copy must be writable
        shutil.copyfile(file, dst / file.name)
    download(str(tmp_path / "real"))  # extracts the .gz files (offline: they pass their checksums)
    return tmp_path / "real"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run in a scratch folder, so lightning_logs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def few_digits_in_training_metrics():
    """In-process runs score 100 generated digits per class in their val/* metrics, not 1000:
    the same code in a tenth of the time. Session-wide, so it is in place before any fixture
    builds a parser (jsonargparse keeps the signatures it has read)."""
    every_n_epochs, _, seed = DigitMetrics.__init__.__defaults__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DigitMetrics.__init__, "__defaults__", (every_n_epochs, 100, seed))
        yield
