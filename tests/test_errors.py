"""Whatever a user gets wrong ends in one message, a non-zero exit and no traceback; training writes no run folder.

Each case goes through the command's ``main`` as a user's command line would: the MNIST files cut
at every IDX header boundary and inside the data, checkpoints cut or not files at all, and the
flags of cgan-generate and cgan-evaluate given bad values.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
from conftest import RAW_NAMES, fake_digits, make_mnist, write_idx
from torchvision import datasets

from cgan import evaluate, generate
from cgan.cli import main, run
from cgan.data import download
from cgan.errors import DataError

FAST = ["--data.batch_size=20", "--trainer.enable_model_summary=false", "--max_epochs=1"]
N_TRAIN, N_TEST = 40, 20
IMAGE_CUTS = (0, 2, 4, 8, 12, 16, 16 + 3 * 784, 16 + 3 * 784 + 100, -1)  # -1: all but the last byte
LABEL_CUTS = (0, 2, 4, 8, 8 + 3, -1)
FILE_CUTS = [
    (name, cut) for (_, kind), name in RAW_NAMES.items() for cut in (IMAGE_CUTS if kind == "images" else LABEL_CUTS)
]


def outcome(command, args: list[str], capfd) -> tuple[int, str]:
    """Exit code and everything written to stdout and stderr of ``command(args)``; argparse's exit counts too."""
    try:
        code = command(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    return code, out + err


def train(data_dir, capfd, *extra: str) -> tuple[int, str]:
    return outcome(main, [f"--data.data_dir={data_dir}", *FAST, *extra], capfd)


def assert_refused(code: int, output: str, message: str, code_wanted: int = 1) -> None:
    assert code == code_wanted, output[-3000:]
    assert message in output, output[-3000:]
    assert "Traceback" not in output


def cut(path, at: int) -> int:
    """Keep the first ``at`` bytes of ``path`` (all but ``-at`` when negative); returns the new size."""
    data = path.read_bytes()
    data = data[:at] if at >= 0 else data[: len(data) + at]
    path.write_bytes(data)
    return len(data)


def cut_file_message(name: str, size: int) -> str:
    """What is wrong with the fixture's file ``name`` cut to ``size`` bytes, as the message says it."""
    header = 16 if "images" in name else 8
    if size < header:
        return f"{name} is truncated or corrupt: it has {size} bytes, fewer than the {header} bytes of its header."
    count = N_TRAIN if name.startswith("train") else N_TEST
    shape, values = (f"{count} x 28 x 28", count * 784) if "images" in name else (str(count), count)
    return (
        f"{name} is truncated or corrupt: its header announces {shape} values, {header + values} bytes in all, "
        f"but it has {size} bytes."
    )


def official_md5s(raw, monkeypatch) -> None:
    """Make the .gz files in ``raw`` the ones torchvision's checksums accept, as the official files are."""
    resources = [(name, hashlib.md5((raw / name).read_bytes()).hexdigest()) for name, _ in datasets.MNIST.resources]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)


@pytest.mark.parametrize("name, at", FILE_CUTS)
def test_an_extracted_file_cut_anywhere_is_named_before_a_run_folder_exists(name, at, tmp_path, in_tmp, offline, capfd):
    data = make_mnist(tmp_path / "data", N_TRAIN, N_TEST)
    path = data / "MNIST" / "raw" / name
    size = cut(path, at)
    code, output = train(data, capfd)
    assert_refused(code, output, f"error: {path.parent}/{cut_file_message(name, size)}")
    assert f"Delete it and run again (it is extracted again from {name}.gz, or downloaded)" in output
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("name, at", FILE_CUTS)
def test_a_gz_file_cut_anywhere_fails_its_checksum(name, at, tmp_path, in_tmp, offline, monkeypatch, capfd):
    data = make_mnist(tmp_path / "data", N_TRAIN, N_TEST, compress=True)
    raw = data / "MNIST" / "raw"
    official_md5s(raw, monkeypatch)
    cut(raw / f"{name}.gz", at)
    code, output = train(data, capfd)
    assert_refused(code, output, f"error: MNIST files in {raw} are corrupt or truncated (checksum mismatch: {name}.gz)")
    assert "Delete them and copy the official files there again." in output
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("name", RAW_NAMES.values())
@pytest.mark.parametrize("at", [2, -1])
def test_a_cut_file_extracted_from_its_gz_is_named(name, at, tmp_path, in_tmp, offline, monkeypatch, capfd):
    """A .gz whose checksum passes but whose content is cut: torchvision extracts it, then the check names it."""
    data = make_mnist(tmp_path / "data", N_TRAIN, N_TEST)
    raw = data / "MNIST" / "raw"
    size = cut(raw / name, at)
    for file in RAW_NAMES.values():
        (raw / f"{file}.gz").write_bytes(gzip.compress((raw / file).read_bytes()))
        (raw / file).unlink()
    official_md5s(raw, monkeypatch)
    code, output = train(data, capfd)
    assert_refused(code, output, f"error: {raw}/{cut_file_message(name, size)}")
    assert not (in_tmp / "lightning_logs").exists()


