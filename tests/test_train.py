"""End-to-end runs of the training CLI, in-process, on the tiny fixture."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from helpers import FAST, callbacks_config, recorder
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cgan.callbacks import VAL_METRICS
from cgan.cli import main, run
from cgan.losses import LOSSES
from cgan.models import Discriminator
from cgan.module import CGAN

BATCHES = 10  # 200 fixture images / 20
DCGAN = str(Path(__file__).resolve().parent.parent / "configs" / "dcgan.yaml")
# plain SGD for both networks (Adam's first step is lr * sign(gradient)): one step's size is known
SGD = [f"--model.{net}_optimizer{arg}" for net in ("g", "d") for arg in ("=torch.optim.SGD", ".lr=0.1")]
# dcgan for one batch (two optimizer steps: D's update, then G's) with SGD and no EMA
ONE_BATCH = ["--config", DCGAN, "--data.batch_size=20", "--trainer.max_steps=2", "--model.ema_decay=null", *SGD]


def train(data_dir: Path, *extra: str):
    args = [f"--data.data_dir={data_dir}", *FAST, "--trainer.callbacks+=helpers.Recorder", *extra]
    return run(args)


def adam_steps(optimizer) -> set[int]:
    return {int(state["step"]) for state in optimizer.state.values()}


def test_one_epoch_trains_both_networks_and_writes_every_artifact(tiny_mnist, in_tmp):
    trainer = train(tiny_mnist, "--max_epochs=1")
    module, rec = trainer.lightning_module, recorder(trainer)
    opt_g, opt_d = trainer.optimizers
    assert adam_steps(opt_g) == adam_steps(opt_d) == {BATCHES}
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in module.generator.parameters()}
    final = module.state_dict()
    for name in ("generator.model.0.weight", "generator.model.2.bias", "discriminator.model.0.weight"):
        assert not torch.equal(rec.initial[name], final[name]), name
    assert torch.equal(rec.initial["sample_noise"], final["sample_noise"])

    run_dir = in_tmp / "lightning_logs" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list(run_dir.rglob("*.tmp"))
    grid = Image.open(run_dir / "samples" / "000.png")
    assert grid.size == (10 * 28 + 11 * 2, 10 * 28 + 11 * 2)  # 10x10 digits, 2-pixel gaps

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "samples" in events.Tags()["images"]
    scalars = set(events.Tags()["scalars"])
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"} <= scalars
    d_real = events.Scalars("train/d_real")[0]
    assert 0.0 <= d_real.value <= 1.0
    assert d_real.step == BATCHES - 1  # the x-axis counts batches, not optimizer steps


def test_in_training_metrics_and_times_are_logged_on_their_schedule(tiny_mnist, in_tmp):
    config = callbacks_config(in_tmp / "metrics.yaml", {"DigitMetrics": {"every_n_epochs": 2, "per_class": 20}})
    train(tiny_mnist, f"--config={config}", "--max_epochs=3")
    events = EventAccumulator(str(in_tmp / "lightning_logs" / "version_0"))
    events.Reload()
    scores = {tag: events.Scalars(tag)[1:] for tag in VAL_METRICS}
    assert set(scores) == {"val/fid", "val/fid_intra", "val/acc", "val/precision", "val/recall"}
    for tag, values in scores.items():  # after the HPARAMS view's placeholder: every 2nd epoch and the last
        assert math.isnan(events.Scalars(tag)[0].value) and events.Scalars(tag)[0].step == 0, tag
        assert [e.step for e in values] == [2 * BATCHES - 1, 3 * BATCHES - 1], tag
    for e in scores["val/fid"] + scores["val/fid_intra"]:
        assert math.isfinite(e.value) and e.value > 0
    assert all(0 <= e.value <= 1 for tag in ("val/acc", "val/precision", "val/recall") for e in scores[tag])
    times = events.Scalars("time/epoch_seconds")
    assert [e.step for e in times] == [0, 1, 2] and all(e.value > 0 for e in times)
    assert [e.step for e in events.Images("samples")] == [0, 1, 2]  # the image's step is the epoch


@pytest.mark.parametrize("mismatch", [None, 0.25])
def test_logged_d_real_and_d_fake_are_d_of_real_and_of_generated_digits(tiny_mnist, in_tmp, mismatch):
    nets = ["--model.generator=helpers.MarkedGenerator", "--model.discriminator=helpers.MarkedDiscriminator"]
    metrics = train(tiny_mnist, "--max_epochs=1", *nets, f"--model.mismatch={mismatch or 'null'}").callback_metrics
    assert metrics["train/d_real"].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    # only G's digits: not the real ones shown again under wrong labels (logit +3)
    assert metrics["train/d_fake"].item() == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item())
    real_term, fake_term = torch.nn.functional.softplus(torch.tensor([-3.0, -3.0])).tolist()
    if mismatch:  # 5 real digits join the 20 generated ones on D's fake side, each scored softplus(3)
        fake_term = (20 * fake_term + 5 * torch.nn.functional.softplus(torch.tensor(3.0)).item()) / 25
    assert metrics["train/d_loss"].item() == pytest.approx(real_term + fake_term)
    assert metrics["train/g_loss"].item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(3.0)).item())


def test_the_class_heads_losses_are_logged_apart_from_the_gan_losses(tiny_mnist, in_tmp):
    nets = ["--model.generator=helpers.MarkedGenerator", "--model.discriminator=helpers.NamingDiscriminator"]
    trainer = train(tiny_mnist, "--max_epochs=1", *nets, "--model.aux_weight=0.5")
    metrics, labels = trainer.callback_metrics, trainer.datamodule.train_data[1]
    assert metrics["train/d_class"].item() == pytest.approx(math.log(10))  # real digits only: all 10 logits 0
    # G's digits: logit 4 for digit 0, so the cross-entropy is log(e^4 + 9) - 4 where digit 0 was asked for
    zeros = (labels == 0).float().mean().item()
    assert 0 < zeros < 1
    assert metrics["train/g_class"].item() == pytest.approx(math.log(math.exp(4) + 9) - 4 * zeros)
    softplus = torch.nn.functional.softplus
    assert metrics["train/d_loss"].item() == pytest.approx(2 * softplus(torch.tensor(-3.0)).item())  # GAN loss alone
    assert metrics["train/g_loss"].item() == pytest.approx(softplus(torch.tensor(3.0)).item())


def test_the_class_head_learns_in_ds_update_and_teaches_g_in_its_own(tiny_mnist, in_tmp):
    runs = {}
    for weight in ("null", 0.5, 2.0):  # the same seed, so the same draws: only the class terms differ
        trainer = train(tiny_mnist, *ONE_BATCH, f"--model.aux_weight={weight}", f"--trainer.default_root_dir={weight}")
        runs[weight] = dict(trainer.lightning_module.named_parameters())
    start = recorder(trainer).initial
    for head in ("discriminator.classifier.weight", "discriminator.twin.weight"):
        assert torch.equal(start[head], runs["null"][head])  # built but unused without aux_weight
        assert not torch.equal(start[head], runs[2.0][head])  # D's update trained it (real digits / G's)
    for name, value in runs[0.5].items():
        if name.startswith("generator."):  # G's update follows G's weight of the class term
            assert not torch.equal(value, runs[2.0][name]), name
        if name.startswith("discriminator.features."):  # the head's loss shapes D's features too
            assert not torch.equal(value, runs["null"][name]), name


def test_the_twin_head_learns_gs_digits_and_g_moves_away_from_it(tiny_mnist, in_tmp):
    nets = ["--model.generator=helpers.ShiftedGenerator", "--model.discriminator=helpers.TwinNamingDiscriminator"]
    # one batch; with mismatch, real digits under wrong labels follow G's among D's inputs
    trainer = train(tiny_mnist, "--trainer.max_steps=2", *nets, *SGD, "--model.aux_weight=0.5", "--model.mismatch=0.5")
    metrics, module = trainer.callback_metrics, trainer.lightning_module
    assert metrics["train/d_twin"].item() == pytest.approx(math.log(math.exp(5) + 9) - 5, rel=1e-5)  # G's digits only
    assert metrics["train/d_class"].item() == pytest.approx(math.log(10))  # the class head: real digits only
    # D's update descends the twin's cross-entropy: its bias by SGD's 0.1 x (1 - p), p = e^5 / (e^5 + 9)
    bias = 0.1 * (1 - math.exp(5) / (math.exp(5) + 9))
    assert module.discriminator.twin_bias.item() == pytest.approx(bias, rel=1e-5)
    # G's update sees the updated twin: its cross-entropy, logged as g_twin, is that of logit 5 + bias
    logit = 5 + bias
    assert metrics["train/g_twin"].item() == pytest.approx(math.log(math.exp(logit) + 9) - logit, rel=1e-5)
    # G's loss has -aux_weight x that cross-entropy: SGD climbs its slope 10 (p' - 1), p' = e^logit / (e^logit + 9)
    slope = 10 * (math.exp(logit) / (math.exp(logit) + 9) - 1)
    assert module.generator.shift.item() == pytest.approx(0.1 * 0.5 * slope, rel=1e-5)


def test_the_mode_seeking_term_enters_gs_update_only(tiny_mnist, in_tmp):
    one = [*ONE_BATCH, "--model.g_optimizer.lr=0.01"]  # G's step small enough for the term's slope to hold
    runs, terms = {}, {}
    z, y = torch.randn(200, 128, generator=torch.Generator().manual_seed(0)), torch.arange(200) % 10
    for weight in ("null", 1.0):  # the same seed, so the same draws: only G's term differs
        trainer = train(tiny_mnist, *one, f"--model.mode_seeking={weight}", f"--trainer.default_root_dir={weight}")
        runs[weight] = dict(trainer.lightning_module.named_parameters())
        with torch.no_grad():
            terms[weight] = CGAN.mode_seeking_term(z, trainer.lightning_module.generator(z, y), y)
    for name, value in runs[1.0].items():
        if name.startswith("generator."):
            assert not torch.equal(value, runs["null"][name]), name
        elif name.startswith("discriminator."):  # D's update comes first and does not see it
            assert torch.equal(value, runs["null"][name]), name
    assert terms[1.0] < terms["null"]  # G's step went down the term: unlike digits from unlike noise


@pytest.mark.parametrize("batch", [20, 199], ids=["two batches", "the second one digit"])
def test_the_mode_seeking_term_is_logged_unweighted_from_gs_digits_before_its_update(tiny_mnist, in_tmp, batch):
    nets = ["--model.generator=helpers.NoiseImageGenerator", "--model.generator.init_args.noise_dim=4"]
    nets.append("--model.discriminator=helpers.MarkedDiscriminator")
    # two batches; D's score has no slope in the pixels, so G's SGD step follows the term alone
    trainer = train(
        tiny_mnist, "--trainer.max_steps=4", *nets, *SGD, "--model.mode_seeking=0.5", f"--data.batch_size={batch}"
    )
    # images differ `scale` times as much as their noise: the term is 1 / (scale + 1e-5) on a batch
    scale = 1 + 0.1 * 0.5 / (1 + 1e-5) ** 2  # after the first batch: SGD down 0.5 x the term's slope
    if batch == 20:
        assert trainer.lightning_module.generator.scale.item() == pytest.approx(scale + 0.05 / (scale + 1e-5) ** 2)
        expected = (1 / (1 + 1e-5) + 1 / (scale + 1e-5)) / 2  # the epoch's mean over its two batches
    else:  # one digit has no other of its label: no term, no step, and the batch is left out of the mean
        assert trainer.lightning_module.generator.scale.item() == pytest.approx(scale)
        expected = 1 / (1 + 1e-5)
    assert trainer.callback_metrics["train/mode_seeking"].item() == pytest.approx(expected)
    assert "train/mode_seeking" not in train(tiny_mnist, "--trainer.max_steps=2", *nets).callback_metrics


def test_resuming_with_the_class_head_switched_off_is_refused_and_keeps_the_checkpoint(tiny_mnist, in_tmp, capsys):
    args = ["--config", DCGAN, f"--data.data_dir={tiny_mnist}", *FAST]
    run([*args, "--max_epochs=1"])
    run_dir = in_tmp / "lightning_logs" / "version_0"
    ckpt, config = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    before = ckpt.read_bytes(), config.read_bytes()
    assert main([*args, "--max_epochs=2", "--ckpt_path=last", "--model.aux_weight=null"]) == 1
    text = (
        "error: the checkpoint was trained with model.aux_weight 0.5 and this run has null: "
        "resume with the run's own value (--model.aux_weight=0.5)."
    )
    assert text in capsys.readouterr().err
    assert (ckpt.read_bytes(), config.read_bytes()) == before  # refused before the run's config was rewritten


def test_resuming_with_changed_settings_names_them(tiny_mnist, in_tmp):
    train(tiny_mnist, "--max_epochs=1")
    elsewhere = shutil.copytree(tiny_mnist, in_tmp / "elsewhere")
    with warnings.catch_warnings(record=True) as caught:  # the same settings, the data read from another folder
        warnings.simplefilter("always")
        run([f"--data.data_dir={elsewhere}", *FAST, "--max_epochs=1", "--ckpt_path=last"])
    assert not [w for w in caught if "differ from the checkpoint's" in str(w.message)]
    changed = ["--data.batch_size=25", "--model.g_optimizer.init_args.lr=0.0005", "--seed_everything=3"]
    with pytest.warns(UserWarning, match="differ from the checkpoint's") as caught:
        run([f"--data.data_dir={tiny_mnist}", *FAST, *changed, "--max_epochs=1", "--ckpt_path=last"])
    assert [str(w.message) for w in caught if "differ" in str(w.message)] == [
        "resuming with settings that differ from the checkpoint's: "
        "model.g_optimizer.init_args.lr: 0.001 in the checkpoint, 0.0005 now; "
        "seed_everything: 0 in the checkpoint, 3 now; "
        "data.batch_size: 20 in the checkpoint, 25 now. To train on with the checkpoint's, stop and add: "
        "--model.g_optimizer.init_args.lr=0.001 --seed_everything=0 --data.batch_size=20"
    ]


def test_a_checkpoint_from_before_a_setting_existed_resumes_without_a_warning(tiny_mnist, in_tmp):
    path = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"

    def make_old() -> None:  # as written before model.ema_power existed (it trained as 8.0)
        ckpt = torch.load(path, weights_only=True)
        del ckpt["hyper_parameters"]["ema_power"]
        torch.save(ckpt, path)

    train(tiny_mnist, "--max_epochs=1")
    make_old()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_mnist, "--max_epochs=2", "--ckpt_path=last")
    assert not [w for w in caught if "differ from the checkpoint's" in str(w.message)]
    make_old()  # the resumed run wrote its own
    with pytest.warns(UserWarning, match="differ from the checkpoint's") as caught:
        train(tiny_mnist, "--max_epochs=3", "--ckpt_path=last", "--model.ema_power=16")
    assert [str(w.message) for w in caught if "differ" in str(w.message)] == [
        "resuming with settings that differ from the checkpoint's: model.ema_power: 8.0 in the checkpoint, "
        "16.0 now. To train on with the checkpoint's, stop and add: --model.ema_power=8.0"
    ]


@pytest.mark.parametrize("given", ["7", "true"])
def test_the_run_seed_reaches_the_module_and_the_data_module(tiny_mnist, in_tmp, given):
    trainer = train(tiny_mnist, "--max_epochs=0", f"--seed_everything={given}")
    config = (in_tmp / "lightning_logs/version_0/config.yaml").read_text()
    seed = int(next(line for line in config.splitlines() if line.startswith("seed_everything:")).split()[1])
    assert given == "true" or seed == 7
    assert trainer.lightning_module.seed == trainer.datamodule.hparams.seed == seed


def test_ckpt_path_last_resumes_the_newest_run(tiny_mnist, in_tmp):
    train(tiny_mnist, "--max_epochs=1")
    train(tiny_mnist, "--max_epochs=1")  # a second run: version_1
    first = (in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt").read_bytes()
    train(tiny_mnist, "--max_epochs=2", "--ckpt_path=last")
    assert (in_tmp / "lightning_logs/version_1/samples/001.png").is_file()
    assert (in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt").read_bytes() == first
    assert not (in_tmp / "lightning_logs/version_2").exists()


def test_resume_continues_at_the_next_epoch_with_optimizer_state(tiny_mnist, in_tmp):
    train(tiny_mnist, "--max_epochs=1")
    ckpt = torch.load(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    trainer = train(tiny_mnist, "--ckpt_path=last", "--max_epochs=2")
    rec = recorder(trainer)
    assert rec.epochs == [1]
    assert {e for e, _ in rec.batches} == {1} and len(rec.batches) == BATCHES
    for name, value in ckpt["state_dict"].items():  # training started from the checkpoint's weights
        assert torch.equal(rec.initial[name], value), name
    assert adam_steps(trainer.optimizers[0]) == adam_steps(trainer.optimizers[1]) == {2 * BATCHES}
    assert trainer.global_step == 2 * 2 * BATCHES  # Lightning counts both optimizers' steps
    run_dir = in_tmp / "lightning_logs" / "version_0"
    assert (run_dir / "samples" / "001.png").is_file()
    assert not (in_tmp / "lightning_logs" / "version_1").exists()  # the resumed run logs where it left off


def test_print_config_shows_the_seed_values(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for line in ("max_epochs: 200", "noise_dim: 128", "hidden_dim: 512", "dropout: 0.3", "batch_size: 100"):
        assert line in out, line
    assert out.count("lr: 0.001") == 2
    assert "loss: bce" in out


def test_progress_bar_can_be_turned_off(tiny_mnist, in_tmp):
    trainer = train(tiny_mnist, "--max_epochs=1", "--trainer.enable_progress_bar=false")
    assert trainer.progress_bar_callback is None


def test_max_epochs_alias_sets_trainer_max_epochs(capsys):
    with pytest.raises(SystemExit):
        main(["--max_epochs", "3", "--print_config"])
    assert "max_epochs: 3\n" in capsys.readouterr().out


def test_missing_data_offline_exits_non_zero_with_the_message(tmp_path, in_tmp, offline, capsys):
    code = main([f"--data.data_dir={tmp_path / 'empty'}", "--max_epochs=1", *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: MNIST was not found in {tmp_path / 'empty' / 'MNIST' / 'raw'}" in err
    assert "train-images-idx3-ubyte.gz" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_real_mnist_trains_a_few_batches(real_mnist, in_tmp):
    trainer = train(real_mnist, "--max_epochs=1", "--trainer.limit_train_batches=30")
    assert adam_steps(trainer.optimizers[0]) == {30}
    assert len(trainer.datamodule.train_data[0]) == 60000
    assert (in_tmp / "lightning_logs/version_0/samples/000.png").is_file()


def test_dcgan_config_trains_and_resumes_with_its_ema(tiny_mnist, in_tmp):
    from cgan.models import ConvDiscriminator, ConvGenerator

    first = run(["--config", DCGAN, f"--data.data_dir={tiny_mnist}", *FAST, "--max_epochs=1"])
    module = first.lightning_module
    assert isinstance(module.generator, ConvGenerator) and isinstance(module.discriminator, ConvDiscriminator)
    assert module.hparams.loss == "hinge" and module.generator_ema is not None
    ema = {k: v for k, v in module.state_dict().items() if k.startswith("generator_ema.")}
    live = module.generator.state_dict()
    assert any(not torch.equal(v, live[k.removeprefix("generator_ema.")]) for k, v in ema.items())

    resume = ["--max_epochs=2", "--ckpt_path=last", "--trainer.callbacks+=helpers.Recorder"]
    second = run(["--config", DCGAN, f"--data.data_dir={tiny_mnist}", *FAST, *resume])
    restored = recorder(second).initial
    for k, v in ema.items():  # the EMA weights continued from the checkpoint
        assert torch.equal(restored[k], v), k


def test_the_r1_penalty_enters_ds_updates_on_every_nth_batch(tiny_mnist, in_tmp, monkeypatch):
    computed, weight = [], [1.0]
    penalty = CGAN.r1_penalty

    def spy(self, x, y, batch_idx):
        value = penalty(self, x, y, batch_idx)
        if value is not None:
            computed.append(batch_idx)
            value = value * weight[0]
        return value

    monkeypatch.setattr(CGAN, "r1_penalty", spy)
    r1 = ["--max_epochs=1", "--model.r1_gamma=10.0", "--model.r1_every=4"]
    penalized = train(tiny_mnist, *r1, "--trainer.default_root_dir=a").lightning_module.state_dict()
    assert computed == [0, 4, 8]
    weight[0] = 0.0  # the same run, the same random draws, the penalty's value zeroed
    zeroed = train(tiny_mnist, *r1, "--trainer.default_root_dir=b").lightning_module.state_dict()
    assert computed == [0, 4, 8] * 2
    assert not torch.equal(penalized["discriminator.model.0.weight"], zeroed["discriminator.model.0.weight"])


def test_mismatch_shows_d_a_share_of_the_real_digits_again_under_wrong_labels_as_fakes(tiny_mnist, in_tmp, monkeypatch):
    seen, scored = [], []
    forward = Discriminator.forward

    def spy(self, x, y):
        seen.append((x.detach().clone(), y.clone()))
        return forward(self, x, y)

    d_loss, g_loss = LOSSES["bce"]

    def scoring(real, fake):
        scored.append((len(real), len(fake)))
        return d_loss(real, fake)

    monkeypatch.setattr(Discriminator, "forward", spy)
    monkeypatch.setitem(LOSSES, "bce", (scoring, g_loss))
    train(tiny_mnist, "--max_epochs=1", "--model.mismatch=0.25")
    d_steps = [(x, y) for x, y in seen if len(x) != 20]  # the G steps score the 20 generated digits alone
    assert len(d_steps) == BATCHES
    for x, y in d_steps:  # 20 real, 20 generated, then 5 of the real again (0.25 x 20) under other labels
        assert x.shape == (45, 1, 28, 28)
        assert torch.equal(x[40:], x[:5]) and not torch.equal(x[20:25], x[:5])
        assert torch.equal(y[20:40], y[:20]) and (y[40:] != y[:5]).all() and 0 <= y.min() <= y.max() < 10
    assert scored == [(20, 25)] * BATCHES  # the 5 are on the generated side of D's loss


def test_lr_decay_falls_linearly_to_zero_over_the_last_part_of_the_run(tiny_mnist, in_tmp):
    trainer = train(tiny_mnist, "--max_epochs=2", "--model.lr_decay=0.5", "--trainer.callbacks+=helpers.LRLog")
    rates = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LRLog").rates
    done = [(epoch + batch / BATCHES) / 2 for epoch in range(2) for batch in range(BATCHES)]
    expected = [0.001 * min(1.0, (1.0 - f) / 0.5) for f in done]
    assert [g for g, _ in rates] == pytest.approx(expected, abs=1e-12)
    assert [d for _, d in rates] == pytest.approx(expected, abs=1e-12)
    assert rates[BATCHES // 2][0] == 0.001 and rates[-1][0] == pytest.approx(0.0001)  # flat, then down to 1/10
    assert [group["initial_lr"] for opt in trainer.optimizers for group in opt.param_groups] == [0.001, 0.001]


def test_a_run_stopped_by_the_clock_decays_its_lr_on_time_and_is_scored_at_its_end(tiny_mnist, in_tmp):
    rare = {"every_n_epochs": 1000}
    config = callbacks_config(in_tmp / "clock.yaml", {"DigitMetrics": {**rare, "per_class": 20}, "SampleGrid": rare})
    clock = ["--max_epochs=-1", "--trainer.max_time=00:00:00:03", "--model.lr_decay=1.0"]
    trainer = train(tiny_mnist, f"--config={config}", *clock, "--trainer.callbacks+=helpers.LRLog")
    rates = [g for g, _ in next(cb for cb in trainer.callbacks if type(cb).__name__ == "LRLog").rates]
    assert len(rates) > BATCHES and rates == sorted(rates, reverse=True)  # no epoch limit: the clock's share
    assert rates[0] > 0.0008 and rates[-1] < 0.0004  # 3 s of training, the first batches near its start
    last_batch = trainer.global_step // 2 - 1
    events = EventAccumulator(str(in_tmp / "lightning_logs" / "version_0"))
    events.Reload()
    for tag in VAL_METRICS:  # the HPARAMS placeholder, then the scores of the run's end
        assert [e.step for e in events.Scalars(tag)] == [0, last_batch], tag
    assert [e.step for e in events.Images("samples")] == [trainer.current_epoch - 1]  # the epoch it stopped in
