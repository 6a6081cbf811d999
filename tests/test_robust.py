"""Runs that survive: exact resume, interruption, divergence, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FAST

from cgan.checkpoint import ABSENT, changed_settings, show
from cgan.cli import main, resume_warning, run

ROOT = Path(__file__).resolve().parent.parent
BATCHES = 10


def cli(data_dir: Path, *extra: str) -> int:
    return main([f"--data.data_dir={data_dir}", *FAST, *extra])


def last_ckpt(root: Path, version: int = 0) -> dict:
    return torch.load(root / f"lightning_logs/version_{version}/checkpoints/last.ckpt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]


def test_resume_at_an_epoch_boundary_is_bit_identical(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    assert cli(tiny_mnist, "--max_epochs=4") == 0
    monkeypatch.chdir(tmp_path / "split")
    assert cli(tiny_mnist, "--max_epochs=2") == 0
    assert cli(tiny_mnist, "--max_epochs=4", "--ckpt_path=last") == 0
    straight, split = last_ckpt(tmp_path / "straight"), last_ckpt(tmp_path / "split")
    assert straight["global_step"] == 2 * 4 * BATCHES
    assert_same_training_state(straight, split)


def test_a_nan_stops_training_with_the_message_and_keeps_the_last_good_checkpoint(tiny_mnist, in_tmp, capsys):
    assert cli(tiny_mnist, "--max_epochs=1") == 0
    path = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    before = path.read_bytes()
    code = cli(
        tiny_mnist,
        "--max_epochs=3",
        "--ckpt_path=last",
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks+=helpers.InjectNaN",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "error: d_loss and g_loss became non-finite in epoch 1 (detected at batch 4, global step 28)" in err
    assert "the last saved checkpoint was kept" in err
    assert path.read_bytes() == before
    ckpt = torch.load(path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_checkpoint_with_nan_weights_is_never_written(tiny_mnist, in_tmp):
    trainer = run([f"--data.data_dir={tiny_mnist}", *FAST, "--max_epochs=1"])
    with torch.no_grad():
        trainer.lightning_module.discriminator.model[0].bias[0] = float("inf")
    from cgan.errors import DivergenceError

    with pytest.raises(DivergenceError, match="weight discriminator.model.0.bias is non-finite"):
        trainer.save_checkpoint(in_tmp / "broken.ckpt")
    assert not (in_tmp / "broken.ckpt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.batch_size=0"], "error: data.batch_size must be a positive integer, got 0."),
        (["--model.g_optimizer.lr=-1"], "error: model.g_optimizer: Invalid learning rate: -1.0."),
        (["--model.d_optimizer.lr=0"], "error: model.d_optimizer: the learning rate must be positive, got 0.0."),
        (["--model.generator.noise_dim=0"], "error: Generator: noise_dim and hidden_dim must be positive, got 0"),
        (["--trainer.max_epochs=-2"], "error: trainer.max_epochs must be 0 or more, or -1 for no limit, got -2."),
    ],
)
def test_out_of_range_values_fail_before_anything_is_written(tiny_mnist, in_tmp, capsys, args, message):
    code = main([f"--data.data_dir={tiny_mnist}", *FAST, "--max_epochs=1", *args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert not (in_tmp / "lightning_logs").exists()


def test_unknown_config_keys_are_rejected(tiny_mnist, in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([f"--data.data_dir={tiny_mnist}", "--model.noise_size=64"])
    assert exit_.value.code == 2
    assert "noise_size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "error: checkpoint {p} does not exist. Pass an existing .ckpt file, or 'last'."),
        ("hello", "error: {p} is not a readable checkpoint"),
    ],
)
def test_bad_checkpoint_paths_are_explained(tiny_mnist, in_tmp, capsys, content, message):
    path = in_tmp / "some.ckpt"
    if content is not None:
        path.write_text(content)
    code = cli(tiny_mnist, f"--ckpt_path={path}", "--max_epochs=1")
    assert code == 1
    assert message.format(p=path) in capsys.readouterr().err
    assert not (in_tmp / "lightning_logs").exists()


def test_resume_with_nothing_to_resume_is_explained(tiny_mnist, in_tmp, capsys):
    assert cli(tiny_mnist, "--ckpt_path=last", "--max_epochs=1") == 1
    err = capsys.readouterr().err
    assert "error: --ckpt_path last: no last.ckpt under lightning_logs/version_*/checkpoints/" in err


@pytest.mark.parametrize(
    "change, detail",
    [
        ("--model.generator.noise_dim=64", "generator.model.0.weight: (512, 138) in the checkpoint, (512, 74) here"),
        ("--model.discriminator.hidden_dim=256", "discriminator.model.0.bias: (512,) in the checkpoint, (256,) here"),
    ],
)
def test_a_checkpoint_of_another_architecture_is_refused_untouched(tiny_mnist, in_tmp, capsys, change, detail):
    assert cli(tiny_mnist, "--max_epochs=1") == 0
    path = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    before = path.read_bytes()
    assert cli(tiny_mnist, "--ckpt_path=last", "--max_epochs=2", change) == 1
    err = capsys.readouterr().err
    assert "error: the checkpoint was made with a different architecture" in err
    assert detail in err
    assert path.read_bytes() == before


def test_changed_settings_are_named_as_on_the_command_line():
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "betas": [0.0, 0.9], "amsgrad": False}}
    step = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 3}}
    cosine = {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 5}}
    saved = {
        "hyper_parameters": {
            "_instantiator": "x",
            "g_optimizer": adam,
            "g_scheduler": None,
            "d_scheduler": step,
            "ema_warmup": True,
        },
        "datamodule_hyper_parameters": {"batch_size": 20, "dataset": "MNIST", "data_dir": "a", "num_workers": 0},
    }
    # a newer torch: one optimizer argument more, which the checkpoint lacks
    newer_torch = {**adam["init_args"], "betas": [0.5, 0.9], "amsgrad": True, "decoupled_weight_decay": False}
    model = {
        "_instantiator": "y",
        "g_optimizer": {**adam, "init_args": newer_torch},
        "g_scheduler": step,  # switched on
        "d_scheduler": cosine,  # another class: compared as a whole
        "ema_warmup": False,
        "mode_seeking": 0.05,  # a setting the checkpoint's version did not have
        "mismatch": None,  # and one it did not have, left off
    }
    data = {"batch_size": 20, "dataset": "KMNIST", "data_dir": "b", "num_workers": 2}
    assert changed_settings(saved, model, data) == [
        ("model.d_scheduler", step, cosine),
        ("model.ema_warmup", True, False),
        ("model.g_optimizer.init_args.amsgrad", False, True),
        ("model.g_optimizer.init_args.betas", [0.0, 0.9], [0.5, 0.9]),
        ("model.g_scheduler", None, step),
        ("model.mode_seeking", ABSENT, 0.05),
        ("data.dataset", "MNIST", "KMNIST"),
    ]
    assert changed_settings(saved, saved["hyper_parameters"], saved["datamodule_hyper_parameters"]) == []
    assert changed_settings({}, {"lr_decay": None}, {}) == []  # nothing saved, nothing set: nothing changed
    # a setting added after the checkpoint was written: it trained as the setting's default does
    defaults = {"ema_power": 8.0, "mode_seeking": None, "ema_warmup": False}  # the checkpoint's True wins
    assert changed_settings(saved, {**saved["hyper_parameters"], "ema_power": 8.0}, {}, defaults) == []
    assert changed_settings(saved, {**saved["hyper_parameters"], "ema_power": 16.0}, {}, defaults) == [
        ("model.ema_power", 8.0, 16.0)
    ]
    added = changed_settings(saved, {**model, "ema_warmup": True}, {}, defaults)
    assert added[-1] == ("model.mode_seeking", None, 0.05)  # off then, as its default: null gives it back
    assert [show(v) for v in (None, True, 0.05, [0.0, 0.9], "hinge", {"a": 1})] == [
        "null",
        "true",
        "0.05",
        "[0.0,0.9]",
        "hinge",
        '{"a":1}',
    ]


def test_the_resume_warning_gives_flags_a_shell_takes_back():
    changed = [
        ("model.g_scheduler", {"class_path": "S"}, None),
        ("model.mode_seeking", ABSENT, 0.1),
        ("model.seed", 0, 3),
    ]
    assert resume_warning(changed) == (
        "resuming with settings that differ from the checkpoint's: "
        'model.g_scheduler: {"class_path":"S"} in the checkpoint, null now; '
        "model.mode_seeking: not in the checkpoint, 0.1 now; seed_everything: 0 in the checkpoint, 3 now. "
        "To train on with the checkpoint's, stop and add: "
        """'--model.g_scheduler={"class_path":"S"}' --seed_everything=0"""
    )
    assert resume_warning([("model.mode_seeking", ABSENT, 0.1)]).endswith("0.1 now.")  # nothing to give back
