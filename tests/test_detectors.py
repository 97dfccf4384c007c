"""Tests of the poisoned-data detectors and the ranking metrics they are scored with.

The detector tests share one SmallCNN trained on 8x8 digits of which 10% carry a BadNets patch and the target
label: the model learns the backdoor (ASR ~1), so every detector should rank the poisoned images first. The
control flags a random tenth of the clean images as "poisoned": no detector can know them, so AUROC sits near 0.5.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bibaddiff.data import load_source
from bibaddiff.defenses.detectors import (DETECTORS, evaluate_detection, penultimate_features, run_detector,
                                          score_activation_clustering, score_cognitive_distillation,
                                          score_spectral, score_strip)
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import JudgeSettings, build_judge, predict, train_judge
from bibaddiff.metrics import auroc, tpr_at_fpr
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger

TARGET = 0
# Settings each detector runs with in these tests. Cognitive distillation matches probabilities: with logits it
# does not separate on this tiny model (measured AUROC ~0.5; see score_cognitive_distillation's docstring).
TEST_SETTINGS = {
    "strip": {},
    "spectral": {},
    "activation_clustering": {},
    "cognitive_distillation": {"match": "probabilities", "l1_weight": 0.1},
}
# Lowest AUROC each detector must reach on the poisoned set; measured values are about 0.84, 0.92, 0.99, 1.00.
MIN_AUROC = {"strip": 0.75, "spectral": 0.85, "activation_clustering": 0.95, "cognitive_distillation": 0.95}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def poisoned_digits():
    train, heldout = load_source({"source": "digits", "image_size": 8})
    trigger = build_trigger("badnet", {"type": "patch"}, 8, 1)
    poisoned, _ = poison_dataset(train.subset(np.arange(400)), trigger, TARGET, 0.1, seed=0)
    model = train_judge(poisoned.images, poisoned.labels, 10, JudgeSettings(epochs=10, batch_size=64), seed=0,
                        device="cpu")
    victims = heldout.labels != TARGET
    asr = float(np.mean(predict(model, trigger.apply(heldout.images[victims])) == TARGET))
    return SimpleNamespace(model=model, images=poisoned.images, labels=poisoned.labels,
                           poisoned=poisoned.poisoned, asr=asr)


@pytest.fixture(scope="module")
def detector_scores(poisoned_digits):
    data = poisoned_digits
    return {name: run_detector(name, data.model, data.images, data.labels, TEST_SETTINGS[name], seed=0)
            for name in DETECTORS}


def test_fixture_model_learned_the_backdoor(poisoned_digits):
    # Without a backdoor in the model there is nothing for the detectors to find.
    assert poisoned_digits.asr > 0.9
    assert poisoned_digits.poisoned.sum() == 40


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_separates_poisoned_images(name, poisoned_digits, detector_scores):
    scores = detector_scores[name]
    assert scores.shape == (len(poisoned_digits.images),) and scores.dtype == np.float64
    assert np.all(np.isfinite(scores))
    result = evaluate_detection(scores, poisoned_digits.poisoned)
    assert result["auroc"] > MIN_AUROC[name], result


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_is_at_chance_on_random_flags(name, poisoned_digits, detector_scores):
    clean = ~poisoned_digits.poisoned
    flags = np.random.default_rng(123).random(int(clean.sum())) < 0.1
    value = auroc(detector_scores[name][clean], flags)
    assert 0.35 < value < 0.65, value


def test_cognitive_distillation_with_logits_runs(poisoned_digits):
    # The published objective: scores are masks' negative L1 norms, so they lie in [-H*W, 0].
    data = poisoned_digits
    scores = score_cognitive_distillation(data.model, data.images[:20], data.labels[:20], steps=5, seed=0)
    assert scores.shape == (20,)
    assert np.all((scores <= 0) & (scores >= -64))


def test_cognitive_distillation_is_deterministic_and_leaves_model_alone(poisoned_digits):
    data = poisoned_digits
    before = [p.detach().clone() for p in data.model.parameters()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in data.model.parameters()]
    args = (data.model, data.images[:30], data.labels[:30])
    first = score_cognitive_distillation(*args, steps=10, seed=3)
    again = score_cognitive_distillation(*args, steps=10, seed=3)
    other = score_cognitive_distillation(*args, steps=10, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert all(torch.equal(a, b) for a, b in zip(before, data.model.parameters()))
    # Only the masks get gradients: the model's .grad (left over from training) and requires_grad are as before.
    assert all(p.requires_grad for p in data.model.parameters())
    for old_grad, p in zip(grads_before, data.model.parameters()):
        assert (old_grad is None and p.grad is None) or torch.equal(old_grad, p.grad)


def test_strip_is_deterministic_and_independent_of_batch_size(poisoned_digits):
    data = poisoned_digits
    args = (data.model, data.images[:50], data.labels[:50])
    big = score_strip(*args, num_blends=8, batch_size=400, seed=1)
    small = score_strip(*args, num_blends=8, batch_size=8, seed=1)
    np.testing.assert_allclose(big, small, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(big, score_strip(*args, num_blends=8, batch_size=400, seed=1))
    assert not np.allclose(big, score_strip(*args, num_blends=8, batch_size=400, seed=2))
    # Entropies are non-negative and at most log(10), so scores lie in [-log 10, 0].
    assert np.all((big <= 1e-6) & (big >= -math.log(10) - 1e-6))


def test_activation_clustering_is_deterministic(poisoned_digits):
    data = poisoned_digits
    first = score_activation_clustering(data.model, data.images, data.labels, seed=5)
    np.testing.assert_array_equal(first, score_activation_clustering(data.model, data.images, data.labels, seed=5))


# --------------------------------------------------------------------- detectors on hand-made features


class PixelFeatures(nn.Module):
    """A stand-in classifier whose penultimate features are the raw model-space pixels."""

    def __init__(self, pixels: int, classes: int = 2):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(pixels, classes)


def _feature_images(rng: np.random.Generator, outliers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes of 2x2 grey images; in class 0, ``outliers`` images are shifted far along one direction."""
    images = rng.integers(100, 156, size=(60, 2, 2, 1)).astype(np.uint8)
    labels = np.repeat([0, 1], 30)
    flagged = np.zeros(60, bool)
    flagged[:outliers] = True
    images[:outliers, 0, 0, 0] = 250
    images[:outliers, 1, 1, 0] = 5
    return images, labels, flagged


