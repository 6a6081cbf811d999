"""``python train.py`` / ``cgan-train``: LightningCLI over the CGAN module and the MNIST data.

With no arguments it trains the seed configuration (``configs/default.yaml``, shipped in the
package as ``cgan.configs``). Any ``--model.*``, ``--data.*`` or ``--trainer.*`` flag and
``--config FILE|NAME`` override it (NAME: a shipped config, e.g. ``dcgan``); ``--max_epochs N``
is short for ``--trainer.max_epochs N``; ``--ckpt_path last|PATH`` resumes. Runs go to
``<trainer.default_root_dir>/lightning_logs/version_N`` (default root: the working directory).
"""

from __future__ import annotations

import importlib
import inspect
import os
import shlex
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from cgan import checkpoint
from cgan.data import MNISTDataModule
from cgan.errors import CganError, ConfigError
from cgan.interrupt import Stopped, requeue_note, slurm_job_id
from cgan.module import CGAN

ALIASES = {"--max_epochs": "--trainer.max_epochs"}


def config_dir() -> Path:
    """The shipped configs: the package ``cgan.configs`` once installed, else ``configs/`` of the checkout."""
    try:
        return Path(next(iter(importlib.import_module("cgan.configs").__path__)))  # a folder of YAML files
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def _shipped(name: str) -> Path:
    return config_dir() / f"{name}.yaml"


def _config_path(value: str) -> str:
    """``--config`` takes a file, or the name of a shipped config (``dcgan`` for ``dcgan.yaml``)."""
    if Path(value).is_file():
        return value
    name = Path(value).stem if Path(value).parent == Path(".") else None
    if name is not None and _shipped(name).is_file():
        return str(_shipped(name))
    names = ", ".join(sorted(p.stem for p in config_dir().glob("*.yaml")))
    raise ConfigError(
        f"--config {value}: no such file, and not a shipped config ({names}). Pass a YAML file or a name."
    )


def _expand_args(args: list[str]) -> list[str]:
    """Apply the aliases and resolve ``--config`` names to files."""
    out, args = [], list(args)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ALIASES:
            arg = ALIASES[name] + eq + value
        elif name == "--config" and (eq or args):
            arg = "--config=" + _config_path(value if eq else args.pop(0))
        out.append(arg)
    return out


def _root(default_root_dir: str | None) -> str:
    return default_root_dir or "."


