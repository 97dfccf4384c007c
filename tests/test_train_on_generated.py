"""Tests of training a classifier on a given set and measuring its ACC and ASR, and of attack_success_rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bibaddiff.data import load_source
from bibaddiff.defenses.train_on_generated import evaluate_classifier, train_and_evaluate_by_epoch
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


def test_per_epoch_evaluation_trains_train_judges_model_and_keeps_the_best_epochs(digits):
    train, heldout, trigger = digits
    poisoned, _ = poison_dataset(train, trigger, TARGET, 0.05, seed=0)
    settings = JudgeSettings(epochs=4, batch_size=64)
    other = build_trigger("corner", {"type": "patch", "corner": "top-left", "size": 2}, 8, 1)
    model, evaluation = train_and_evaluate_by_epoch(poisoned.images, poisoned.labels, 10, settings, 1, heldout.images,
                                                    heldout.labels, {"badnet": trigger, "corner": other}, TARGET,
                                                    device="cpu")
    # Measuring after every epoch leaves the training as judges.train_judge's: the same weights.
    reference = train_judge(poisoned.images, poisoned.labels, 10, settings, 1, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert not model.training
    for name, used in (("badnet", trigger), ("corner", other)):
        scores = evaluation[name]
        # The last epoch's values are evaluate_classifier's on the returned model.
        assert {k: scores[k] for k in ("acc", "asr", "n_test", "n_attacked")} == evaluate_classifier(
            model, heldout.images, heldout.labels, used, TARGET)
        assert len(scores["acc_per_epoch"]) == len(scores["asr_per_epoch"]) == 4
        assert scores["acc_per_epoch"][-1] == scores["acc"] and scores["asr_per_epoch"][-1] == scores["asr"]
        assert scores["acc_best_epoch"] == max(scores["acc_per_epoch"]) >= scores["acc"]
        assert scores["asr_best_epoch"] == max(scores["asr_per_epoch"]) >= scores["asr"]
    # One clean-accuracy curve, a backdoor on the poisoned trigger only; the early epochs differ from the last.
    assert evaluation["badnet"]["acc_per_epoch"] == evaluation["corner"]["acc_per_epoch"]
    assert evaluation["badnet"]["asr"] > 0.8 and evaluation["corner"]["asr"] < 0.3
    assert evaluation["badnet"]["acc_per_epoch"][0] < evaluation["badnet"]["acc"]


def test_the_train_on_generated_table_reports_the_last_and_the_best_epoch():
    from bibaddiff.report.defenses import _train_on_generated_table

    attacks = {"patch-p0.1": {"ratio": 0.1, "trigger": "patch"}}
    info = {"num_train": 50, "evaluation": {"patch": {"acc": 0.9, "asr": 0.2, "acc_per_epoch": [0.5, 0.95, 0.9],
                                                      "asr_per_epoch": [0.6, 0.3, 0.2], "acc_best_epoch": 0.95,
                                                      "asr_best_epoch": 0.6}}}
    older = {"num_train": 50, "evaluation": {"patch": {"acc": 0.8, "asr": 0.1}}}  # saved before per-epoch values
    table, standard = _train_on_generated_table(
        [info, older], [{"attack": "patch-p0.1", "set": "poisoned", "seed": "", "guidance": None},
                        {"attack": "patch-p0.1", "set": "generated_seed0_s1", "seed": "0", "guidance": 1.0}], attacks,
        lambda attack: {"attack": attack, "poison_ratio": attacks[attack]["ratio"], "trigger": "patch"})
    rows = table.set_index("trainset")
    assert rows.loc["poisoned", ["acc", "asr", "acc_best_epoch", "asr_best_epoch", "epochs"]].tolist() == [
        0.9, 0.2, 0.95, 0.6, 3]
    assert rows.loc["generated_seed0_s1", ["acc_best_epoch", "asr_best_epoch", "epochs"]].isna().all()
    assert rows.loc["generated_seed0_s1", "generated_guidance"] == 1.0 and math.isnan(rows.loc["poisoned", "generated_guidance"])
    assert standard[0]["acc"] == 0.9 and standard[0]["asr"] == 0.2  # the comparison row keeps the last epoch


def test_models_of_several_seeds_get_a_pooled_row_whose_interval_carries_their_spread():
    from bibaddiff.report.defenses import _train_on_generated_table, defense_tables

    attacks = {"patch-p0.1": {"ratio": 0.1, "trigger": "patch"}}
    columns = lambda attack: {"attack": attack, "poison_ratio": attacks[attack]["ratio"], "trigger": "patch"}

    def classifier(asr):
        return {"num_train": 50, "evaluation": {"patch": {"acc": 0.9, "asr": asr, "n_test": 300, "n_attacked": 270}}}

    def generated(seed):
        return {"attack": "patch-p0.1", "set": f"generated_seed{seed}_s6", "seed": str(seed), "guidance": 6.0}

    agreeing, _ = _train_on_generated_table([classifier(0.5)] * 3, [generated(k) for k in range(3)], attacks, columns)
    spread, _ = _train_on_generated_table([classifier(a) for a in (0.1, 0.5, 0.9)], [generated(k) for k in range(3)],
                                          attacks, columns)
    pooled, wide = (t.set_index("trainset").loc["generated_pooled_s6"] for t in (agreeing, spread))
    assert pooled.seed == "pooled" and pooled.num_seeds == 3 and pooled.n_attacked == 810
    assert pooled.asr == pytest.approx(0.5) and wide.asr == pytest.approx(0.5)
    assert pooled.asr_low < 0.5 < pooled.asr_high and wide.asr_high - wide.asr_low > 5 * (pooled.asr_high - pooled.asr_low)
    # A single seed's row has its own (Wilson) interval.
    single = agreeing.set_index("trainset").loc["generated_seed0_s6"]
    assert single.asr_low < 0.5 < single.asr_high and single.asr_high - single.asr_low < 0.13
    # One seed alone is not pooled.
    alone, _ = _train_on_generated_table([classifier(0.5)], [generated(0)], attacks, columns)
    assert "pooled" not in set(alone.seed.astype(str))

    results = [{"attack": "patch-p0.1", "seed": k, "n_clean": 200, "n_triggered": 200,
                "rows": [{"trigger": "patch", "p_filter": 0.0, "acc": 0.9, "asr": asr}]} for k, asr in enumerate((0.6, 0.8))]
    _, _, dm = defense_tables([], [], [], results, attacks)
    [dm_pooled] = dm[dm.seed == "pooled"].itertuples()
    assert dm_pooled.asr == pytest.approx(0.7) and dm_pooled.asr_low < 0.7 < dm_pooled.asr_high and dm_pooled.n_attacked == 400


@pytest.mark.parametrize("change, message", [
    (lambda heldout, trigger: {"triggers": {"badnet": "patch"}}, "Trigger"),
    (lambda heldout, trigger: {"target": 10}, r"target must be a class index in \[0, 10\)"),
    (lambda heldout, trigger: {"clean_test_images": heldout.images.repeat(3, axis=-1)},
     "3 channels; the classifier takes 1"),
    (lambda heldout, trigger: {"clean_test_labels": np.full(len(heldout), TARGET)}, "no images outside target class 0"),
    (lambda heldout, trigger: {"settings": {"epochs": 1}}, "JudgeSettings"),
])
def test_per_epoch_evaluation_rejects_bad_input_before_training(digits, change, message):
    train, heldout, trigger = digits
    arguments = dict(images=train.images[:20], labels=train.labels[:20], num_outputs=10,
                     settings=JudgeSettings(epochs=1, batch_size=64), seed=0, clean_test_images=heldout.images,
                     clean_test_labels=heldout.labels, triggers={"badnet": trigger}, target=TARGET, device="cpu")
    arguments.update(change(heldout, trigger))
    with pytest.raises(BibaddiffError, match=message):
        train_and_evaluate_by_epoch(**arguments)


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
