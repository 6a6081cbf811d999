"""Quality per minute of training: a config trained for budgets counted in epochs of the seed's loop.

    python bench/quality.py --data_dir DIR [--config dcgan] [--budgets 8 25] [--seed-epochs 1] [--seeds 0 1 ...]
                            [--seed-epoch-seconds S]

DIR holds ``MNIST/raw``. The budgets are counted in epochs of the seed's original loop (variant
(a) of ``bench/speed.py``), timed first in the same run, so a row means the same on a fast and
a slow machine. Then, one after another, in fresh processes:

    1. ``--seed-epochs`` epochs of the seed's loop; its median epoch is the unit ``E``.
    2. For each budget B: ``python train.py --config C --trainer.max_time B x E`` in a scratch
       folder, with no epoch limit, so the run stops on the clock (the config's LR schedule,
       if it has one, sees the time limit).
    3. Once every run is done, ``cgan-evaluate``'s metrics on each run's last checkpoint (the
       data read and the real digits scored once for all): 10,000 generated digits (EMA
       generator when there is one) against the 10,000 test digits.

It prints one row per run (its training seed, seconds, the epochs it trained, FID, intra-class
FID, accuracy, precision, recall) and a row for 10,000 real training digits, the ceiling.
``--seeds S1 S2 ...`` trains each budget once per training seed (``--seed_everything``: G's and
D's first weights, the data order and every noise draw) and adds the mean and standard deviation
of each budget's runs: one run is one draw, and a config is compared over several.
``--seed-epoch-seconds S`` takes ``E`` as S instead of timing it, to give several benchmark runs
on one machine the same budgets in seconds when they compare settings: the seed's loop, timed
alone, moves from one run to the next (docs/metrics.md).
``--keep DIR`` keeps the runs (``DIR/budget_B/lightning_logs/version_0``, or
``DIR/budget_B_seed_S/...`` with ``--seeds``: grids, checkpoints, TensorBoard events);
arguments after ``--`` go to every ``train.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS = {"fid": "FID", "fid_intra": "intra FID", "acc": "accuracy", "precision": "precision", "recall": "recall"}
sys.path.insert(0, str(ROOT))


def seed_epoch_seconds(data_dir: str, epochs: int) -> float:
    """The median seconds of an epoch of the seed's own loop, timed by ``bench/speed.py`` in a fresh process."""
    cmd = [sys.executable, str(ROOT / "bench" / "speed.py"), "--only", "seed", "--data_dir", data_dir]
    out = subprocess.run([*cmd, "--epochs", str(epochs)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the seed's loop failed:\n{out.stderr[-3000:]}")
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1])["times"])


