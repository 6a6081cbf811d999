"""cgan-generate and cgan-evaluate on a briefly trained checkpoint; a smoke run of the speed benchmark."""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import callbacks_config
from PIL import Image

from cgan import evaluate, generate
from cgan.cli import run
from cgan.errors import CheckpointError
from cgan.models import Discriminator, Generator
from cgan.module import CGAN

BENCH = Path(__file__).resolve().parent.parent / "bench" / "speed.py"
QUALITY = BENCH.with_name("quality.py")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def train_once(root: Path, *extra: str) -> tuple[Path, Path]:
    """One epoch on the tiny fixture in ``root``: (its last.ckpt, the data folder)."""
    from conftest import make_mnist

    data = make_mnist(root / "data")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run([f"--data.data_dir={data}", "--data.batch_size=20", "--max_epochs=1", *extra])
    finally:
        os.chdir(cwd)
    return root / "lightning_logs/version_0/checkpoints/last.ckpt", data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_once(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def trained_ema(tmp_path_factory):
    """A checkpoint whose EMA generator differs from the raw one (decay 0.5 after 10 updates)."""
    return train_once(tmp_path_factory.mktemp("ema"), "--model.ema_decay=0.5")


def test_generate_writes_a_grid_with_one_row_per_digit(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "grid.png"
    assert generate.main(["--ckpt", str(ckpt), "--digits", "0", "3", "7", "--per-digit", "8", "--out", str(out)]) == 0
    assert Image.open(out).size == (8 * 28 + 9 * 2, 3 * 28 + 4 * 2)


def test_generate_writes_the_documented_arrays(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "s.npz"
    assert generate.main(["--ckpt", str(ckpt), "--per-digit", "1000", "--out", str(out), "--seed", "3"]) == 0
    data = np.load(out)
    assert data["images"].shape == (10000, 28, 28) and data["images"].dtype == np.uint8
    assert data["labels"].dtype == np.int64
    assert (data["labels"] == np.repeat(np.arange(10), 1000)).all()
    assert np.median(data["images"]) < 64  # mostly background, which is 0 as in MNIST


def test_generate_is_reproducible_by_seed_and_interpolates(trained, tmp_path):
    ckpt, _ = trained
    a, b, c, d = (tmp_path / f"{n}.npz" for n in "abcd")
    assert generate.main(["--ckpt", str(ckpt), "--digits", "5", "--out", str(a), "--seed", "1"]) == 0
    assert generate.main(["--ckpt", str(ckpt), "--digits", "5", "--out", str(b), "--seed", "1"]) == 0
    assert generate.main(["--ckpt", str(ckpt), "--digits", "5", "--out", str(c), "--seed", "1", "--interpolate"]) == 0
    assert generate.main(["--ckpt", str(ckpt), "--digits", "5", "--out", str(d), "--seed", "2"]) == 0
    assert (np.load(a)["images"] == np.load(b)["images"]).all()
    assert (np.load(a)["images"] != np.load(d)["images"]).any()  # another seed, other digits
    walk = np.load(c)["images"].astype(float)
    steps = np.abs(np.diff(walk, axis=0)).mean(axis=(1, 2))
    assert steps.max() < np.abs(walk[0] - walk[-1]).mean()  # neighbours closer than the ends


@pytest.mark.parametrize("config", ["default.yaml", "dcgan.yaml"])
def test_from_checkpoint_rebuilds_the_module_with_every_weight_in_eval_mode(config, tiny_mnist, in_tmp):
    args = [f"--config={CONFIGS / config}", f"--data.data_dir={tiny_mnist}", "--trainer.enable_model_summary=false"]
    trainer = run([*args, "--max_epochs=0"])
    saved = trainer.lightning_module
    with torch.no_grad():  # weights no fresh module has, and an EMA generator unlike the live one
        for p in saved.parameters():
            p.add_(torch.randn_like(p))
    trainer.save_checkpoint(in_tmp / "m.ckpt")
    module = CGAN.from_checkpoint(in_tmp / "m.ckpt")
    assert type(module.generator) is type(saved.generator)
    assert (module.generator_ema is not None) == (config == "dcgan.yaml")
    assert not module.training and not module.generator.training
    state, expected = module.state_dict(), saved.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


@pytest.mark.parametrize(
    "hparams",
    [
        {"loss": "bce"},  # built in Python: the networks were objects, not class paths
        None,
        {"generator": {"class_path": "cgan.models.NoSuchNet"}, "discriminator": {"class_path": "cgan.models.Nope"}},
    ],
)
def test_from_checkpoint_refuses_a_checkpoint_without_its_config(hparams, tmp_path):
    module = CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, tmp_path / "py.ckpt")
    with pytest.raises(CheckpointError, match="could not rebuild the model from .*py.ckpt .*Checkpoints written by"):
        CGAN.from_checkpoint(tmp_path / "py.ckpt")


def test_a_digit_outside_0_9_is_refused(trained, capsys):
    ckpt, _ = trained
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--ckpt", str(ckpt), "--digits", "3", "12"])
    assert exit_.value.code == 2
    assert "argument --digits: invalid choice: 12" in capsys.readouterr().err


def test_a_missing_checkpoint_is_explained(tmp_path, capsys):
    assert generate.main(["--ckpt", str(tmp_path / "none.ckpt")]) == 1
    assert f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist" in capsys.readouterr().err


def test_generate_uses_the_ema_generator_unless_told_not_to(trained_ema, tmp_path):
    ckpt, _ = trained_ema
    module = CGAN.from_checkpoint(ckpt)
    expected = {
        "ema": generate.to_uint8(generate.generate(module.sampler, [3, 8], 4, seed=5)[0]).numpy(),
        "raw": generate.to_uint8(generate.generate(module.generator, [3, 8], 4, seed=5)[0]).numpy(),
    }
    assert (expected["ema"] != expected["raw"]).any()
    for name, flags in (("ema", []), ("raw", ["--no-ema"])):
        out = tmp_path / f"{name}.npz"
        args = ["--ckpt", str(ckpt), "--digits", "3", "8", "--per-digit", "4", "--seed", "5", "--out", str(out)]
        assert generate.main([*args, *flags]) == 0
        assert (np.load(out)["images"] == expected[name]).all(), name


def scores(out: str) -> dict[str, list[float]]:
    """The numbers of each row of cgan-evaluate's table (``nan`` included, as float)."""
    rows = {}
    for line in out.splitlines()[1:]:
        if line.startswith("("):  # the closing "(N generated digits; T s)"
            break
        words = line.split()
        numbers = [w for w in words if re.fullmatch(r"-?(\d+\.\d+|nan|inf)%?", w)]
        rows[" ".join(words[: len(words) - len(numbers)])] = [float(w.rstrip("%")) for w in numbers]
    return rows


def test_evaluate_scores_the_ema_generator_unless_told_not_to(trained_ema, capsys):
    ckpt, data = trained_ema
    tables = {}
    for name, flags in (("ema", []), ("raw", ["--no-ema"])):
        assert evaluate.main(["--ckpt", str(ckpt), "--data_dir", str(data), "--per-class", "10", *flags]) == 0
        tables[name] = scores(capsys.readouterr().out)
    module = CGAN.from_checkpoint(ckpt)
    direct = {
        name: evaluate.evaluate(str(ckpt), str(data), per_class=10, ema=(name == "ema"))["generated"]["fid"].item()
        for name in ("ema", "raw")
    }
    for name in ("ema", "raw"):
        assert tables[name]["FID"][0] == pytest.approx(direct[name], abs=0.006), name
    assert tables["ema"]["FID"][0] != tables["raw"]["FID"][0]
    assert tables["ema"]["FID"][1] == tables["raw"]["FID"][1]  # the real digits' column does not change
    assert module.generator_ema is not None


def test_evaluate_prints_every_row(trained, capsys):
    ckpt, data = trained
    assert evaluate.main(["--ckpt", str(ckpt), "--data_dir", str(data), "--per-class", "20"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["generated", "real", "(train)"]
    for label in ["FID", "intra-class FID", "accuracy", "precision", "recall", *(f"accuracy {c}" for c in range(10))]:
        row = next(line for line in lines if line.strip().startswith(label + " ") or line.strip() == label)
        assert len(row.replace(label, "", 1).split()) == 2, row
    table = scores(out)
    assert all(np.isfinite(v) for values in table.values() for v in values)  # no nan, no inf
    assert table["FID"][0] > 0 and 0 <= table["accuracy"][0] <= 100
    assert all(0 <= v <= 1 for v in table["precision"] + table["recall"])


def bench(path: Path):
    """A benchmark script as a module, to drive its ``main(args)`` in this process (its variants
    and training runs still start their own)."""
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_speed_benchmark_prints_every_variant_and_the_ratios(tiny_mnist, capsys, monkeypatch):
    monkeypatch.chdir(tiny_mnist.parent)  # a relative --data_dir: (c) trains in a scratch folder of its own
    bench(BENCH).main(["--data_dir", tiny_mnist.name, "--epochs", "2"])
    out = capsys.readouterr().out
    for label in ("(a) seed loop", "(b) bare in-memory loop (floor)", "(c) cgan, default config"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        numbers = [float(v) for v in row[len(label) :].split()]
        assert len(numbers) == 1 + 1 + 2 + 1  # median, images/s, the two epochs, peak memory
        assert all(v > 0 for v in numbers)
        # images/s = the fixture's 200 training images / the median, which is printed rounded to 0.01 s
        assert 200 / (numbers[0] + 0.005) - 1 <= numbers[1] <= 200 / max(numbers[0] - 0.005, 1e-3) + 1
    ratios = re.search(r"\(a\)/\(c\) = ([\d.]+)\s+\(c\)/\(b\) = ([\d.]+)", out)
    assert ratios and float(ratios[1]) > 0 and float(ratios[2]) > 0
    assert out.count("one val/fid + val/acc evaluation") == 1  # after the last epoch
    assert "FLOP floor: " in out


@pytest.mark.slow
def test_quality_benchmark_prints_a_row_per_budget_and_keeps_the_run(tiny_mnist, tmp_path, capsys):
    # after "--", for train.py: scored once, at the run's end (not every 10 of the fixture's tiny epochs)
    rare = callbacks_config(tmp_path / "rare.yaml", {"DigitMetrics": {"every_n_epochs": 1000, "per_class": 10}})
    args = ["--data_dir", str(tiny_mnist), "--config", "default", "--budgets", "2", "--per-class", "10"]
    bench(QUALITY).main([*args, "--keep", str(tmp_path / "runs"), "--", f"--config={rare}", "--data.batch_size=50"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    unit = float(re.search(r"the seed's loop: ([\d.]+) s per epoch \(median of 1\)", lines[0])[1])
    assert "config default" in lines[0] and unit > 0
    assert lines[1].split()[:7] == ["budget", "(seed", "epochs)", "train", "seed", "seconds", "wall"]
    cells = lines[2].split()
    assert float(cells[0]) == 2 and cells[1] == "0"  # the config's seed, read back from the checkpoint
    assert float(cells[2]) == pytest.approx(2 * unit, abs=0.5)
    seconds, wall, epochs = (float(c) for c in cells[2:5])
    assert wall >= max(1, round(seconds)) and epochs > 0
    fid, intra, acc, precision, recall = (float(c.rstrip("%")) for c in cells[5:])
    assert fid > 0 and intra > 0 and 0 <= acc <= 100 and 0 <= precision <= 1 and 0 <= recall <= 1
    run = tmp_path / "runs" / "budget_2" / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples" / "000.png").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"] == 50  # "--" args reach train.py
    assert lines[3].split()[:3] == ["real", "digits", "(ceiling)"] and len(lines) == 4


@pytest.mark.slow
def test_quality_benchmark_trains_each_budget_once_per_seed_and_adds_their_mean(
    tiny_mnist, tmp_path, capsys, monkeypatch
):
    rare = callbacks_config(tmp_path / "rare.yaml", {"DigitMetrics": {"every_n_epochs": 1000, "per_class": 10}})
    args = ["--data_dir", str(tiny_mnist), "--config", "default", "--budgets", "2", "1", "--per-class", "10"]
    quality = bench(QUALITY)
    monkeypatch.setattr(quality, "seed_epoch_seconds", lambda *_: pytest.fail("the seed's loop was timed"))
    # a seed epoch given as 1.5 s, so a budget of 2 is 3 s, told apart from 1.5 s and from the fixture's real seed epoch
    args += ["--seed-epoch-seconds", "1.5", "--seeds", "3", "4", "--keep", str(tmp_path / "runs")]
    quality.main([*args, "--", f"--config={rare}"])
    lines = capsys.readouterr().out.splitlines()
    assert "the seed's loop: 1.50 s per epoch (given)" in lines[0]
    rows = [line.split() for line in lines[2:6]]
    assert [r[0] for r in rows] == ["2"] * 4  # the first budget's two runs, then their mean and sd
    assert [r[1] for r in rows] == ["3", "4", "mean", "sd"]  # each run's seed, read back from its checkpoint
    assert [r[2] for r in rows[:2]] == ["3", "3"]  # seconds: the budget x the seed epoch, for every seed
    runs = [[float(c.rstrip("%")) for c in r[4:]] for r in rows[:2]]  # epochs and the five metrics
    mean, sd = ([float(c.rstrip("%")) for c in r[2:]] for r in rows[2:])
    # printed to 2 decimals (epochs, FIDs, accuracy in %) or 3: the mean and sd of the printed values
    # are within half a last digit of the printed ones, plus the rounding of the runs' values
    for i, values in enumerate(zip(*runs)):
        half = 0.5 * (0.01 if i < 4 else 0.001)
        assert mean[i] == pytest.approx(statistics.mean(values), abs=2 * half + 1e-9)
        assert sd[i] == pytest.approx(statistics.stdev(values), abs=(1 + 2**0.5) * half + 1e-9)
    assert runs[0] != runs[1]  # two seeds, two different runs
    for seed in (3, 4):
        run = tmp_path / "runs" / f"budget_2_seed_{seed}" / "lightning_logs" / "version_0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed_everything"] == seed and config["trainer"]["max_time"] == "00:00:00:03"
    # the second budget's runs, then the mean of those two alone (FID to two decimals)
    second = [line.split() for line in lines[6:10]]
    assert [r[:2] for r in second] == [["1", "3"], ["1", "4"], ["1", "mean"], ["1", "sd"]]
    assert float(second[2][3]) == pytest.approx(statistics.mean(float(r[5]) for r in second[:2]), abs=0.01 + 1e-9)
    assert lines[10].split()[:3] == ["real", "digits", "(ceiling)"] and len(lines) == 11


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "1", "-2"], "--seeds must be different integers from 0 to 2**32 - 1, got [1, -2]"),
        (["--seeds", "1", "1"], "--seeds must be different integers from 0 to 2**32 - 1, got [1, 1]"),
        (["--seeds", str(2**32)], f"--seeds must be different integers from 0 to 2**32 - 1, got [{2**32}]"),
        (["--budgets", "8", "8"], "--budgets must be positive and different, got [8.0, 8.0]"),
        (["--seed-epoch-seconds", "0"], "--seed-epoch-seconds must be a positive number of seconds, got 0.0"),
        (["--seed-epoch-seconds", "nan"], "--seed-epoch-seconds must be a positive number of seconds, got nan"),
        (["--seed-epoch-seconds", "inf"], "--seed-epoch-seconds must be a positive number of seconds, got inf"),
    ],
)
def test_quality_benchmark_refuses_bad_seeds_and_budgets_before_timing_anything(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench(QUALITY).main(["--data_dir", "nowhere", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_quality_benchmark_refuses_a_keep_folder_that_holds_its_runs(tmp_path, capsys):
    (tmp_path / "budget_25_seed_1").mkdir()
    with pytest.raises(SystemExit) as stop:
        bench(QUALITY).main(["--budgets", "25", "--seeds", "0", "1", "--keep", str(tmp_path)])
    err = capsys.readouterr().err
    assert (
        stop.value.code == 2 and f"--keep {tmp_path} already holds budget_25_seed_1: pass an empty or new folder" in err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_speed_benchmark_on_cuda_without_a_gpu_says_so(tiny_mnist):
    with pytest.raises(SystemExit) as stop:  # sys.exit(message): the message on stderr, exit status 1
        bench(BENCH).main(["--data_dir", str(tiny_mnist), "--device", "cuda"])
    assert stop.value.code == "error: --device cuda, but PyTorch sees no CUDA GPU here."
