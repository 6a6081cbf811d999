"""Comparing runs: TensorBoard's HPARAMS view, sample grids for every logger, cgan-evaluate on several checkpoints."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from cgan import evaluate
from cgan.callbacks import SampleGrid, settings
from cgan.cli import run
from cgan.metrics import DigitQuality
from cgan.models import Discriminator, Generator
from cgan.module import CGAN

FAST = ["--data.batch_size=20", "--max_epochs=1", "--trainer.enable_model_summary=false"]
TINY_DCGAN = ["--config=dcgan", "--model.generator.init_args.channels=4", "--model.discriminator.init_args.channels=4"]
SESSIONS = {"allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The seed config and a tiny dcgan, one epoch each, under one root: (root, data, [trainers])."""
    from conftest import make_mnist

    root = tmp_path_factory.mktemp("two")
    data = make_mnist(root / "data")
    trainers = [
        run([f"--data.data_dir={data}", f"--trainer.default_root_dir={root}", *FAST, *extra])
        # a warm-up and a floor without an EMA do nothing: shown as 0
        for extra in (["--model.ema_warmup=true", "--model.ema_floor=0.9"], TINY_DCGAN)
    ]
    return root, data, trainers


def post(url: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def hparams_over_http(logdir: Path, runs: int) -> tuple[dict, dict]:
    """TensorBoard's answers to ``/experiment`` and ``/session_groups`` once ``runs`` runs are loaded."""
    args = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    server = None
    try:
        deadline = time.monotonic() + 90
        while True:
            if server is None or server.poll() is not None:  # not started, or its port was taken meanwhile
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                server = subprocess.Popen(
                    [*args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                url = f"http://127.0.0.1:{port}/data/plugin/hparams"
            try:
                groups = post(f"{url}/session_groups", {**SESSIONS, "startIndex": 0, "sliceSize": 100})
                if len(groups.get("sessionGroups", [])) == runs:
                    return post(f"{url}/experiment", {}), groups
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "TensorBoard did not list the runs within 90 s"
            time.sleep(1)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.parametrize(("decay", "warmup", "shown"), [(0.99, True, (16.0, 0.9)), (0.99, False, (0, 0))])
def test_the_emas_power_and_floor_are_shown_only_where_its_warm_up_runs(decay, warmup, shown):
    adam = torch.optim.Adam
    module = CGAN(
        Generator(), Discriminator(), adam, adam, ema_decay=decay, ema_warmup=warmup, ema_power=16, ema_floor=0.9
    )
    optimizers = [adam(module.generator.parameters()), adam(module.discriminator.parameters())]
    data = SimpleNamespace(hparams=SimpleNamespace(batch_size=20, dataset="MNIST"))
    row = settings(SimpleNamespace(optimizers=optimizers, datamodule=data, max_epochs=1), module)
    assert (row["ema_decay"], row["ema_power"], row["ema_floor"]) == (decay, *shown)


def test_two_runs_are_rows_of_tensorboards_hparams_view_with_settings_and_val_metrics(two_runs):
    root, _, trainers = two_runs
    experiment, groups = hparams_over_http(root / "lightning_logs", runs=2)
    tags = ["val/fid", "val/fid_intra", "val/acc", "val/precision", "val/recall"]
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == tags
    settings = {
        "generator",
        "discriminator",
        "loss",
        "g_lr",
        "d_lr",
        "batch_size",
        "ema_decay",
        "ema_power",
        "ema_floor",
        "lr_decay",
        "r1_gamma",
        "r1_every",
        "mismatch",
        "aux_weight",
        "twin",
        "mode_seeking",
        "max_epochs",
        "dataset",
    }
    assert {h["name"] for h in experiment["hparamInfos"]} == settings
    rows = {group["name"]: group for group in groups["sessionGroups"]}
    assert rows["version_0"]["hparams"] == {
        "generator": "Generator",
        "discriminator": "Discriminator",
        "loss": "bce",
        "g_lr": 0.001,
        "d_lr": 0.001,
        "batch_size": 20,
        "ema_decay": 0,
        "ema_power": 0,
        "ema_floor": 0,
        "lr_decay": 0,
        "r1_gamma": 0,
        "r1_every": 0,
        "mismatch": 0,
        "aux_weight": 0,
        "twin": False,
        "mode_seeking": 0,
        "max_epochs": 1,
        "dataset": "MNIST",
    }
    dcgan = rows["version_1"]["hparams"]
    assert (dcgan["generator"], dcgan["discriminator"], dcgan["loss"]) == (
        "ConvGenerator",
        "ConvDiscriminator",
        "hinge",
    )
    assert (dcgan["g_lr"], dcgan["d_lr"], dcgan["ema_decay"], dcgan["lr_decay"]) == (0.0008, 0.0008, 0.998, 0.3)
    assert (dcgan["r1_gamma"], dcgan["mismatch"], dcgan["aux_weight"], dcgan["twin"]) == (10.0, 0, 0.5, True)
    assert (dcgan["r1_every"], dcgan["mode_seeking"], dcgan["ema_power"], dcgan["ema_floor"]) == (8, 0.1, 16.0, 0.993)
    for name, trainer in zip(("version_0", "version_1"), trainers):
        shown = {m["name"]["tag"]: m["value"] for m in rows[name]["metricValues"]}
        logged = {tag: trainer.callback_metrics[tag].item() for tag in tags}
        assert shown == pytest.approx(logged), name  # the scores, not the placeholders


def hparams_events(run_dir: Path) -> list[str]:
    """The tags of the hparams plugin's summaries in every event file of ``run_dir``, in order."""
    tags = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            tags += [v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "hparams"]
    return tags


def test_a_resumed_run_keeps_its_one_hparams_row_and_its_scores(tiny_mnist, in_tmp):
    args = [f"--data.data_dir={tiny_mnist}", "--data.batch_size=20", "--trainer.enable_model_summary=false"]
    run([*args, "--max_epochs=1"])
    run([*args, "--max_epochs=2", "--ckpt_path=last"])
    run_dir = in_tmp / "lightning_logs" / "version_0"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert hparams_events(run_dir) == [
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    ]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    fid = events.Scalars("val/fid")
    assert [e.step for e in fid] == [0, 9, 19]  # the placeholder once, then the scores of epochs 1 and 2
    assert math.isnan(fid[0].value) and all(math.isfinite(e.value) for e in fid[1:])


def test_a_run_without_tensorboard_still_writes_its_grids(tiny_mnist, in_tmp):
    run([f"--data.data_dir={tiny_mnist}", *FAST, "--trainer.logger=pytorch_lightning.loggers.CSVLogger"])
    run_dir = in_tmp / "lightning_logs" / "version_0"
    assert (run_dir / "samples" / "000.png").is_file()
    assert (run_dir / "metrics.csv").is_file() and not list(run_dir.glob("events.out.tfevents.*"))


class FakeWandb(WandbLogger):
    """A WandbLogger that needs no wandb: records ``log_image`` calls."""

    def __init__(self) -> None:
        self.calls = []

    def log_image(self, key, images, step=None, **kwargs) -> None:
        self.calls.append((key, images, step))


class FakeMlflowClient:
    def __init__(self) -> None:
        self.calls = []

    def log_image(self, run_id, image, artifact_file=None, **kwargs) -> None:
        self.calls.append((run_id, image, artifact_file))


class FakeMlflow(MLFlowLogger):
    """An MLFlowLogger that needs no mlflow: its client records ``log_image`` calls."""

    def __init__(self) -> None:
        self.client = FakeMlflowClient()

    @property
    def experiment(self) -> FakeMlflowClient:
        return self.client

    @property
    def run_id(self) -> str:
        return "run-1"


def test_the_sample_grid_goes_to_every_logger_that_takes_images(tmp_path):
    module = CGAN(Generator(), Discriminator(), torch.optim.Adam, torch.optim.Adam)
    tensorboard = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    wandb, mlflow, plain = FakeWandb(), FakeMlflow(), CSVLogger(tmp_path / "csv")
    trainer = SimpleNamespace(
        current_epoch=2, max_epochs=3, log_dir=str(tmp_path), is_global_zero=True,
        loggers=[tensorboard, wandb, mlflow, plain],
    )  # fmt: skip
    SampleGrid().on_train_epoch_end(trainer, module)
    tensorboard.finalize("success")
    png = np.asarray(Image.open(tmp_path / "samples" / "002.png"))
    assert png.shape == (10 * 28 + 11 * 2, 10 * 28 + 11 * 2, 3) and png.dtype == np.uint8

    (key, images, step), = wandb.calls  # fmt: skip
    assert (key, step, len(images)) == ("samples", 2, 1) and np.array_equal(images[0], png)
    (run_id, image, artifact), = mlflow.client.calls  # fmt: skip
    assert (run_id, artifact) == ("run-1", "samples/002.png") and np.array_equal(image, png)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    (logged,) = events.Images("samples")
    assert logged.step == 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(logged.encoded_image_string))), png)