def test_spectral_matches_top_singular_direction():
    images, labels, flagged = _feature_images(np.random.default_rng(0), outliers=5)
    model = PixelFeatures(4)
    scores = score_spectral(model, images, labels)
    features = images.reshape(60, 4).astype(np.float64) / 127.5 - 1.0
    for c in (0, 1):
        members = labels == c
        centred = features[members] - features[members].mean(0)
        # The top right singular vector is the covariance's top eigenvector (up to sign, which squaring removes).
        _, vectors = np.linalg.eigh(centred.T @ centred)
        np.testing.assert_allclose(scores[members], (centred @ vectors[:, -1]) ** 2, rtol=1e-6, atol=1e-9)
    assert auroc(scores, flagged) == 1.0


def test_activation_clustering_scores_small_far_cluster_highest():
    images, labels, flagged = _feature_images(np.random.default_rng(1), outliers=5)
    scores = score_activation_clustering(PixelFeatures(4), images, labels, num_components=10)
    assert auroc(scores, flagged) == 1.0
    assert np.all(scores[flagged] > 0)


def test_penultimate_features_of_resnet_feed_its_fc():
    torch.manual_seed(0)
    model = build_judge("resnet18", 1, 10).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 1)).astype(np.uint8)
    features = penultimate_features(model, images)
    assert features.shape == (3, 512)
    with torch.no_grad():
        from bibaddiff.diffusion.sampling import to_model_space
        logits = model(to_model_space(images)).numpy()
        via_fc = model.fc(torch.from_numpy(features).float()).numpy()
    np.testing.assert_allclose(via_fc, logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- dispatch and validation


def test_run_detector_rejects_unknown_name_listing_allowed(poisoned_digits):
    with pytest.raises(BibaddiffError, match="strip, spectral, activation_clustering, cognitive_distillation"):
        run_detector("neural_cleanse", poisoned_digits.model, poisoned_digits.images, poisoned_digits.labels, {}, 0)


def test_run_detector_rejects_unknown_setting(poisoned_digits):
    with pytest.raises(BibaddiffError, match="'num_blend'.*num_blends"):
        run_detector("strip", poisoned_digits.model, poisoned_digits.images, poisoned_digits.labels,
                     {"num_blend": 4}, 0)


def test_run_detector_passes_settings_and_seed(poisoned_digits):
    data = poisoned_digits
    via_registry = run_detector("strip", data.model, data.images[:20], data.labels[:20], {"num_blends": 3}, seed=7)
    direct = score_strip(data.model, data.images[:20], data.labels[:20], num_blends=3, seed=7)
    np.testing.assert_array_equal(via_registry, direct)


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: score_strip(m, x.astype(np.float32), y), "uint8"),
    (lambda m, x, y: score_strip(m, x, y[:-1]), "labels must have shape"),
    (lambda m, x, y: score_strip(m, x[:1], y[:1]), "at least 2"),
    (lambda m, x, y: score_strip(m, x, y, num_blends=0), "num_blends"),
    (lambda m, x, y: score_strip(m, x, y, seed=-1), "seed"),
    (lambda m, x, y: score_spectral(m, x, -y), "non-negative"),
    (lambda m, x, y: score_activation_clustering(m, x, y, num_components=0), "num_components"),
    (lambda m, x, y: score_cognitive_distillation(m, x, y, learning_rate=0), "learning_rate"),
    (lambda m, x, y: score_cognitive_distillation(m, x, y, l1_weight=-1.0), "l1_weight"),
    (lambda m, x, y: score_cognitive_distillation(m, x, y, match="features"), "match"),
    (lambda m, x, y: score_strip("model", x, y), "nn.Module"),
])
def test_detectors_reject_bad_input(call, message, poisoned_digits):
    data = poisoned_digits
    with pytest.raises(BibaddiffError, match=message):
        call(data.model, data.images[:10], data.labels[:10])