def cpu_name() -> str:
    """The CPU's model name, as the OS reports it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``seconds`` (rounded to a whole second, at least 1)."""
    s = max(1, round(seconds))
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def train(config: str, data_dir: str, seconds: float, root: Path, extra: list[str]) -> tuple[Path, float]:
    """Train ``config`` for ``seconds`` in a fresh process under ``root``: (its last checkpoint, wall seconds)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        config,
        f"--data.data_dir={os.path.abspath(data_dir)}",
        f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=-1",  # the clock stops the run
        f"--trainer.max_time={max_time(seconds)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"training {config} failed:\n{out.stderr[-3000:]}")
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", wall


def trained_epochs_and_seed(ckpt: Path, train_digits: int) -> tuple[float, int]:
    """Epochs a checkpoint has trained (with the fraction of an unfinished one) and its training seed."""
    from cgan.checkpoint import load

    state = load(ckpt)
    batches = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    epochs = batches / -(-train_digits // state["datamodule_hyper_parameters"]["batch_size"])
    return epochs, state["hyper_parameters"]["seed"]


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw")
    parser.add_argument("--config", default="dcgan", help="a shipped config's name or a YAML file (default dcgan)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[8, 25], help="in epochs of the seed's loop")
    parser.add_argument("--seed-epochs", type=int, default=1, help="epochs of the seed's loop to time (default 1)")
    parser.add_argument(
        "--seed-epoch-seconds", type=float, help="take the seed's epoch as this many seconds instead of timing it"
    )
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits per class scored (default 1000)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="train each budget once per training seed (default: the config's)"
    )
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    opts = parser.parse_args(ours)
    if any(b <= 0 for b in opts.budgets) or len(set(opts.budgets)) < len(opts.budgets):
        parser.error(f"--budgets must be positive and different, got {opts.budgets}")
    if opts.seed_epoch_seconds is not None and not 0 < opts.seed_epoch_seconds < math.inf:
        parser.error(f"--seed-epoch-seconds must be a positive number of seconds, got {opts.seed_epoch_seconds}")
    seeds = opts.seeds or [None]
    if opts.seeds is not None and (any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) < len(seeds)):
        parser.error(f"--seeds must be different integers from 0 to 2**32 - 1, got {opts.seeds}")
    names = {(b, s): f"budget_{b:g}" + ("" if s is None else f"_seed_{s}") for b in opts.budgets for s in seeds}
    taken = [name for name in names.values() if opts.keep and (opts.keep / name).exists()]
    if taken:
        parser.error(f"--keep {opts.keep} already holds {', '.join(taken)}: pass an empty or new folder")

    import torch

    from cgan.data import split_size
    from cgan.evaluate import evaluate_all

    if opts.seed_epoch_seconds is None:
        unit, how = seed_epoch_seconds(opts.data_dir, opts.seed_epochs), f"median of {opts.seed_epochs}"
    else:
        unit, how = opts.seed_epoch_seconds, "given"
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"config {opts.config}; the seed's loop: {unit:.2f} s per epoch ({how})",
        flush=True,
    )
    train_digits = split_size(opts.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        keep = opts.keep or Path(tmp)
        runs = []  # (budget, seconds, wall seconds, last checkpoint)
        for (budget, seed), name in names.items():
            seconds, flags = budget * unit, extra if seed is None else [*extra, f"--seed_everything={seed}"]
            ckpt, wall = train(opts.config, opts.data_dir, seconds, keep / name, flags)
            runs.append((budget, seconds, wall, ckpt))
        # one evaluation for every run: the data is read and the real digits are scored once
        generated, real = evaluate_all([str(ckpt) for *_, ckpt in runs], opts.data_dir, per_class=opts.per_class)
        facts = [trained_epochs_and_seed(ckpt, train_digits) for *_, ckpt in runs]  # before the scratch folder goes
    header = f"{'budget (seed epochs)':>22}{'train seed':>12}{'seconds':>9}{'wall':>7}{'epochs':>8}"
    print(header + "".join(f"{name:>11}" for name in METRICS.values()))
    for budget in opts.budgets:
        rows = []  # this budget's runs: epochs and metrics, for their mean and sd
        for (b, seconds, wall, _), scores, (epochs, seed) in zip(runs, generated, facts):
            if b == budget:
                rows.append({"epochs": epochs, **{k: scores[k].item() for k in METRICS}})
                print(f"{budget:>22g}{seed:>12}{seconds:>9.0f}{wall:>7.0f}{epochs:>8.2f}{row(rows[-1])}")
        if len(rows) > 1:
            for label, stat in (("mean", statistics.mean), ("sd", statistics.stdev)):
                cells = {k: stat([r[k] for r in rows]) for k in rows[0]}
                print(f"{budget:>22g}{label:>12}{'':>16}{cells['epochs']:>8.2f}{row(cells)}")
    print(f"{'real digits (ceiling)':>22}{'':>36}{row({k: real[k].item() for k in METRICS})}")


def row(scores: dict[str, float]) -> str:
    """The metric cells of a table row: FIDs to two decimals, fractions as percentages or to three."""
    cells = [f"{scores['fid']:>11.2f}", f"{scores['fid_intra']:>11.2f}", f"{scores['acc'] * 100:>10.2f}%"]
    cells += [f"{scores[name]:>11.3f}" for name in ("precision", "recall")]
    return "".join(cells)


if __name__ == "__main__":
    main()