def rewrite_header_count(path, count: int) -> None:
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack(">I", count)
    path.write_bytes(bytes(data))


def write_split(raw, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(raw / RAW_NAMES[(split, "images")], images)
    write_idx(raw / RAW_NAMES[(split, "labels")], labels)


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(
            lambda raw: rewrite_header_count(raw / "train-images-idx3-ubyte", N_TRAIN + 1),
            f"train-images-idx3-ubyte is truncated or corrupt: its header announces {N_TRAIN + 1} x 28 x 28 values, "
            f"{16 + (N_TRAIN + 1) * 784} bytes in all, but it has {16 + N_TRAIN * 784} bytes.",
            id="more-images-announced",
        ),
        pytest.param(
            lambda raw: rewrite_header_count(raw / "t10k-labels-idx1-ubyte", N_TEST + 5),
            f"t10k-labels-idx1-ubyte is truncated or corrupt: its header announces {N_TEST + 5} values, "
            f"{8 + N_TEST + 5} bytes in all, but it has {8 + N_TEST} bytes.",
            id="more-labels-announced",
        ),
        pytest.param(
            lambda raw: write_idx(raw / "train-labels-idx1-ubyte", fake_digits(N_TRAIN - 1, 0)[1]),
            f"train-labels-idx1-ubyte is truncated or corrupt: it holds {N_TRAIN - 1} labels but "
            f"train-images-idx3-ubyte holds {N_TRAIN} images.",
            id="too-few-labels",
        ),
        pytest.param(
            lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", np.full(N_TEST, 12, dtype=np.uint8)),
            "t10k-labels-idx1-ubyte is truncated or corrupt: it holds labels outside 0-9 (up to 12).",
            id="label-12",
        ),
        pytest.param(
            lambda raw: write_idx(raw / "train-labels-idx1-ubyte", fake_digits(N_TRAIN, 0)[0]),
            "train-labels-idx1-ubyte is truncated or corrupt: it starts with 00 00 08 03, where an IDX file of labels "
            "starts with 00 00 08 01.",
            id="images-as-labels",
        ),
        pytest.param(
            lambda raw: write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((N_TEST, 32, 32), dtype=np.uint8)),
            "t10k-images-idx3-ubyte is truncated or corrupt: its images are 32 x 32 pixels, not 28 x 28.",
            id="32x32-images",
        ),
        pytest.param(
            lambda raw: write_split(raw, "train", np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)),
            "train-images-idx3-ubyte is truncated or corrupt: it holds no images.",
            id="empty-split",
        ),
    ],
)
@pytest.mark.parametrize("download_flag", ["true", "false"])
def test_files_that_disagree_with_themselves_or_each_other_are_named(
    change, message, download_flag, tmp_path, in_tmp, offline, capfd
):
    data = make_mnist(tmp_path / "data", N_TRAIN, N_TEST)
    change(data / "MNIST" / "raw")
    code, output = train(data, capfd, f"--data.download={download_flag}")
    assert_refused(code, output, f"error: {data / 'MNIST' / 'raw'}/{message}")
    assert not (in_tmp / "lightning_logs").exists()


