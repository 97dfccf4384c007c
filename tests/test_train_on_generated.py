"""Tests of training a classifier on a given set and measuring its ACC and ASR, and of attack_success_rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bibaddiff.data import load_source
from bibaddiff.defenses.train_on_generated import evaluate_classifier
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import JudgeSettings, train_judge
from bibaddiff.metrics import attack_success_rate
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger

TARGET = 0
SETTINGS = JudgeSettings(epochs=10, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train, heldout = load_source({"source": "digits", "image_size": 8})
    trigger = build_trigger("badnet", {"type": "patch"}, 8, 1)
    return train.subset(np.arange(400)), heldout, trigger


def _run(train_images, train_labels, heldout, trigger, seed=0):
    """What the train_defense_classifier rule does: train on the given set, measure on the held-out set."""
    model = train_judge(train_images, train_labels, 10, SETTINGS, seed, device="cpu")
    return evaluate_classifier(model, heldout.images, heldout.labels, trigger, TARGET)


def test_poisoned_training_set_gives_high_asr_clean_set_low(digits):
    train, heldout, trigger = digits
    poisoned, _ = poison_dataset(train, trigger, TARGET, 0.1, seed=0)
    on_poisoned = _run(poisoned.images, poisoned.labels, heldout, trigger)
    on_clean = _run(train.images, train.labels, heldout, trigger)
    assert on_poisoned["asr"] > 0.9, on_poisoned
    assert on_clean["asr"] < 0.2, on_clean
    assert on_poisoned["acc"] > 0.85 and on_clean["acc"] > 0.85
    assert on_clean["n_test"] == len(heldout)
    assert on_clean["n_attacked"] == int(np.sum(heldout.labels != TARGET))


def test_train_and_evaluate_is_deterministic(digits):
    train, heldout, trigger = digits
    first = _run(train.images[:200], train.labels[:200], heldout, trigger, seed=3)
    again = _run(train.images[:200], train.labels[:200], heldout, trigger, seed=3)
    assert first == again


@pytest.mark.parametrize("change, message", [
    (lambda train: {"num_outputs": 1}, r"num_outputs \(classes\) must be an integer >= 2"),
    (lambda train: {"labels": np.full(20, 10)}, r"training labels must lie in \[0, 10\)"),
    (lambda train: {"labels": train.labels[:19]}, "training labels must be integers of shape"),
    (lambda train: {"images": train.images[:20].astype(np.float32)}, "training images must be uint8"),
    (lambda train: {"settings": {"epochs": 1}}, "JudgeSettings"),
])
def test_training_rejects_bad_input(digits, change, message):
    train, _, _ = digits
    arguments = dict(images=train.images[:20], labels=train.labels[:20], num_outputs=10, settings=SETTINGS, seed=0,
                     device="cpu")
    arguments.update(change(train))
    with pytest.raises(BibaddiffError, match=message):
        train_judge(**arguments)


@pytest.fixture(scope="module")
def small_model(digits):
    train, _, _ = digits
    return train_judge(train.images[:20], train.labels[:20], 10, JudgeSettings(epochs=1, batch_size=64), 0, device="cpu")


@pytest.mark.parametrize("change, message", [
    (lambda heldout: {"target": 10}, r"target must be a class index in \[0, 10\)"),
    (lambda heldout: {"clean_test_images": heldout.images[:20].repeat(3, axis=-1)}, "3 channels; the classifier takes 1"),
    (lambda heldout: {"clean_test_images": heldout.images[:20].astype(np.float32)}, "clean test images must be uint8"),
    (lambda heldout: {"clean_test_labels": heldout.labels[:19]}, "clean test labels must be integers of shape"),
    (lambda heldout: {"trigger": "badnet"}, "Trigger"),
])
def test_evaluation_rejects_bad_input(digits, small_model, change, message):
    _, heldout, trigger = digits
    arguments = dict(model=small_model, clean_test_images=heldout.images[:20], clean_test_labels=heldout.labels[:20],
                     trigger=trigger, target=TARGET)
    arguments.update(change(heldout))
    with pytest.raises(BibaddiffError, match=message):
        evaluate_classifier(**arguments)


def test_evaluation_needs_non_target_test_images(digits, small_model):
    _, heldout, trigger = digits
    only_target = heldout.labels == TARGET
    with pytest.raises(BibaddiffError, match="no images outside target class 0"):
        evaluate_classifier(small_model, heldout.images[only_target], heldout.labels[only_target], trigger, TARGET)


# ------------------------------------------------------------------------------------- attack_success_rate


def test_attack_success_rate_hand_made():
    # Items with true label 0 (the target) do not count; of the other four, two are predicted 0.
    assert attack_success_rate([0, 0, 1, 2, 0], [0, 1, 1, 2, 3], 0) == 0.5
    assert attack_success_rate(np.array([2, 2, 2]), np.array([0, 1, 2]), 2) == 1.0
    assert attack_success_rate([1, 0], [1, 0], 2) == 0.0


def test_attack_success_rate_is_nan_without_non_target_items():
    assert math.isnan(attack_success_rate([0, 1], [0, 0], 0))
    assert math.isnan(attack_success_rate([], [], 0))


@pytest.mark.parametrize("predictions, labels, target, message", [
    ([0, 1], [0], 0, "equal in length"),
    ([0, 1], [0, 1], -1, "target"),
    ([0, 1], [0, 1], 1.5, "target"),
])
def test_attack_success_rate_rejects_bad_input(predictions, labels, target, message):
    with pytest.raises(BibaddiffError, match=message):
        attack_success_rate(predictions, labels, target)
