"""Seconds per epoch of the seed config: the seed's loop, a bare in-memory loop, and cgan.

    python bench/speed.py --data_dir DIR [--epochs 3] [--rounds 1]

DIR holds ``MNIST/raw``. Each variant runs in a fresh subprocess, one after another (so
their peak memory is their own and they never compete for cores); with ``--rounds R`` the
three run R times in turn, so a machine whose speed drifts slows all of them alike:

    (a) seed   the original script's loop as its README writes it: torchvision MNIST +
               ToTensor + Normalize, DataLoader(batch 100, shuffle, num_workers 2), sigmoid D
               with BCELoss, G run twice per batch.
    (b) bare   the same maths as a plain loop over an in-memory tensor: the floor.
    (c) cgan   ``python train.py`` with the default config (Lightning, logging, sample grids,
               checkpoints), timed epoch start to epoch start; the evaluation that the config
               runs every 10 epochs and after the last is timed on its own line.

It prints the median seconds per epoch of each, the ratios (a)/(c) and (c)/(b), the peak resident
memory of each training process ((a)'s two DataLoader workers not included), and the FLOP
floor: FLOPs of one epoch divided by a matmul throughput measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """Peak resident memory of this process. Not its children's: a child started by vfork (as
    ``subprocess`` does) is charged the parent's whole resident set, which would count it twice."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_loop(data_dir: str, epochs: int) -> list[float]:
    """(a) The seed's loop, kept as its README writes it."""
    from torch import nn
    from torch.optim import Adam
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    def onehot(labels, n):
        return torch.zeros(labels.size(0), n).scatter_(1, labels.view(-1, 1), 1)

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))])
    trainset = datasets.MNIST(root=data_dir, train=True, download=True, transform=transform)
    trainloader = DataLoader(dataset=trainset, batch_size=100, shuffle=True, num_workers=2)
    D = nn.Sequential(
        nn.Linear(28 * 28 + 10, 512), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.3), nn.Linear(512, 1), nn.Sigmoid()
    )
    G = nn.Sequential(nn.Linear(128 + 10, 512), nn.LeakyReLU(0.2, inplace=True), nn.Linear(512, 28 * 28), nn.Tanh())
    criterion = nn.BCELoss()
    D_optim = Adam(params=D.parameters(), lr=0.001)
    G_optim = Adam(params=G.parameters(), lr=0.001)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, labels in trainloader:
            images = images.view(-1, 28 * 28)
            noises = torch.randn(images.size(0), 128)
            labels = onehot(labels, 10)
            x_labels, z_labels = torch.ones(images.size(0), 1), torch.zeros(images.size(0), 1)
            D_x_loss = criterion(D(torch.cat((images, labels), 1)), x_labels)
            D_z_loss = criterion(D(torch.cat((G(torch.cat((noises, labels), 1)), labels), 1)), z_labels)
            D_loss = D_x_loss + D_z_loss
            D.zero_grad()
            D_loss.backward()
            D_optim.step()
            G_loss = criterion(D(torch.cat((G(torch.cat((noises, labels), 1)), labels), 1)), x_labels)
            G.zero_grad()
            G_loss.backward()
            G_optim.step()
        times.append(time.perf_counter() - start)
    return times


def bare_loop(data_dir: str, epochs: int) -> list[float]:
    """(b) The same maths with no framework: in-memory data, the lean step of cgan.module."""
    from cgan.data import load_split, scale
    from cgan.losses import bce_d_loss, bce_g_loss
    from cgan.models import Discriminator, Generator

    torch.set_flush_denormal(True)  # as cgan.cli does
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # set by importing Lightning; see cgan.cli
    images, labels = load_split(data_dir)
    G, D = Generator(), Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=0.001, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.001, fused=True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images))
        for i in range(0, len(order), 100):
            idx = order[i : i + 100]
            x, y = scale(images.index_select(0, idx)), labels.index_select(0, idx)
            fake = G(torch.randn(len(idx), 128), y)
            logits = D(torch.cat([x, fake.detach()]), torch.cat([y, y]))
            d_loss = bce_d_loss(logits[: len(idx)], logits[len(idx) :])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            D.requires_grad_(False)
            g_loss = bce_g_loss(D(fake, y))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
        times.append(time.perf_counter() - start)
    return times