def test_deleting_the_named_file_is_the_fix_the_message_gives(tmp_path, offline, monkeypatch):
    data = make_mnist(tmp_path / "data", N_TRAIN, N_TEST)
    make_mnist(tmp_path / "data", N_TRAIN, N_TEST, compress=True)
    raw = data / "MNIST" / "raw"
    official_md5s(raw, monkeypatch)
    cut(raw / "t10k-images-idx3-ubyte", 100)
    with pytest.raises(DataError, match="Delete it and run again"):
        download(str(data))
    (raw / "t10k-images-idx3-ubyte").unlink()
    download(str(data))  # extracted again from the .gz, offline
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == 16 + N_TEST * 784


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A data folder and a checkpoint of the default config (untrained: only its format matters here)."""
    root = tmp_path_factory.mktemp("saved")
    data = make_mnist(root / "data", N_TRAIN, N_TEST)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        trainer = run([f"--data.data_dir={data}", *FAST, "--max_epochs=0"])
        trainer.save_checkpoint(root / "good.ckpt")
    finally:
        os.chdir(cwd)
    return root / "good.ckpt", data


def bad_checkpoint(kind: str, good, folder) -> tuple[str, str]:
    """A bad ``--ckpt`` value of ``kind`` and the message it must give."""
    if kind == "empty-path":
        return "", "error: the checkpoint path is empty. Pass the path of a .ckpt file."
    if kind == "folder":
        return str(folder), f"error: checkpoint {folder} is a folder, not a file. Pass a .ckpt file"
    path = folder / f"{kind}.ckpt"
    size = {"0-bytes": 0, "5-bytes": 5, "half": good.stat().st_size // 2, "all-but-one-byte": -1}[kind]
    path.write_bytes(good.read_bytes()[:size])
    if size == 0:
        return str(path), f"error: {path} is empty (0 bytes). It was not written completely"
    return str(path), f"error: {path} is not a readable checkpoint (RuntimeError: PytorchStreamReader failed"


CHECKPOINTS = ["0-bytes", "5-bytes", "half", "all-but-one-byte", "empty-path", "folder"]


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_checkpoint_to_resume_is_explained_before_a_run_folder_exists(kind, saved, tmp_path, in_tmp, capfd):
    good, data = saved
    ckpt, message = bad_checkpoint(kind, good, tmp_path)
    code, output = train(data, capfd, f"--ckpt_path={ckpt}")
    assert_refused(code, output, message)
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_checkpoint_to_generate_from_is_explained(kind, saved, tmp_path, capfd):
    good, _ = saved
    ckpt, message = bad_checkpoint(kind, good, tmp_path)
    code, output = outcome(generate.main, ["--ckpt", ckpt, "--out", str(tmp_path / "g.png")], capfd)
    assert_refused(code, output, message)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_checkpoint_to_evaluate_is_explained(kind, saved, tmp_path, capfd):
    good, data = saved
    ckpt, message = bad_checkpoint(kind, good, tmp_path)
    code, output = outcome(evaluate.main, ["--ckpt", ckpt, "--data_dir", str(data), "--per-class", "20"], capfd)
    assert_refused(code, output, message)


@pytest.mark.parametrize(
    "args, code_wanted, message",
    [
        pytest.param(["--per-digit", "0"], 2, "error: --per-digit must be positive, got 0", id="per-digit-0"),
        pytest.param(["--per-digit", "-3"], 2, "error: --per-digit must be positive, got -3", id="per-digit-negative"),
        pytest.param(["--per-digit", "x"], 2, "error: argument --per-digit: invalid int value: 'x'", id="per-digit-x"),
        pytest.param(["--digits", "10"], 2, "error: argument --digits: invalid choice: 10", id="digit-10"),
        pytest.param(["--out", "grid.jpg"], 2, "error: --out must end in .png or .npz, got grid.jpg", id="out-jpg"),
        pytest.param(["--out", "grid"], 2, "error: --out must end in .png or .npz, got grid", id="out-no-suffix"),
        pytest.param(["--seed", "-1"], 2, "error: --seed must be between 0 and 2**64 - 1, got -1", id="seed-negative"),
        pytest.param(
            ["--seed", str(2**64)], 2, f"error: --seed must be between 0 and 2**64 - 1, got {2**64}", id="seed-2**64"
        ),
        pytest.param(
            ["--out", "{tmp}/a_file/grid.png"],
            1,
            "error: cannot write {tmp}/a_file/grid.png: {tmp}/a_file is a file, not a folder. "
            "Pass an --out in a folder you can write to.",
            id="out-under-a-file",
        ),
        pytest.param(
            ["--out", "{tmp}/a_file/deeper/s.npz"],
            1,
            "error: cannot write {tmp}/a_file/deeper/s.npz: {tmp}/a_file is a file, not a folder.",
            id="out-deeper-under-a-file",
        ),
        pytest.param(
            ["--out", "{tmp}/a_folder.png"],
            1,
            "error: cannot write {tmp}/a_folder.png: Is a directory. Pass an --out",
            id="out-is-a-folder",
        ),
    ],
)
def test_bad_generate_flags_are_explained(args, code_wanted, message, saved, tmp_path, in_tmp, capfd):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder.png").mkdir()
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, output = outcome(generate.main, ["--ckpt", str(saved[0]), *args], capfd)
    assert_refused(code, output, message.format(tmp=tmp_path), code_wanted)
    assert not (in_tmp / "samples.png").exists()


@pytest.mark.parametrize(
    "args, code_wanted, message",
    [
        pytest.param(
            ["--per-class", "0"],
            2,
            "error: --per-class must be 2 or more (FID needs two digits of each class), got 0",
            id="per-class-0",
        ),
        pytest.param(
            ["--per-class", "1"],
            2,
            "error: --per-class must be 2 or more (FID needs two digits of each class), got 1",
            id="per-class-1",
        ),
        pytest.param(["--per-class", "x"], 2, "error: argument --per-class: invalid int value: 'x'", id="per-class-x"),
        pytest.param(["--seed", "-5"], 2, "error: --seed must be between 0 and 2**64 - 1, got -5", id="seed-negative"),
        pytest.param(
            ["--per-class", "2"],
            1,
            "error: --per-class 2 draws 20 real training digits, only ",
            id="per-class-too-few-real-digits",
        ),
        pytest.param(
            ["--data_dir", "{tmp}/nowhere"],
            1,
            "error: MNIST was not found in {tmp}/nowhere/MNIST/raw and could not be downloaded",
            id="data-missing",
        ),
        pytest.param(
            ["--data_dir", "{tmp}/a_file"], 1, "error: MNIST was not found in {tmp}/a_file/MNIST/raw", id="data-a-file"
        ),
        pytest.param(
            ["--data_dir", "{few}"],
            1,
            "error: the test split in {few} holds 1 of digit 9, and the per-class FID needs at least 2 of each digit. "
            "Use the official test files.",
            id="data-one-test-9",
        ),
        pytest.param(
            ["--data_dir", "{cut}"],
            1,
            "error: {cut}/MNIST/raw/t10k-labels-idx1-ubyte is truncated or corrupt",
            id="data-cut",
        ),
    ],
)
def test_bad_evaluate_flags_and_data_are_explained(args, code_wanted, message, saved, tmp_path, in_tmp, offline, capfd):
    good, data = saved
    (tmp_path / "a_file").write_text("not a folder")
    cut_data = make_mnist(tmp_path / "cut", N_TRAIN, N_TEST)
    cut(cut_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", 4)
    few = make_mnist(tmp_path / "few", N_TRAIN, 19)  # labels 0-9 then 0-8: a single 9
    names = {"tmp": tmp_path, "few": few, "cut": cut_data}
    args = ["--data_dir", str(data), "--per-class", "20", *(arg.format(**names) for arg in args)]
    code, output = outcome(evaluate.main, ["--ckpt", str(good), *args], capfd)
    assert_refused(code, output, message.format(**names), code_wanted)
    if code_wanted == 1:
        assert "generated" not in output  # stopped before scoring
