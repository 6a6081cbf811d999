"""The shipped classifier and the metrics computed in its feature space."""

from __future__ import annotations

import json

import pytest
import torch

from cgan.classifier import RECORD, WEIGHTS, MNISTClassifier, accuracy, load_classifier, sha256
from cgan.data import load_split, scale
from cgan.errors import CheckpointError
from cgan.metrics import DigitQuality, PrecisionRecall, generate_per_class, scaled_batches
from cgan.models import Generator


def test_shipped_weights_match_their_record_and_are_small():
    record = json.loads(RECORD.read_text())
    assert sha256(WEIGHTS) == record["sha256"]
    assert record["test_accuracy"] >= 0.99
    assert WEIGHTS.stat().st_size < 2 * 1024 * 1024


def test_classifier_scores_fixture_digits(tiny_mnist):
    model = load_classifier()
    images, _ = load_split(str(tiny_mnist), train=False)
    logits = model(scale(images))
    assert logits.shape == (50, 10)
    features = model.features(scale(images))
    assert features.shape == (50, MNISTClassifier.num_features)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.features[:3](scale(images)).is_contiguous(memory_format=torch.channels_last)  # fast pooling
    plain = MNISTClassifier().eval()  # the usual layout gives the same features
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(plain.features(scale(images)), features, atol=1e-5)


