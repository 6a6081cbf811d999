"""Seconds per epoch of the seed config: the seed's loop, a bare in-memory loop, and cgan.

    python bench/speed.py --data_dir DIR [--epochs 3] [--rounds 1] [--device cpu|cuda]

DIR holds ``MNIST/raw``. Each variant runs in a fresh subprocess, one after another (so
their peak memory is their own and they never compete for cores); with ``--rounds R`` the
three run R times in turn, so a machine whose speed drifts slows all of them alike:

    (a) seed   the original script's loop as its README writes it: torchvision MNIST +
               ToTensor + Normalize, DataLoader(batch 100, shuffle, num_workers 2), sigmoid D
               with BCELoss, G run twice per batch; on the CPU, as the seed runs.
    (b) bare   the same maths as a plain loop over an in-memory tensor on ``--device``: the floor.
    (c) cgan   ``python train.py`` with the default config (Lightning, logging, sample grids,
               checkpoints) on ``--device``, timed epoch start to epoch start; the evaluation
               that the config runs every 10 epochs and after the last is timed on its own line.

It prints the median seconds per epoch and images per second of each, the ratios (a)/(c) and
(c)/(b), the peak resident memory of each training process ((a)'s two DataLoader workers not
included) and, on a GPU, its peak allocated GPU memory, and the FLOP floor: FLOPs of one epoch
divided by a matmul throughput measured on the device.
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_loop(data_dir: str, epochs: int, device: torch.device) -> dict:
    """(a) The seed's loop, kept as its README writes it (on the CPU whatever ``device`` is)."""
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
    return {"times": times, "images": len(trainset)}


def bare_loop(data_dir: str, epochs: int, device: torch.device) -> dict:
    """(b) The same maths with no framework: in-memory data, the lean step of cgan.module."""
    from cgan.data import load_split, scale
    from cgan.losses import bce_d_loss, bce_g_loss
    from cgan.models import Discriminator, Generator

    torch.set_flush_denormal(True)  # as cgan.cli does
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # set by importing Lightning; see cgan.cli
    images, labels = (t.to(device) for t in load_split(data_dir))
    G, D = Generator().to(device), Discriminator().to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=0.001, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.001, fused=True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images), device=device)
        for i in range(0, len(order), 100):
            idx = order[i : i + 100]
            x, y = scale(images.index_select(0, idx)), labels.index_select(0, idx)
            fake = G(torch.randn(len(idx), 128, device=device), y)
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
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"times": times, "images": len(images)}


def cgan_run(data_dir: str, epochs: int, device: torch.device) -> dict:
    """(c) ``python train.py`` with the default config, in a scratch folder.

    Returns the seconds of each epoch, less the in-training evaluations (``val/fid`` and
    ``val/acc``), and the seconds of each evaluation."""
    from cgan.callbacks import DigitMetrics, EpochTimer
    from cgan.cli import run

    sys.argv[1:] = []  # the arguments below are the whole command line of this run
    args = [
        f"--max_epochs={epochs}",
        f"--data.data_dir={os.path.abspath(data_dir)}",  # before the scratch folder becomes the cwd
        "--trainer.enable_model_summary=false",
        # named, not "auto": on a machine with a GPU, (c) runs where (b) runs
        f"--trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
    ]
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            trainer = run(args)
        finally:
            os.chdir(cwd)
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, EpochTimer))
    metrics = next(cb for cb in trainer.callbacks if isinstance(cb, DigitMetrics))
    # The evaluation runs every n epochs (and after the last): it is reported on its own line,
    # so the epoch that ran it is counted without it, as the other epochs of a long run are.
    times = list(timer.times)
    for epoch, seconds in metrics.seconds.items():
        times[epoch] -= seconds
    return {"times": times, "evals": list(metrics.seconds.values()), "images": len(trainer.datamodule.train_data[0])}


def flop_floor(device: torch.device, epochs_batches: int = 600) -> tuple[float, float, int]:
    """(FLOPs of one epoch of the seed model, fp32 matmul FLOP/s on ``device``: the best of
    several timings, and the matrix size it was timed on)."""
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
    n = 8192 if device.type == "cuda" else 2048  # a GPU needs larger matrices to reach its rate
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    seconds = []  # the best of several short timings: what the device can do, not what a busy moment allowed
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(2):
            a @ b
        synchronize(device)
        seconds.append((time.perf_counter() - start) / 2)
    return step_flops * epochs_batches, 2 * n**3 / min(seconds), n


VARIANTS = {"seed": seed_loop, "bare": bare_loop, "cgan": cgan_run}


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="run the three variants this many times in turn")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where (b) and (c) train")
    parser.add_argument("--only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    opts = parser.parse_args(args)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but PyTorch sees no CUDA GPU here.")

    if opts.only:  # child process: run one variant, print one JSON line
        child = VARIANTS[opts.only](opts.data_dir, opts.epochs, device)
        child["peak_mb"] = peak_rss_mb()
        child["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
        print(json.dumps(child))
        return

    results = {name: {"times": [], "evals": [], "peak_mb": 0.0, "gpu_mb": 0.0} for name in ("seed", "bare", "cgan")}
    for _ in range(opts.rounds):
        for name, res in results.items():
            cmd = [sys.executable, __file__, "--only", name, "--data_dir", opts.data_dir, "--epochs", str(opts.epochs)]
            out = subprocess.run(cmd + ["--device", opts.device], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            child = json.loads(out.stdout.strip().splitlines()[-1])
            res["times"] += child["times"]
            res["evals"] += child.get("evals", [])
            res["images"] = child["images"]
            res["peak_mb"] = max(res["peak_mb"], child["peak_mb"])
            res["gpu_mb"] = max(res["gpu_mb"], child["gpu_mb"])

    flops, throughput, n = flop_floor(device)
    med = {k: statistics.median(v["times"]) for k, v in results.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}; (b) and (c) on {device.type}, "
        f"{opts.epochs} epochs each, {opts.rounds} round(s)"
    )
    width = max(28, 6 * opts.epochs * opts.rounds + 4)
    print(f"{'variant':<34}{'s/epoch (median)':>18}{'images/s':>10}{'epochs (s)':>{width}}{'peak RSS MB':>14}")
    labels = {"seed": "(a) seed loop", "bare": "(b) bare in-memory loop (floor)", "cgan": "(c) cgan, default config"}
    for name, res in results.items():
        each = " ".join(f"{t:.2f}" for t in res["times"])
        rate = res["images"] / med[name]
        print(f"{labels[name]:<34}{med[name]:>18.2f}{rate:>10.0f}{each:>{width}}{res['peak_mb']:>14.0f}")
    print(f"(a)/(c) = {med['seed'] / med['cgan']:.2f}   (c)/(b) = {med['cgan'] / med['bare']:.2f}")
    if device.type == "cuda":
        print(
            f"peak GPU memory allocated: (b) {results['bare']['gpu_mb']:.0f} MB, (c) {results['cgan']['gpu_mb']:.0f} MB"
        )
    for seconds in results["cgan"]["evals"]:
        print(f"one val/fid + val/acc evaluation (10,000 generated digits): {seconds:.2f} s")
    print(
        f"FLOP floor: {flops / 1e9:.0f} GFLOP per epoch / {throughput / 1e9:.0f} GFLOP/s ({n}^2 fp32 matmul) "
        f"= {flops / throughput:.2f} s; (c) is {med['cgan'] / (flops / throughput):.2f}x the floor"
    )


if __name__ == "__main__":
    main()
