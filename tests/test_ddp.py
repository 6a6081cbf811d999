"""Lightning DDP on CPU processes (gloo), and mixed precision on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import callbacks_config

from cgan.cli import run

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--data.batch_size=20", "--trainer.enable_model_summary=false"]
BATCHES = 10  # per epoch in one process


def train_subprocess(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def ddp_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        f"--data.data_dir={data_dir}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.callbacks+=helpers.RankReport",
        *extra,
    ]


def assert_same_weights_on_both_ranks(run_dir: Path, batches: int) -> dict:
    """Each rank trained ``batches`` batches (``helpers.RankReport``) and ended with the same weights."""
    rank0, rank1 = torch.load(run_dir / "rank0.pt"), torch.load(run_dir / "rank1.pt")
    assert rank0["batches"] == rank1["batches"] == batches
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    return rank0


@pytest.mark.slow
def test_two_processes_train_identical_weights_and_resume_in_one_process_and_back(tiny_mnist, tmp_path, monkeypatch):
    few = f"--config={callbacks_config(tmp_path / 'few.yaml', {'DigitMetrics': {'per_class': 20}})}"
    # under DDP, rank 0's LR factor is broadcast before every batch; R1's double backward and the
    # class heads' terms are synced
    head = ["--model.discriminator=cgan.models.ConvDiscriminator", "--model.discriminator.classifier=true"]
    head.append("--model.discriminator.twin=true")
    options = ["--model.lr_decay=0.5", "--model.r1_gamma=1.0", "--model.r1_every=2", *head, "--model.aux_weight=0.5"]
    # the DataLoader path first: each rank its own shard, half the single-process batches, the same weights
    # (the config first: it sets the callbacks list that ddp_args adds RankReport to)
    train_subprocess(tmp_path, few, *ddp_args(tiny_mnist, "--max_epochs=1", "--data.in_memory=false", *options))
    assert_same_weights_on_both_ranks(tmp_path, BATCHES // 2)
    monkeypatch.chdir(tmp_path)  # one process: in this one
    run([*FAST, few, f"--data.data_dir={tiny_mnist}", "--max_epochs=2", "--ckpt_path=last", *options])
    run_dir = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * (BATCHES // 2 + BATCHES)  # one DDP epoch, then one whole epoch
    # back to two processes, on the in-memory path
    train_subprocess(tmp_path, few, *ddp_args(tiny_mnist, "--max_epochs=3", "--ckpt_path=last", *options))
    rank0 = assert_same_weights_on_both_ranks(tmp_path, BATCHES // 2)
    assert [r.name for r in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["000.png", "001.png", "002.png"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * (BATCHES // 2 + BATCHES + BATCHES // 2)
    for key, value in rank0["state"].items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_bf16_mixed_on_cpu_computes_in_bf16_and_keeps_losses_finite(tiny_mnist, in_tmp):
    args = [f"--data.data_dir={tiny_mnist}", *FAST, "--max_epochs=1", "--trainer.callbacks+=helpers.OutputDtypes"]
    trainer = run([*args, "--trainer.precision=bf16-mixed"])
    probe = next(cb for cb in trainer.callbacks if type(cb).__name__ == "OutputDtypes")
    assert torch.bfloat16 in probe.dtypes  # the training step really ran under bf16 autocast
    metrics = trainer.callback_metrics
    for name in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        assert torch.isfinite(metrics[name]), name
    assert trainer.lightning_module.generator.model[0].weight.dtype == torch.float32