class CganCLI(LightningCLI):
    """LightningCLI with ``--ckpt_path`` for resuming and range checks made before anything runs."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume training: 'last' (the newest run's last.ckpt under the root) or the path of a checkpoint.",
        )
        for target in ("model.seed", "data.seed"):
            parser.link_arguments("seed_everything", target, compute_fn=int)
        # one knob decides where a run goes: the logger writes under the trainer's root folder
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", compute_fn=_root)

    def before_instantiate_classes(self) -> None:
        config = self.config
        # `seed_everything: true` is drawn by LightningCLI after the links were applied
        config.model.seed = config.data.seed = config.seed_everything
        if config.trainer.max_epochs is not None and config.trainer.max_epochs < -1:
            raise ConfigError(
                f"trainer.max_epochs must be 0 or more, or -1 for no limit, got {config.trainer.max_epochs}."
            )
        if config.trainer.enable_progress_bar is False and config.trainer.callbacks:
            # the configs name a progress bar (to redraw it less often); drop it rather than let
            # Lightning refuse the combination
            config.trainer.callbacks = [
                cb for cb in config.trainer.callbacks if not cb.class_path.endswith("ProgressBar")
            ]
        # D and G are updated by separate backward passes, each of which leaves the other
        # network's parameters without gradients; plain DDP would wait for those gradients
        # forever, so DDP is told to look for unused parameters.
        if config.trainer.strategy == "ddp":
            config.trainer.strategy = "ddp_find_unused_parameters_true"
        root = _root(config.trainer.default_root_dir)
        logger = config.trainer.logger
        tensorboard = hasattr(logger, "class_path") and logger.class_path.endswith("TensorBoardLogger")
        job_id = slurm_job_id()
        if config.ckpt_path is None and job_id is not None and requeue_note(root, job_id).is_file():
            config.ckpt_path = requeue_note(root, job_id).read_text().strip()
            print(f"SLURM job {job_id} was requeued: resuming from {config.ckpt_path}", file=sys.stderr)
        if config.ckpt_path is not None:
            self._resolve_ckpt_path(tensorboard and logger.init_args.get("version") is None)

    def _resolve_ckpt_path(self, tensorboard: bool) -> None:
        config = self.config
        logger = config.trainer.logger
        if config.ckpt_path == "last":
            root = (
                Path(logger.init_args.save_dir) / (logger.init_args.name or "")
                if tensorboard
                else Path(config.trainer.default_root_dir or ".") / "lightning_logs"
            )
            config.ckpt_path = str(checkpoint.find_last(root))
        version = checkpoint.run_version(Path(config.ckpt_path))
        if tensorboard and version is not None:
            logger.init_args.version = version  # keep logging into the run being resumed


def run(args: list[str] | None = None) -> pl.Trainer:
    """Parse ``args`` (default: ``sys.argv[1:]``), train, and return the trainer. Raises ``CganError``."""
    # Adam's second moments underflow into denormal floats, which the CPU handles ~10x slower;
    # flushing them to zero changes nothing measurable and makes an epoch ~20% faster on CPU.
    # The flag is per thread and OpenMP workers copy it when they start, so it is set before
    # building the model can start them.
    torch.set_flush_denormal(True)
    if not _shipped("default").is_file():
        raise ConfigError(
            f"the default config {_shipped('default')} is missing: reinstall the package (pip install .)."
        )
    if args is None:  # from the command line: LightningCLI reads sys.argv itself
        sys.argv[1:] = _expand_args(sys.argv[1:])
    else:
        args = _expand_args(args)
    cli = CganCLI(
        CGAN,
        MNISTDataModule,
        args=args,
        run=False,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_config_files": [str(_shipped("default"))]},
    )
    # Check what can be checked before anything is written: the optimizers' values, and that a
    # checkpoint to resume is readable and fits the model.
    cli.model.configure_optimizers()
    if cli.config.ckpt_path is not None:
        _check_resume(cli)
    # lightning_fabric sets this at import so that probing CUDA never initialises it before a
    # fork; with it set, every optimizer.step() re-loads NVML to ask whether CUDA is there (~5%
    # of a CPU epoch). Training starts its DDP workers as fresh processes, so it is not needed.
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    return cli.trainer


def _check_resume(cli: CganCLI) -> None:
    """Before training writes anything (the run's config.yaml included): refuse a checkpoint the
    model cannot train on from, and warn of each setting the resume changes."""
    ckpt = checkpoint.load(cli.config.ckpt_path)
    cli.model.check_resumable(ckpt)
    signature = inspect.signature(type(cli.model).__init__).parameters.values()
    plain = (type(None), bool, int, float, str)  # defaults a config could hold, and a flag give back
    defaults = {p.name: p.default for p in signature if isinstance(p.default, plain)}
    changed = checkpoint.changed_settings(ckpt, cli.model.hparams, cli.datamodule.hparams, defaults)
    if changed:  # allowed (a lower learning rate, say), but said: the config given may not be the run's
        rank_zero_warn(resume_warning(changed))


def resume_warning(changed: list[tuple[str, object, object]]) -> str:
    """The warning for ``checkpoint.changed_settings``: each change, then the flags (quoted for a
    shell) that give back the checkpoint's values, where it has them."""
    show, absent = checkpoint.show, checkpoint.ABSENT
    flag = {"model.seed": "seed_everything"}  # the seed is given once, linked to model.seed
    said = [
        f"{flag.get(name, name)}: "
        + ("not in the checkpoint" if old is absent else f"{show(old)} in the checkpoint")
        + f", {show(new)} now"
        for name, old, new in changed
    ]
    restore = [shlex.quote(f"--{flag.get(name, name)}={show(old)}") for name, old, _ in changed if old is not absent]
    return (
        "resuming with settings that differ from the checkpoint's: "
        + "; ".join(said)
        + (". To train on with the checkpoint's, stop and add: " + " ".join(restore) if restore else ".")
    )


def main(args: list[str] | None = None) -> int:
    """Train from the command line (``args`` as in ``sys.argv[1:]``); returns the exit code."""
    try:
        run(args)
    except CganError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(f"{stop} {_how_to_resume(stop)}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # outside the training loop, where LastCheckpoint does not listen
        print("Interrupted outside the training loop; the checkpoints written so far are kept.", file=sys.stderr)
        return 130
    return 0


def _how_to_resume(stop: Stopped) -> str:
    if stop.requeued:
        return f"SLURM job {stop.requeued} was requeued and resumes from it by itself."
    config = stop.path.parent.parent / "config.yaml"  # written by LightningCLI into the run folder
    if config.is_file():
        return f"Resume with: --config {config} --ckpt_path {stop.path}"
    return f"Resume with: --ckpt_path {stop.path} and the config you trained with."
