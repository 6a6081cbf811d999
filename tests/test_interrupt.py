"""Interrupted at any moment, resumed bit for bit: signals, timed checkpoints, SLURM requeue."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
import torch
from helpers import callbacks_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cgan.checkpoint import AtomicCheckpointIO
from cgan.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = [*helpers.FAST, "--trainer.enable_progress_bar=false"]
EPOCHS = 3
VARIANTS = {
    "seed": [],
    "dataloader": ["--data.in_memory=false"],
    # G with batch norm and an EMA copy whose batch-norm statistics are recomputed
    "dcgan": ["--config=dcgan", "--model.generator.init_args.channels=4", "--model.discriminator.init_args.channels=4"],
}


def args_for(data_dir: Path, variant: str, *extra: str) -> list[str]:
    return [*VARIANTS[variant], f"--data.data_dir={data_dir}", *FAST, f"--max_epochs={EPOCHS}", *extra]


def run_record(run_dir: Path) -> dict:
    """What must match between a straight and a resumed run: final state, batches, logged means."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = {  # NaN (the HPARAMS placeholder of val/*) as a string, so that equal records compare equal
        tag: sorted((e.step, "nan" if math.isnan(e.value) else e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["scalars"]
        if tag.startswith(("train/", "val/"))
    }
    return {
        "ckpt": ckpt,
        "batches": (run_dir.parent.parent / "batches.txt").read_text().splitlines(),
        "scalars": scalars,
    }


def assert_same_run(straight: dict, resumed: dict) -> None:
    a, b = straight["ckpt"], resumed["ckpt"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # both networks, the EMA copy and its batch-norm statistics
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    assert a["train_stats"]["names"] == b["train_stats"]["names"]
    for part in ("total", "count"):  # the epoch's running sums of the logged losses, mid-epoch too
        assert torch.equal(a["train_stats"][part], b["train_stats"][part]), part
    assert straight["batches"] == resumed["batches"]  # every batch of every epoch once, in the same order
    assert straight["scalars"] == resumed["scalars"]  # the per-epoch means, bit for bit


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs of each variant, made once per module: ``get(variant, data)``."""
    base = tmp_path_factory.mktemp("straight")
    records = {}

    def get(variant: str, data: Path) -> dict:
        key = (variant, data)
        if key not in records:
            cwd = base / f"{variant}-{len(records)}"
            cwd.mkdir()
            old = os.getcwd()
            os.chdir(cwd)
            try:
                assert main(args_for(data, variant, "--trainer.callbacks+=helpers.BatchLog")) == 0
            finally:
                os.chdir(old)
            records[key] = run_record(cwd / "lightning_logs" / "version_0")
        return records[key]

    return get


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny MNIST: 10 batches of 20 per epoch."""
    from conftest import make_mnist

    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> Path:
    """50 batches of 20 per epoch, so that a signal sent from outside lands inside the loop."""
    from conftest import make_mnist

    return make_mnist(tmp_path_factory.mktemp("long"), n_train=1000)


CASES = [
    # (variant, signal, point, epoch, batch, batches trained when it stops: (epoch, count))
    ("seed", "SIGTERM", "batch_start", 1, 4, (1, 5)),
    ("seed", "SIGINT", "between_d_and_g", 1, 6, (1, 7)),
    ("seed", "SIGTERM", "batch_end", 0, 2, (0, 3)),
    ("seed", "SIGINT", "checkpoint_write", 0, 0, (0, 10)),
    ("seed", "SIGTERM", "epoch_end", 1, 0, (1, 10)),
    ("seed", "SIGUSR1", "batch_start", 1, 9, (1, 10)),  # the last batch: stops at the epoch's end
    ("dataloader", "SIGTERM", "between_d_and_g", 1, 3, (1, 4)),
    ("dcgan", "SIGINT", "between_d_and_g", 1, 5, (1, 6)),
]


def signal_at(point: str, epoch: int, batch: int, signum: int) -> str:
    args = f"point: {point}, epoch: {epoch}, batch: {batch}, signum: {signum}"
    return f"--trainer.callbacks+={{class_path: helpers.SignalAt, init_args: {{{args}}}}}"


@pytest.mark.parametrize("variant, name, point, epoch, batch, stops_at", CASES)
def test_interrupted_anywhere_then_resumed_matches_the_straight_run_bit_for_bit(
    straight, data, tmp_path, monkeypatch, capsys, variant, name, point, epoch, batch, stops_at
):
    monkeypatch.chdir(tmp_path)
    signum = int(getattr(signal, name))
    stop = signal_at(point, epoch, batch, signum)
    log = "--trainer.callbacks+=helpers.BatchLog"
    assert main(args_for(data, variant, log, stop)) == 128 + signum
    err = capsys.readouterr().err
    run_dir = Path("lightning_logs/version_0")
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    assert f"Stopped by {name} after {stops_at[1]} batches of epoch {stops_at[0]}; saved {ckpt_path}." in err
    assert f"Resume with: --config {run_dir / 'config.yaml'} --ckpt_path {ckpt_path}" in err
    saved = torch.load(ckpt_path, weights_only=True)
    assert saved["global_step"] == 2 * (10 * stops_at[0] + stops_at[1])  # two optimizer steps per batch
    assert len(Path("batches.txt").read_text().splitlines()) == 10 * stops_at[0] + stops_at[1]

    assert main(args_for(data, variant, log, f"--ckpt_path={ckpt_path}")) == 0
    assert not Path("lightning_logs/version_1").exists()
    assert_same_run(straight(variant, data), run_record(run_dir))


def test_a_second_ctrl_c_aborts_without_writing_a_checkpoint(data, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(args_for(data, "seed", "--max_epochs=1")) == 0
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    before = path.read_bytes()
    sigint = int(signal.SIGINT)
    twice = [signal_at("batch_start", 1, 2, sigint), signal_at("between_d_and_g", 1, 2, sigint)]
    with pytest.raises(SystemExit) as exit_:
        main(args_for(data, "seed", "--ckpt_path=last", "--max_epochs=2", *twice))
    assert exit_.value.code == 1
    assert "Second Ctrl-C: stopping now" in capfd.readouterr().err
    assert path.read_bytes() == before  # the half-updated batch was not saved
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_crash_in_the_middle_of_a_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def crash(self, checkpoint, tmp, storage_options=None):
        Path(tmp).write_bytes(before[: len(before) // 2])  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr("lightning_fabric.plugins.io.torch_io.TorchCheckpointIO.save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert not list(tmp_path.glob("*.tmp"))


def timed_config(tmp_path: Path, every_minutes: float) -> Path:
    """The default callbacks with last.ckpt also written every ``every_minutes``, and a batch log."""
    init_args = {"LastCheckpoint": {"every_minutes": every_minutes}, "DigitMetrics": {"per_class": 100}}
    return callbacks_config(tmp_path / "timed.yaml", init_args, extra=("helpers.BatchLog",))


def start(cwd: Path, args: list[str], env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ if env is None else env, PYTHONPATH=str(Path(__file__).parent))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def signal_while_training(proc: subprocess.Popen, cwd: Path, signum: int, after: int) -> str:
    """Sends ``signum`` once ``after`` batches were trained, while the loop runs on at full speed."""
    log = cwd / "batches.txt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= after:
            break
        time.sleep(0.005)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    return out


def trained_batches(cwd: Path) -> int:
    return len((cwd / "batches.txt").read_text().splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGKILL"])
def test_a_signal_from_outside_at_full_speed_then_an_exact_resume(straight, long_data, tmp_path, monkeypatch, name):
    """SIGTERM stops after the batch in flight; SIGKILL loses at most the time since the last
    timed save (here every 30 ms). Each resume matches the straight run bit for bit. (SIGINT goes
    through the same handler; the cases above send it at chosen points of the loop.)"""
    signum = int(getattr(signal, name))
    args = args_for(long_data, "seed", f"--config={timed_config(tmp_path, 0.0005)}")
    proc = start(tmp_path, args)
    out = signal_while_training(proc, tmp_path, signum, after=random.randint(5, 60))
    assert proc.returncode in (128 + signum, -signum), out
    if signum != signal.SIGKILL:
        assert f"Stopped by {name} after" in out and "Resume with: --config" in out
    saved = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    done = saved["global_step"] // 2
    assert 0 < done <= trained_batches(tmp_path) < EPOCHS * 50  # stopped inside the loop
    if signum != signal.SIGKILL:
        assert done == trained_batches(tmp_path)  # the batch in flight was finished and saved
    else:
        assert done % 50 != 0  # a timed save inside an epoch, not only the epochs' ends
    # batches started after the last save are trained again: keep the record of the saved ones
    lines = (tmp_path / "batches.txt").read_text().splitlines()[:done]
    (tmp_path / "batches.txt").write_text("".join(line + "\n" for line in lines))

    monkeypatch.chdir(tmp_path)  # the resume runs in this process
    assert main([*args, "--ckpt_path=last"]) == 0
    assert_same_run(straight("seed", long_data), run_record(tmp_path / "lightning_logs/version_0"))


@pytest.mark.slow
def test_slurm_preemption_saves_requeues_and_the_requeued_job_continues_by_itself(straight, long_data, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # the requeue command, stubbed at its boundary
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    env = dict(os.environ, SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = args_for(long_data, "seed", f"--config={timed_config(tmp_path, 5.0)}")

    proc = start(tmp_path, args, env)
    out = signal_while_training(proc, tmp_path, signal.SIGUSR1, after=random.randint(5, 60))
    assert proc.returncode == 128 + signal.SIGUSR1, out
    assert "SLURM job 4242 was requeued and resumes from it by itself." in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    note = tmp_path / "slurm-4242.resume"
    assert Path(note.read_text().strip()) == (tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt").resolve()

    proc = start(tmp_path, args, env)  # the requeued job: the same command line
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "SLURM job 4242 was requeued: resuming from" in out
    assert not note.exists()  # the run is complete
    assert_same_run(straight("seed", long_data), run_record(tmp_path / "lightning_logs/version_0"))
