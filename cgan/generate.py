"""``cgan-generate``: draw digits from a checkpoint into a PNG grid or an ``.npz`` file.

    cgan-generate --ckpt last.ckpt --digits 0 3 7 --per-digit 8 --out grid.png [--seed N]
    cgan-generate --ckpt last.ckpt --per-digit 1000 --out samples.npz
    cgan-generate --ckpt last.ckpt --interpolate --per-digit 10 --out walk.png

A PNG has one row per requested digit. An ``.npz`` holds ``images`` (uint8, N x 28 x 28,
0 = background) and ``labels`` (int64, N). ``--interpolate`` walks each row from one noise
vector to another. The EMA generator is used when the checkpoint has one (``--no-ema``: not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import save_image

from cgan.errors import CganError, cannot_write
from cgan.module import CGAN


def to_uint8(images: Tensor) -> Tensor:
    """``(N, 1, 28, 28)`` in [-1, 1] -> ``(N, 28, 28)`` uint8, background 0 as in MNIST."""
    return ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between noise vectors ``a`` and ``b`` (D,) at ``t`` (T,) -> (T, D)."""
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def generate(
    generator, digits: list[int], per_digit: int, seed: int = 0, interpolate: bool = False
) -> tuple[Tensor, Tensor]:
    """Images ``(len(digits) * per_digit, 1, 28, 28)`` in [-1, 1], row by row, and their labels."""
    rng = torch.Generator().manual_seed(seed)
    labels = torch.tensor(digits).repeat_interleave(per_digit)
    if interpolate:
        ends = torch.randn(len(digits), 2, generator.noise_dim, generator=rng)
        steps = torch.linspace(0, 1, per_digit)
        noise = torch.cat([slerp(a, b, steps) for a, b in ends])
    else:
        noise = torch.randn(len(labels), generator.noise_dim, generator=rng)
    images = torch.cat([generator(noise[i : i + 1000], labels[i : i + 1000]) for i in range(0, len(labels), 1000)])
    return images, labels


def write(out: Path, images: Tensor, labels: Tensor, per_row: int) -> None:
    """Save ``images`` as a .png grid of ``per_row`` columns or as an .npz file; ``OutputError`` when it cannot."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".npz":
            np.savez_compressed(out, images=to_uint8(images).numpy(), labels=labels.numpy())
        else:
            save_image(images, out, nrow=per_row, normalize=True, value_range=(-1, 1))
    except OSError as err:  # a folder on the way that is a file, a path that is a folder, no permission, a full disk
        raise cannot_write(out, err, "an --out") from err


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)), choices=range(10), metavar="D",
                        help="digits to draw, each 0-9 (default: all)")  # fmt: skip
    parser.add_argument("--per-digit", type=int, default=10, help="samples per digit (default 10)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="a .png grid or an .npz file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--interpolate", action="store_true", help="each row walks between two noise vectors")
    parser.add_argument("--no-ema", action="store_true", help="use the raw generator even if an EMA copy exists")
    opts = parser.parse_args(args)
    if opts.per_digit <= 0:
        parser.error(f"--per-digit must be positive, got {opts.per_digit}")
    if opts.out.suffix not in (".png", ".npz"):
        parser.error(f"--out must end in .png or .npz, got {opts.out}")
    if not 0 <= opts.seed < 2**64:
        parser.error(f"--seed must be between 0 and 2**64 - 1, got {opts.seed}")
    try:
        module = CGAN.from_checkpoint(opts.ckpt)
        generator = module.generator if opts.no_ema else module.sampler
        images, labels = generate(generator.eval(), opts.digits, opts.per_digit, opts.seed, opts.interpolate)
        write(opts.out, images, labels, opts.per_digit)
    except CganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(labels)} digits to {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