def test_tampered_weights_are_refused(tmp_path):
    bad = tmp_path / "w.pt"
    data = bytearray(WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    (tmp_path / "w.json").write_text(RECORD.read_text())
    with pytest.raises(CheckpointError, match="do not match their recorded sha256"):
        load_classifier(bad)


def quality_with_reference(images, labels) -> DigitQuality:
    quality = DigitQuality(load_classifier())
    quality.update(scale(images), labels, real=True)
    return quality


def test_a_set_against_itself_scores_as_real_digits_and_noise_does_not(tiny_mnist):
    images, labels = load_split(str(tiny_mnist), train=True)
    quality = quality_with_reference(images, labels)
    quality.update(scale(images), labels, real=False)
    same = quality.compute()
    quality.reset()
    quality.update(torch.rand(200, 1, 28, 28) * 2 - 1, labels, real=False)
    noise = quality.compute()
    assert abs(same["fid"]) < 1e-3 and abs(same["fid_intra"]) < 1e-3
    assert noise["fid"] > 100 * max(abs(same["fid"]), 1e-2)
    assert noise["fid_class"].shape == (10,) and noise["acc_class"].shape == (10,)
    assert (same["precision"].item(), same["recall"].item()) == (1.0, 1.0)
    assert noise["precision"] < 0.05


def test_intra_class_fid_and_accuracy_judge_each_digit_by_the_label_it_was_asked_for(tiny_mnist):
    images, labels = load_split(str(tiny_mnist), train=True)
    quality = quality_with_reference(images, labels)
    assert quality.acc.tp.sum() + quality.acc.fn.sum() == 0  # the real digits never count in the accuracy
    asked = (labels + 1) % 10  # every digit presented as the next digit
    quality.update(scale(images), asked, real=False)
    scores = quality.compute()
    assert abs(scores["fid"]) < 1e-3  # the same images overall,
    assert scores["fid_intra"] > 1.0  # but each class holds another class's digits
    classifier = quality.classifier
    with torch.no_grad():
        read = classifier.head(classifier.features(scale(images))).argmax(1)
    assert scores["acc"].item() == pytest.approx((read == asked).float().mean().item())  # generated digits only


@pytest.mark.slow
def test_on_real_mnist_accuracy_is_high_with_true_labels_and_chance_with_shuffled(real_mnist):
    test_images, test_labels = load_split(str(real_mnist), train=False)
    assert accuracy(load_classifier(), test_images, test_labels) >= 0.99
    train_images, train_labels = load_split(str(real_mnist), train=True)
    quality = quality_with_reference(test_images, test_labels)
    true = quality.score(scaled_batches(train_images[:5000], train_labels[:5000]))
    shuffled = quality.score(scaled_batches(train_images[:5000], train_labels[:5000][torch.randperm(5000)]))
    assert true["acc"] > 0.99 and 0.05 < shuffled["acc"] < 0.15
    assert true["fid"] < 10 and true["fid_intra"] < 20  # 5,000 real digits: small, not 0 (finite-sample bias)


def test_generate_per_class_draws_fixed_noise_per_class_and_shards_by_rank():
    torch.manual_seed(0)
    g = Generator()
    batches = list(generate_per_class(g, per_class=30, seed=7, batch_size=100))
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, torch.arange(10).repeat_interleave(30))
    again = torch.cat([x for x, _ in generate_per_class(g, per_class=30, seed=7)])
    assert torch.equal(torch.cat([x for x, _ in batches]), again)
    shards = [torch.cat([y for _, y in generate_per_class(g, 30, 7, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 150
    assert torch.equal(torch.stack(shards, 1).flatten(), labels)


def test_precision_recall_of_a_set_against_itself_is_one_and_one():
    points = torch.randn(500, 16)
    metric = PrecisionRecall()
    metric.update(points, real=True)
    metric.update(points.clone(), real=False)
    assert [v.item() for v in metric.compute()] == [1.0, 1.0]


def test_a_collapsed_set_has_low_recall_and_a_scattered_one_low_precision():
    real = torch.randn(1000, 16)
    metric = PrecisionRecall()
    metric.update(real, real=True)
    metric.update(real[:5].repeat(200, 1), real=False)  # 5 styles, each drawn 200 times
    collapsed_precision, collapsed_recall = metric.compute()
    metric.reset()  # keeps the real points
    metric.update(torch.randn(1000, 16) * 0.1 + 3.0, real=False)  # a blob away from the real points
    noise_precision, _ = metric.compute()
    metric.reset()
    metric.update(torch.randn(1000, 16) * 3, real=False)  # spread wider: covers every real point, looks like none
    wide_precision, wide_recall = metric.compute()
    metric.reset()
    metric.update(torch.randn(1000, 16), real=False)  # another draw of the real distribution
    fair_precision, fair_recall = metric.compute()
    assert collapsed_precision == 1.0 and collapsed_recall < 0.01
    assert noise_precision < 0.01
    assert wide_precision < 0.05 and wide_recall > 0.95
    assert fair_precision > 0.6 and fair_recall > 0.6


def test_the_real_radii_are_computed_once_and_again_only_after_new_real_points(monkeypatch):
    real, more = torch.randn(600, 8), torch.randn(300, 8) * 2
    fakes = [torch.randn(400, 8) * s for s in (0.8, 1.2, 1.6)]
    metric = PrecisionRecall()
    sizes = []  # the sets whose radii were computed
    radii = PrecisionRecall._radii
    monkeypatch.setattr(metric, "_radii", lambda points: sizes.append(len(points)) or radii(metric, points))
    metric.update(real, real=True)
    scores = []
    for fake in fakes[:2]:
        metric.update(fake, real=False)
        scores.append([v.item() for v in metric.compute()])
        metric.reset()
    assert sizes == [600, 400, 400]  # the real points' once, each generated set's
    metric.update(more, real=True)  # the real set changed: its radii are computed again
    metric.update(fakes[2], real=False)
    scores.append([v.item() for v in metric.compute()])
    assert sizes[3:] == [900, 400]
    for i, (reals, fake) in enumerate([(real, fakes[0]), (real, fakes[1]), (torch.cat([real, more]), fakes[2])]):
        fresh = PrecisionRecall()
        fresh.update(reals, real=True)
        fresh.update(fake, real=False)
        assert scores[i] == [v.item() for v in fresh.compute()]


def test_precision_recall_across_two_ranks_equals_one_process_with_all_points():
    real, fake = torch.randn(400, 8), torch.randn(300, 8) * 1.3
    whole = PrecisionRecall()
    whole.update(real, real=True)
    whole.update(fake, real=False)
    # rank 0's metric; torchmetrics gathers each cat state from both ranks, in the order they were added
    rank1 = iter([real[200:], fake[150:]])
    rank0 = PrecisionRecall(distributed_available_fn=lambda: True, dist_sync_fn=lambda t, group=None: [t, next(rank1)])
    rank0.update(real[:200], real=True)
    rank0.update(fake[:100], real=False)
    rank0.update(fake[100:150], real=False)
    assert [v.item() for v in rank0.compute()] == [v.item() for v in whole.compute()]
    assert sum(len(t) for t in rank0.real_features) == 200  # its own share again after the sync