def test_evaluate_detection_on_hand_made_scores():
    result = evaluate_detection(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    assert result == {"auroc": 0.75, "tpr_at_5_fpr": 0.5, "n": 4, "n_poisoned": 2}


# ----------------------------------------------------------------------------------- auroc, tpr_at_fpr


def test_auroc_hand_made():
    # Pairs (positive, negative): 0.35 beats 0.1 but not 0.4; 0.8 beats both: 3 of 4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0


def test_auroc_counts_ties_as_half():
    assert auroc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5
    # Positive 2 ties negative 2 (half) and beats negative 1: (1 + 0.5) / 2.
    assert auroc([1.0, 2.0, 2.0], [0, 0, 1]) == 0.75


def test_auroc_agrees_with_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)
    flags = rng.random(200) < 0.3
    assert auroc(scores, flags) == pytest.approx(roc_auc_score(flags, scores), abs=1e-12)


def test_auroc_and_tpr_are_nan_with_one_class():
    assert math.isnan(auroc([0.1, 0.2], [True, True]))
    assert math.isnan(tpr_at_fpr([0.1, 0.2], [False, False]))


def test_tpr_at_fpr_hand_made():
    negatives = list(np.arange(20) / 100) + [0.85]  # 21 negatives, one of them high
    scores = np.array([0.9, 0.8, 0.5] + negatives)
    flags = np.array([True] * 3 + [False] * 21)
    # 5% of 21 negatives allows one false positive: threshold 0.5 takes all three positives and 0.85.
    assert tpr_at_fpr(scores, flags, 0.05) == 1.0
    # 4% allows none: only 0.9 lies above every negative.
    assert tpr_at_fpr(scores, flags, 0.04) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, flags, 1.0) == 1.0


def test_tpr_at_fpr_with_top_tie_is_zero():
    # The only threshold that flags the positive also flags the tied negative (FPR 1).
    assert tpr_at_fpr([1.0, 1.0, 0.0], [1, 0, 0], 0.0) == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: auroc([0.1, 0.2], [1]), "equal in length"),
    (lambda: auroc([0.1, float("nan")], [1, 0]), "finite"),
    (lambda: auroc([0.1, 0.2], [2, 0]), "0/1"),
    (lambda: tpr_at_fpr([0.1, 0.2], [1, 0], 1.5), "fpr"),
])
def test_ranking_metrics_reject_bad_input(call, message):
    with pytest.raises(BibaddiffError, match=message):
        call()
