import gzip
import hashlib
import http.server
import os
import re
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import RAW_NAMES, make_mnist
from torchvision import datasets

import cgan.data
from cgan.data import InMemoryLoader, MNISTDataModule, download, load_split, split_size
from cgan.errors import ConfigError, DataError


def setup_dm(data_dir, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_the_documented_shapes_range_and_dtypes(tiny_mnist):
    dm = setup_dm(tiny_mnist, batch_size=32)
    loader = dm.train_dataloader()
    batches = list(loader)
    x, y = batches[0]
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0  # the fixture has pixels at 0 and 255
    assert len(loader) == len(batches) == 7  # ceil(200 / 32), the last batch partial as in the seed
    assert sum(len(b[1]) for b in batches) == 200
    assert len(dm.train_data[0]) == 200 and len(dm.val_data[0]) == 50


def test_in_memory_and_dataloader_paths_give_identical_images(tiny_mnist):
    fast = setup_dm(tiny_mnist)
    slow = setup_dm(tiny_mnist, in_memory=False)
    images, labels = fast.train_data
    for i in (0, 7, 199):
        x, y = slow.train_set[i]
        assert torch.equal(torch.as_tensor(y), labels[i])
        from cgan.data import scale

        assert torch.equal(scale(images[i : i + 1])[0], x)


def test_both_paths_give_the_same_batches_in_the_same_order_and_resume_alike(tiny_mnist):
    fast, slow = (setup_dm(tiny_mnist, in_memory=m, seed=3, batch_size=20) for m in (True, False))

    def epoch(dm, batches_done=None):
        loader = dm.train_dataloader()
        if batches_done is not None:
            loader.load_state_dict({"epoch": 1, "batches_done": batches_done})
        loader.sampler.set_epoch(1)
        return list(loader)

    full = epoch(fast)
    assert len(full) == 10
    for (x, y), (x2, y2) in zip(full, epoch(slow), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for dm in (fast, slow):  # resumed after 4 batches: the other 6, nothing more
        rest = epoch(dm, batches_done=4)
        assert len(rest) == 6
        assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, full[4:], strict=True))
    other = setup_dm(tiny_mnist, seed=4, batch_size=20).train_dataloader()
    other.sampler.set_epoch(1)
    assert not torch.equal(next(iter(other))[1], full[0][1])  # the order follows data.seed


def test_shuffle_depends_on_seed_and_epoch_only():
    images = torch.arange(100, dtype=torch.uint8).repeat_interleave(784).view(100, 28, 28)
    labels = torch.arange(100) % 10

    def order(seed, epoch):
        loader = InMemoryLoader(images, labels, batch_size=10, seed=seed)
        loader.sampler.set_epoch(epoch)
        return torch.cat([y for _, y in loader]), torch.cat([x[:, 0, 0, 0] for x, _ in loader])

    assert torch.equal(order(0, 3)[1], order(0, 3)[1])
    assert not torch.equal(order(0, 3)[1], order(0, 4)[1])
    assert not torch.equal(order(1, 3)[1], order(0, 3)[1])
    assert sorted(order(0, 3)[1].tolist()) == sorted(((torch.arange(100).float() / 255 - 0.5) / 0.5).tolist())


def test_ranks_take_disjoint_shards_that_cover_the_split():
    images = torch.arange(100, dtype=torch.uint8).repeat_interleave(784).view(100, 28, 28)
    labels = torch.zeros(100, dtype=torch.int64)
    seen = []
    for rank in (0, 1):
        loader = InMemoryLoader(images, labels, batch_size=10, rank=rank, world_size=2)
        assert len(loader) == 5
        seen.append({int(v) for x, _ in loader for v in ((x[:, 0, 0, 0] * 0.5 + 0.5) * 255).round()})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(100))


def test_loader_resumed_mid_epoch_yields_only_the_batches_not_trained():
    images = torch.arange(100, dtype=torch.uint8).repeat_interleave(784).view(100, 28, 28)
    labels = torch.zeros(100, dtype=torch.int64)
    full = InMemoryLoader(images, labels, batch_size=10, seed=5)
    full.sampler.set_epoch(2)
    everything = [x for x, _ in full]
    resumed = InMemoryLoader(images, labels, batch_size=10, seed=5)
    resumed.load_state_dict({"epoch": 2, "batches_done": 4})
    resumed.sampler.set_epoch(2)
    rest = [x for x, _ in resumed]
    assert len(rest) == 6
    assert all(torch.equal(a, b) for a, b in zip(rest, everything[4:]))
    assert len(list(resumed)) == 10  # the next epoch is whole again


