"""``cgan-evaluate``: score checkpoints' generators against real digits.

    cgan-evaluate --ckpt a.ckpt [b.ckpt ...] [--data_dir data] [--csv scores.csv]

Prints FID, intra-class FID (mean of the per-class FIDs), the classifier's accuracy on the
generated digits against the labels they were asked for (per class too), and precision and
recall (how many generated digits look real; how many real styles are drawn): one column per
checkpoint and, beside them, the same numbers for 10,000 real training digits, the ceiling.
All are scored against the 10,000 test digits in the feature space of the shipped MNIST
classifier. ``--csv`` writes the same numbers, one row per metric (named as the ``val/*``
metrics of training: accuracies as fractions) and one column per checkpoint, then ``real``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from cgan.classifier import load_classifier
from cgan.data import download, load_split
from cgan.errors import CganError, ConfigError, DataError, cannot_write
from cgan.metrics import DigitQuality, generate_per_class, scaled_batches
from cgan.module import CGAN


def evaluate(ckpt: str, data_dir: str, per_class: int = 1000, seed: int = 1234, ema: bool = True) -> dict:
    """``{"generated": scores, "real": scores}`` as computed by ``DigitQuality``."""
    generated, real = evaluate_all([ckpt], data_dir, per_class, seed, ema)
    return {"generated": generated[0], "real": real}


def evaluate_all(
    ckpts: list[str], data_dir: str, per_class: int = 1000, seed: int = 1234, ema: bool = True
) -> tuple[list[dict], dict]:
    """``([scores of each checkpoint's generator], scores of real training digits)``.

    Every checkpoint is loaded before the data (a bad one is refused at once), and the test
    digits' statistics are computed once for all of them. ``ema=False`` scores raw generators.
    """
    modules = [CGAN.from_checkpoint(ckpt) for ckpt in ckpts]
    download(data_dir)
    test_images, test_labels = load_split(data_dir, train=False)
    train_images, train_labels = load_split(data_dir, train=True)
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[: 10 * per_class]
    # a per-class FID needs two digits of each class on both sides; say so before the long part
    few = _fewest(test_labels)
    if few[1] < 2:
        raise DataError(
            f"the test split in {data_dir} holds {few[1]} of digit {few[0]}, and the per-class FID needs at least 2 "
            f"of each digit. Use the official test files."
        )
    few = _fewest(train_labels[pick])
    if few[1] < 2:
        raise ConfigError(
            f"--per-class {per_class} draws {len(pick)} real training digits, only {few[1]} of them of digit "
            f"{few[0]}, and the per-class FID needs at least 2 of each digit. Raise --per-class."
        )
    quality = DigitQuality(load_classifier())
    for images, labels in scaled_batches(test_images, test_labels):
        quality.update(images, labels, real=True)
    generated = []
    for module in modules:
        generator = module.sampler if ema else module.generator
        generated.append(_cpu(quality.score(generate_per_class(generator, per_class, seed))))
    real = _cpu(quality.score(scaled_batches(train_images[pick], train_labels[pick])))
    return generated, real


def _cpu(scores: dict) -> dict:
    return {k: v.cpu() for k, v in scores.items()}


def _fewest(labels: torch.Tensor, num_classes: int = 10) -> tuple[int, int]:
    """``(digit, count)`` of the digit ``labels`` hold the fewest of."""
    counts = torch.bincount(labels, minlength=num_classes)
    return int(counts.argmin()), int(counts.min())


def rows(columns: dict[str, dict]) -> list[tuple[str, str, list[float]]]:
    """``(table label, CSV name, [value of each column])`` per metric; accuracies as fractions."""
    out = [
        ("FID", "fid", [c["fid"].item() for c in columns.values()]),
        ("intra-class FID", "fid_intra", [c["fid_intra"].item() for c in columns.values()]),
        ("accuracy", "acc", [c["acc"].item() for c in columns.values()]),
        ("precision", "precision", [c["precision"].item() for c in columns.values()]),
        ("recall", "recall", [c["recall"].item() for c in columns.values()]),
    ]
    num_classes = len(next(iter(columns.values()))["acc_class"])
    for k in range(num_classes):
        out.append((f"  accuracy {k}", f"acc_{k}", [c["acc_class"][k].item() for c in columns.values()]))
    return out


def format_table(columns: dict[str, dict]) -> str:
    """The text table: a row per metric, a column per ``columns`` entry (header: its key)."""
    widths = [max(12, len(name) + 2) for name in columns]
    lines = ["".join([f"{'':<18}", *(f"{name:>{w}}" for name, w in zip(columns, widths))])]
    for label, name, values in rows(columns):
        if name.startswith("acc"):
            cells = (f"{v * 100:>{w - 1}.2f}%" for v, w in zip(values, widths))
        elif name in ("precision", "recall"):  # fractions, as the paper gives them
            cells = (f"{v:>{w}.3f}" for v, w in zip(values, widths))
        else:
            cells = (f"{v:>{w}.2f}" for v, w in zip(values, widths))
        lines.append("".join([f"{label:<18}", *cells]))
    return "\n".join(lines)


def write_csv(path: Path, columns: dict[str, dict]) -> None:
    """The numbers of ``format_table`` as CSV, to 6 significant digits: ``metric``, then a column per ``columns``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["metric", *columns])
            for _, name, values in rows(columns):
                writer.writerow([name, *(f"{v:.6g}" for v in values)])
    except OSError as err:
        raise cannot_write(path, err, "a --csv") from err


def column_names(ckpts: list[str]) -> list[str]:
    """Short, distinct names for checkpoints: the file name without ``.ckpt`` and its run folder
    (``.../version_0/checkpoints/epoch=011.ckpt`` -> ``version_0/epoch=011``), with more parent
    folders where that does not tell them apart."""
    paths = [Path(ckpt).with_suffix("") for ckpt in ckpts]
    parts = [[p for p in path.parts if p not in ("checkpoints", path.anchor)] for path in paths]
    for n in range(2, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p) for p in parts]


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, nargs="+", help="checkpoints written by train.py, one or more")
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits per class (default 1000)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the noise (default 1234)")
    parser.add_argument("--no-ema", action="store_true", help="score the raw generators even where an EMA copy exists")
    parser.add_argument("--csv", type=Path, help="also write the numbers to this CSV file")
    opts = parser.parse_args(args)
    if opts.per_class < 2:
        parser.error(f"--per-class must be 2 or more (FID needs two digits of each class), got {opts.per_class}")
    if not 0 <= opts.seed < 2**64:
        parser.error(f"--seed must be between 0 and 2**64 - 1, got {opts.seed}")
    start = time.perf_counter()
    try:
        generated, real = evaluate_all(opts.ckpt, opts.data_dir, opts.per_class, opts.seed, ema=not opts.no_ema)
        names = ["generated"] if len(opts.ckpt) == 1 else column_names(opts.ckpt)
        print(format_table({**dict(zip(names, generated)), "real (train)": real}))
        print(f"({10 * opts.per_class} generated digits per checkpoint; {time.perf_counter() - start:.1f} s)")
        if opts.csv is not None:
            write_csv(opts.csv, {**dict(zip(column_names(opts.ckpt), generated)), "real": real})
            print(f"wrote {opts.csv}")
    except CganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
