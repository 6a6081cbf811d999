"""The project installed as a user installs it (a wheel, not the checkout), run from an empty folder."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import callbacks_config

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd, cwd: Path, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the project's wheel installed (non-editable). Its
    dependencies (torch and the rest, gigabytes) are taken from the test run's environment
    through a path entry, which does not run that environment's editable-install hook."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"  # built from a copy: the build leaves its build/ folder there, not in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("cgan", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", src, cwd=base)
    venv = base / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=base)
    (wheel,) = (base / "dist").glob("cgan-*.whl")
    sh(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=base)
    purelib = sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=base)
    Path(purelib.stdout.strip()).joinpath("deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


@pytest.mark.slow
def test_an_installed_package_trains_resumes_and_generates_from_an_empty_folder(installed, tiny_mnist, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import cgan, torch; print(cgan.__file__, torch.get_num_threads())"
    where, threads = sh(installed / "python", "-c", code, cwd=cwd, env=env).stdout.split()
    assert str(installed.parent) in where  # the wheel's copy, not the checkout
    assert int(threads) == torch.get_num_threads()  # under pytest-xdist both are 1 (conftest.py)

    dcgan = sh(installed / "cgan-train", "--config", "dcgan", "--print_config", cwd=cwd, env=env).stdout
    assert "max_epochs: 12" in dcgan and "cgan.models.ConvGenerator" in dcgan

    few = callbacks_config(tmp_path / "few.yaml", {"DigitMetrics": {"per_class": 20}})  # a quicker final score
    train = [installed / "cgan-train", f"--data.data_dir={tiny_mnist}", "--data.batch_size=20", f"--config={few}"]
    train += ["--trainer.default_root_dir=runs/a", "--trainer.enable_progress_bar=false"]
    sh(*train, "--max_epochs=1", cwd=cwd, env=env)
    run = cwd / "runs/a/lightning_logs/version_0"
    assert (run / "checkpoints/last.ckpt").is_file() and (run / "samples/000.png").is_file()
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
    seed = (run / "config.yaml").read_text()  # the shipped default config, as the run used it
    for line in ("noise_dim: 128", "hidden_dim: 512", "class_path: cgan.callbacks.SampleGrid", "TensorBoardLogger"):
        assert line in seed, line
    assert not (cwd / "lightning_logs").exists()  # nothing outside the chosen root

    sh(*train, "--max_epochs=2", "--ckpt_path=last", cwd=cwd, env=env)
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert (run / "samples/001.png").is_file() and not (run.parent / "version_1").exists()

    out = sh(installed / "cgan-generate", "--ckpt", run / "checkpoints/last.ckpt", "--out", "g.png", cwd=cwd, env=env)
    assert "wrote 100 digits" in out.stdout and (cwd / "g.png").is_file()