def table(out: str) -> tuple[list[str], dict[str, list[float]]]:
    """cgan-evaluate's header words and the numbers of each row (percent signs dropped)."""
    lines = out.splitlines()
    rows = {}
    for line in lines[1:]:
        if line.startswith("("):  # the closing "(N generated digits per checkpoint; T s)"
            break
        words = line.split()
        numbers = [w for w in words if re.fullmatch(r"-?\d+\.\d+%?", w)]
        rows[" ".join(words[: len(words) - len(numbers)])] = [float(w.rstrip("%")) for w in numbers]
    return lines[0].split(), rows


def test_evaluate_compares_checkpoints_in_one_table_and_a_csv(two_runs, tmp_path, capsys, monkeypatch):
    root, data, _ = two_runs
    ckpts = [str(root / f"lightning_logs/version_{v}/checkpoints/last.ckpt") for v in (0, 1)]
    real_batches, update = [], DigitQuality.update

    def counted(self, images, labels, real):
        real_batches.append(real)
        update(self, images, labels, real)

    monkeypatch.setattr(DigitQuality, "update", counted)
    out_csv = tmp_path / "scores.csv"
    assert evaluate.main(["--ckpt", *ckpts, "--data_dir", str(data), "--per-class", "10", "--csv", str(out_csv)]) == 0
    header, rows = table(capsys.readouterr().out)
    assert header == ["version_0/last", "version_1/last", "real", "(train)"]
    assert len(rows) == 5 + 10 and all(len(values) == 3 for values in rows.values())
    # the test digits' statistics (the fixture's 50 in one batch) are computed once for both checkpoints
    assert real_batches.count(True) == 1

    single = evaluate.evaluate(ckpts[1], str(data), per_class=10)
    assert rows["FID"][1] == pytest.approx(single["generated"]["fid"].item(), abs=0.006)
    assert rows["FID"][2] == pytest.approx(single["real"]["fid"].item(), abs=0.006)

    with open(out_csv, newline="") as f:
        scores = list(csv.DictReader(f))
    assert list(scores[0]) == ["metric", "version_0/last", "version_1/last", "real"]
    names = ["fid", "fid_intra", "acc", "precision", "recall", *(f"acc_{k}" for k in range(10))]
    assert [s["metric"] for s in scores] == names
    printed = {
        "fid": "FID",
        "fid_intra": "intra-class FID",
        "acc": "accuracy",
        "precision": "precision",
        "recall": "recall",
    }
    for score in scores:
        label = printed.get(score["metric"], f"accuracy {score['metric'].removeprefix('acc_')}")
        scale = 100 if label.startswith("accuracy") else 1  # the table prints accuracies in percent
        values = [float(score[k]) * scale for k in ("version_0/last", "version_1/last", "real")]
        assert values == pytest.approx(rows[label], abs=0.0006 if label in ("precision", "recall") else 0.006), label


NAMED = {  # checkpoint paths -> their columns
    ("r/version_0/checkpoints/epoch=011.ckpt", "r/version_3/checkpoints/last.ckpt"): (
        "version_0/epoch=011",
        "version_3/last",
    ),
    ("a/r/version_0/checkpoints/last.ckpt", "b/r/version_0/checkpoints/last.ckpt"): (
        "a/r/version_0/last",
        "b/r/version_0/last",
    ),
    ("/tmp/x/m.ckpt", "m.ckpt"): ("x/m", "m"),
}


@pytest.mark.parametrize("ckpts", NAMED)
def test_checkpoints_are_named_by_their_run_and_file(ckpts):
    assert evaluate.column_names(list(ckpts)) == list(NAMED[ckpts])