def cgan_run(data_dir: str, epochs: int) -> tuple[list[float], list[float]]:
    """(c) ``python train.py`` with the default config, in a scratch folder.

    Returns the seconds of each epoch, less the in-training evaluations (``val/fid`` and
    ``val/acc``), and the seconds of each evaluation."""
    from cgan.callbacks import DigitMetrics, EpochTimer
    from cgan.cli import run

    sys.argv[1:] = []  # the arguments below are the whole command line of this run
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        trainer = run(
            [
                f"--max_epochs={epochs}",
                f"--data.data_dir={os.path.abspath(data_dir)}",
                "--trainer.enable_model_summary=false",
            ]
        )
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, EpochTimer))
    metrics = next(cb for cb in trainer.callbacks if isinstance(cb, DigitMetrics))
    # The evaluation runs every n epochs (and after the last): it is reported on its own line,
    # so the epoch that ran it is counted without it, as the other epochs of a long run are.
    times = list(timer.times)
    for epoch, seconds in metrics.seconds.items():
        times[epoch] -= seconds
    return times, list(metrics.seconds.values())


def flop_floor(epochs_batches: int = 600) -> tuple[float, float]:
    """(FLOPs of one epoch of the seed model, fp32 matmul FLOP/s: the best of several timings)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cgan.losses import bce_d_loss, bce_g_loss
    from cgan.models import Discriminator, Generator

    G, D = Generator(), Discriminator()
    x, y = torch.rand(100, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (100,))
    with FlopCounterMode(display=False) as counter:
        fake = G(torch.randn(100, 128), y)
        bce_d_loss(D(x, y), D(fake.detach(), y)).backward()
        D.requires_grad_(False)
        bce_g_loss(D(fake, y)).backward()
    step_flops = counter.get_total_flops()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    seconds = []  # the best of several short timings: what the CPU can do, not what a busy moment allowed
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        seconds.append((time.perf_counter() - start) / 3)
    return step_flops * epochs_batches, 2 * 2048**3 / min(seconds)


VARIANTS = {"seed": seed_loop, "bare": bare_loop, "cgan": cgan_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="run the three variants this many times in turn")
    parser.add_argument("--only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:  # child process: run one variant, print one JSON line
        times = VARIANTS[args.only](args.data_dir, args.epochs)
        times, evals = times if isinstance(times, tuple) else (times, [])
        print(json.dumps({"times": times, "evals": evals, "peak_mb": peak_rss_mb()}))
        return

    results = {name: {"times": [], "evals": [], "peak_mb": 0.0} for name in ("seed", "bare", "cgan")}
    for _ in range(args.rounds):
        for name, res in results.items():
            out = subprocess.run(
                [sys.executable, __file__, "--only", name, "--data_dir", args.data_dir, "--epochs", str(args.epochs)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            child = json.loads(out.stdout.strip().splitlines()[-1])
            res["times"] += child["times"]
            res["evals"] += child["evals"]
            res["peak_mb"] = max(res["peak_mb"], child["peak_mb"])

    flops, throughput = flop_floor()
    med = {k: statistics.median(v["times"]) for k, v in results.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{args.epochs} epochs each, {args.rounds} round(s)"
    )
    width = max(28, 6 * args.epochs * args.rounds + 4)
    print(f"{'variant':<34}{'s/epoch (median)':>18}{'epochs (s)':>{width}}{'peak RSS MB':>14}")
    labels = {"seed": "(a) seed loop", "bare": "(b) bare in-memory loop (floor)", "cgan": "(c) cgan, default config"}
    for name, res in results.items():
        each = " ".join(f"{t:.2f}" for t in res["times"])
        print(f"{labels[name]:<34}{med[name]:>18.2f}{each:>{width}}{res['peak_mb']:>14.0f}")
    print(f"(a)/(c) = {med['seed'] / med['cgan']:.2f}   (c)/(b) = {med['cgan'] / med['bare']:.2f}")
    for seconds in results["cgan"]["evals"]:
        print(f"one val/fid + val/acc evaluation (10,000 generated digits): {seconds:.2f} s")
    print(
        f"FLOP floor: {flops / 1e9:.0f} GFLOP per epoch / {throughput / 1e9:.0f} GFLOP/s (2048^2 fp32 matmul) "
        f"= {flops / throughput:.2f} s; (c) is {med['cgan'] / (flops / throughput):.2f}x the floor"
    )


if __name__ == "__main__":
    main()
