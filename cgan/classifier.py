"""The MNIST judge: a small CNN whose accuracy and features score generated digits.

Its weights ship with the package (``cgan/weights/``), with their sha256 and test accuracy.
Rebuild them with (deterministic given the seed, about 2.5 minutes on 2 CPU cores):

    python -m cgan.classifier --data_dir DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cgan.data import download, load_split, scale
from cgan.errors import CganError, CheckpointError
from cgan.metrics import scaled_batches

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
RECORD = WEIGHTS.with_suffix(".json")


class MNISTClassifier(nn.Module):
    """``(B, 1, 28, 28)`` in [-1, 1] -> logits ``(B, 10)``.

    ``features(x) -> (B, 128)`` are the penultimate activations: the feature space in which
    cgan computes FID (Inception features judge 28x28 digits poorly and need a download).
    Layers: conv 3x3 (32) - pool - conv 3x3 (64) - pool - linear 128 - linear 10.
    """

    num_features = 128

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, self.num_features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.num_features, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_classifier(path: Path = WEIGHTS, device: torch.device | str = "cpu") -> MNISTClassifier:
    """The shipped classifier in eval mode, after checking the weights' sha256 against their record.

    Its conv weights are channels-last, so its feature maps are too: max pooling is about 3x
    faster that way on a CPU, and the whole pass about 2x.
    """
    record_path = Path(path).with_suffix(".json")
    if not Path(path).is_file() or not record_path.is_file():
        raise CheckpointError(
            f"classifier weights {path} (or {record_path.name}) are missing. Rebuild them: python -m cgan.classifier"
        )
    expected = json.loads(record_path.read_text())["sha256"]
    if sha256(path) != expected:
        raise CheckpointError(
            f"classifier weights {path} do not match their recorded sha256. Reinstall cgan or rebuild them: "
            f"python -m cgan.classifier"
        )
    model = MNISTClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: MNISTClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Accuracy on uint8 images ``(N, 28, 28)`` with integer labels ``(N,)``."""
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in scaled_batches(images, labels, batch_size))
    return correct / len(images)


def train(data_dir: str, epochs: int = 5, seed: int = 0, batch_size: int = 128, lr: float = 2e-3) -> tuple:
    """Train on the 60k split; returns (model, test accuracy). Deterministic given ``seed``."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    download(data_dir)
    images, labels = load_split(data_dir, train=True)
    test_images, test_labels = load_split(data_dir, train=False)
    model = MNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(images), generator=shuffle)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(scale(images[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, test_images, test_labels)
        print(f"epoch {epoch}: test accuracy {acc:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return model, acc


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the MNIST classifier that cgan's metrics use.")
    parser.add_argument("--data_dir", default="data", help="folder holding MNIST/raw (downloaded when missing)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="where to write the weights (and their .json)")
    opts = parser.parse_args(args)
    try:
        model, acc = train(opts.data_dir, epochs=opts.epochs, seed=opts.seed)
    except CganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), opts.out)
    record = {
        "test_accuracy": round(acc, 4),
        "sha256": sha256(opts.out),
        "command": f"python -m cgan.classifier --epochs {opts.epochs} --seed {opts.seed}",
        "torch": torch.__version__,
    }
    opts.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {opts.out} (test accuracy {acc:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
