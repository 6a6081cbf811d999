"""``cgan-evaluate``: score a checkpoint's generator against real digits.

    cgan-evaluate --ckpt last.ckpt [--data_dir data]

Prints FID, intra-class FID (mean of the per-class FIDs) and the classifier's accuracy on the
generated digits against the labels they were asked for, per class too; next to them the same
numbers for 10,000 real training digits, the ceiling. Both are scored against the 10,000 test
digits in the feature space of the shipped MNIST classifier.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cgan.classifier import load_classifier
from cgan.data import download, load_split
from cgan.errors import CganError, ConfigError, DataError
from cgan.metrics import DigitQuality, generate_per_class, scaled_batches
from cgan.module import CGAN


def evaluate(ckpt: str, data_dir: str, per_class: int = 1000, seed: int = 1234, ema: bool = True) -> dict:
    """``{"generated": scores, "real": scores}`` as computed by ``DigitQuality``."""
    module = CGAN.from_checkpoint(ckpt)
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
    generator = module.sampler if ema else module.generator
    generated = quality.score(generate_per_class(generator, per_class, seed))
    real = quality.score(scaled_batches(train_images[pick], train_labels[pick]))
    return {"generated": {k: v.cpu() for k, v in generated.items()}, "real": {k: v.cpu() for k, v in real.items()}}


def _fewest(labels: torch.Tensor, num_classes: int = 10) -> tuple[int, int]:
    """``(digit, count)`` of the digit ``labels`` hold the fewest of."""
    counts = torch.bincount(labels, minlength=num_classes)
    return int(counts.argmin()), int(counts.min())


def format_table(results: dict) -> str:
    gen, real = results["generated"], results["real"]
    rows = [f"{'':<18}{'generated':>12}{'real (train)':>14}"]
    rows.append(f"{'FID':<18}{gen['fid']:>12.2f}{real['fid']:>14.2f}")
    rows.append(f"{'intra-class FID':<18}{gen['fid_intra']:>12.2f}{real['fid_intra']:>14.2f}")
    rows.append(f"{'accuracy':<18}{gen['acc'] * 100:>11.2f}%{real['acc'] * 100:>13.2f}%")
    for c in range(len(gen["acc_class"])):
        rows.append(f"{f'  accuracy {c}':<18}{gen['acc_class'][c] * 100:>11.2f}%{real['acc_class'][c] * 100:>13.2f}%")
    return "\n".join(rows)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--per-class", type=int, default=1000, help="generated digits per class (default 1000)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the noise (default 1234)")
    parser.add_argument("--no-ema", action="store_true", help="score the raw generator even if an EMA copy exists")
    opts = parser.parse_args(args)
    if opts.per_class < 2:
        parser.error(f"--per-class must be 2 or more (FID needs two digits of each class), got {opts.per_class}")
    if not 0 <= opts.seed < 2**64:
        parser.error(f"--seed must be between 0 and 2**64 - 1, got {opts.seed}")
    start = time.perf_counter()
    try:
        results = evaluate(opts.ckpt, opts.data_dir, opts.per_class, opts.seed, ema=not opts.no_ema)
    except CganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"({10 * opts.per_class} generated digits; {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