@pytest.fixture
def gz_mnist(tmp_path, monkeypatch):
    """The fixture as .gz files only, with their md5s made the official ones (torchvision checks them)."""
    root = make_mnist(tmp_path / "gz", compress=True)
    raw = root / "MNIST" / "raw"
    resources = [(name, hashlib.md5((raw / name).read_bytes()).hexdigest()) for name, _ in datasets.MNIST.resources]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    return root


def test_a_splits_size_is_read_from_its_labels_header(tmp_path):
    root = str(make_mnist(tmp_path / "data", n_train=130, n_test=70))
    assert [split_size(root, train=t) for t in (True, False)] == [
        len(load_split(root, train=t)[1]) for t in (True, False)
    ]
    assert (split_size(root), split_size(root, train=False)) == (130, 70)
    gz_only = make_mnist(tmp_path / "gz", compress=True)
    with pytest.raises(DataError, match=r"is only there as \.gz files\. Run with --data\.download true"):
        split_size(str(gz_only))


def test_gz_files_are_extracted_offline(gz_mnist, offline):
    root = gz_mnist
    download(str(root))
    images, labels = load_split(str(root), train=False)
    assert images.shape == (50, 28, 28) and labels.shape == (50,)
    umask = os.umask(0)
    os.umask(umask)
    for name in RAW_NAMES.values():  # readable by others sharing the folder, as a plain write makes them
        assert (root / "MNIST" / "raw" / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_extraction_cut_short_leaves_no_half_written_file(gz_mnist, offline, monkeypatch):
    raw = gz_mnist / "MNIST" / "raw"
    copy = shutil.copyfileobj

    def cut_short(src, dst):  # Ctrl-C halfway through the first file
        dst.write(src.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", cut_short)
    with pytest.raises(KeyboardInterrupt):
        download(str(gz_mnist))
    assert sorted(f.name for f in raw.iterdir()) == sorted(name for name, _ in datasets.MNIST.resources)
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    download(str(gz_mnist))  # the next run extracts them whole
    assert load_split(str(gz_mnist), train=True)[0].shape == (200, 28, 28)


def test_what_a_killed_extraction_or_download_left_is_removed_once_an_hour_old(gz_mnist, offline):
    raw = gz_mnist / "MNIST" / "raw"
    old, fresh = raw / f".train-images-idx3-ubyte.{'a' * 32}", raw / f".t10k-labels-idx1-ubyte.{'b' * 32}"
    folder, other = raw / ".download-x1y2", raw / ".notes"  # a download's folder, and a file not ours
    folder.mkdir()
    for path in (old, fresh, folder / "part.gz", other):
        path.write_bytes(b"half")
    hours_ago = time.time() - 2 * 3600
    for path in (old, folder, other):
        os.utime(path, (hours_ago, hours_ago))
    download(str(gz_mnist))
    assert not old.exists() and not folder.exists()
    assert fresh.read_bytes() == b"half" and other.read_bytes() == b"half"  # maybe another run's, or not ours
    assert load_split(str(gz_mnist), train=False)[0].shape == (50, 28, 28)


@pytest.fixture
def mirror(gz_mnist, monkeypatch):
    """A local web server holding the fixture's .gz files, as torchvision's MNIST mirror.
    ``QuietHandler.served`` lists the files asked for."""
    QuietHandler.served = []
    handler = partial(QuietHandler, directory=str(gz_mnist / "MNIST" / "raw"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    yield gz_mnist
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self) -> None:
        QuietHandler.served.append(self.path.lstrip("/"))
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def test_missing_or_corrupt_files_are_downloaded_whole(mirror, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"cut short")  # a download that broke off
    download(str(tmp_path))
    gz = sorted(name for name, _ in datasets.MNIST.resources)
    assert sorted(f.name for f in raw.iterdir()) == sorted(gz + [Path(name).stem for name in gz])  # no leftovers
    assert all((raw / name).read_bytes() == (mirror / "MNIST" / "raw" / name).read_bytes() for name in gz)
    images, labels = load_split(str(tmp_path), train=True)
    assert images.shape == (200, 28, 28) and labels.shape == (200,)


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
def test_only_the_files_missing_or_corrupt_are_downloaded(mirror, tmp_path, monkeypatch, hard_links):
    if not hard_links:

        def no_link(src, dst, *args, **kwargs):
            raise OSError(1, "Operation not permitted", str(dst))

        monkeypatch.setattr(cgan.data.os, "link", no_link)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gz = sorted(name for name, _ in datasets.MNIST.resources)
    for name in gz[1:]:
        shutil.copy(mirror / "MNIST" / "raw" / name, raw / name)
    (raw / gz[1]).write_bytes(b"cut short")
    download(str(tmp_path))
    assert sorted(set(QuietHandler.served)) == gz[:2]  # (torchvision asks for each file twice)
    assert sorted(f.name for f in raw.iterdir()) == sorted(gz + [Path(name).stem for name in gz])  # no leftovers
    assert all((raw / name).read_bytes() == (mirror / "MNIST" / "raw" / name).read_bytes() for name in gz)


def test_a_download_that_breaks_off_leaves_nothing_behind(mirror, tmp_path, monkeypatch):
    def broken(url, path, *args, **kwargs):  # half a file, then the connection drops
        Path(path).write_bytes(b"\x1f\x8b" + b"0" * 100)
        raise ConnectionResetError("the connection dropped")

    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", broken)
    with pytest.raises(DataError, match="could not be downloaded \\(the connection dropped\\)"):
        download(str(tmp_path))
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []
    cut = tmp_path / "MNIST" / "raw" / datasets.MNIST.resources[0][0]  # the first one torchvision fetches
    cut.write_bytes(b"cut short")  # an earlier download's: the next failed one leaves it as it was
    with pytest.raises(DataError, match="could not be downloaded \\(the connection dropped\\)"):
        download(str(tmp_path))
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == [cut] and cut.read_bytes() == b"cut short"


def test_missing_data_offline_names_the_folder_and_the_files(tmp_path, offline):
    with pytest.raises(DataError) as err:
        download(str(tmp_path / "nowhere"))
    message = str(err.value)
    assert f"MNIST was not found in {tmp_path / 'nowhere' / 'MNIST' / 'raw'}" in message
    for name in RAW_NAMES.values():
        assert name + ".gz" in message
    assert "--data.data_dir" in message


def test_gz_files_in_a_folder_that_cannot_be_written_say_so(gz_mnist, offline, monkeypatch):
    raw = gz_mnist / "MNIST" / "raw"

    def read_only(path, mode="r", *args, **kwargs):  # as in a read-only folder (chmod does not stop root)
        if "x" in mode or "w" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(cgan.data, "open", read_only, raising=False)
    with pytest.raises(DataError) as err:
        download(str(gz_mnist))
    assert str(err.value).startswith(
        f"MNIST in {raw} is there as .gz files only, and they could not be extracted ([Errno 13] Permission denied: "
    )
    assert str(err.value).endswith(
        f"Make {raw} writable, or extract them into a writable folder's MNIST/raw/ and pass "
        f"--data.data_dir (cgan-evaluate: --data_dir) pointing at that folder."
    )
    assert sorted(f.name for f in raw.iterdir()) == sorted(name for name, _ in datasets.MNIST.resources)


def test_corrupt_gz_is_reported_as_corrupt(gz_mnist, offline):
    root = gz_mnist
    gz = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"not mnist")
    with pytest.raises(DataError, match=r"corrupt or truncated \(checksum mismatch: t10k-labels-idx1-ubyte.gz\)"):
        download(str(root))


def test_truncated_extracted_file_is_reported(tiny_mnist, offline):
    path = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    message = f"{path} is truncated or corrupt: its header announces 200 x 28 x 28 values, 156816 bytes in all, but"
    for read in (load_split, download):
        with pytest.raises(DataError, match=re.escape(message)):
            read(str(tiny_mnist))


@pytest.mark.parametrize("kwargs, text", [({"batch_size": 0}, "data.batch_size must be a positive integer, got 0")])
def test_bad_values_are_rejected(kwargs, text):
    with pytest.raises(ConfigError, match=text):
        MNISTDataModule(**kwargs)


@pytest.mark.slow
def test_real_mnist_splits(real_mnist):
    dm = setup_dm(real_mnist)
    assert dm.train_data[0].shape == (60000, 28, 28)
    assert dm.val_data[0].shape == (10000, 28, 28)
    assert torch.bincount(dm.train_data[1]).tolist()[:2] == [5923, 6742]
