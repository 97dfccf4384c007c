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
from bibaddiff.defenses.detectors import (DETECTOR_NAMES, DETECTORS, bootstrap_interval,
                                          cognitive_distillation_objective, detector_settings, detector_variant,
                                          evaluate_detection, fct_intra_class_loss, mask_total_variation,
                                          penultimate_features, rotate_translate, run_detector,
                                          score_activation_clustering, score_cognitive_distillation, score_fct,
                                          score_spectral, score_strip)
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import JudgeSettings, build_judge, predict, train_judge
from bibaddiff.metrics import auroc, tpr_at_fpr
from bibaddiff.plan import parse_trainset
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger

TARGET = 0
# Settings each detector runs with in these tests (STRIP blends with the held-out split, as the workflow does).
# Cognitive distillation uses the "probabilities" variant: the published one (logits, TV term, per-channel noise)
# does not separate on this tiny model (measured AUROC 0.45; with match=probabilities but the published
# optimisation 0.02; see score_cognitive_distillation's docstring).
TEST_SETTINGS = {
    "strip": {},
    "spectral": {},
    "activation_clustering": {},
    "cognitive_distillation": {"variant": "probabilities", "l1_weight": 0.1},
    "fct": {},
}
# Lowest AUROC each detector must reach on the poisoned set; measured values are about 1.00 (STRIP, 100 held-out
# partners superimposed), 0.92, 0.99, 1.00 and 0.98 (FCT as published, fine-tuned, one transformed copy; 0.95 frozen).
MIN_AUROC = {"strip": 0.95, "spectral": 0.85, "activation_clustering": 0.95, "cognitive_distillation": 0.95,
             "fct": 0.85}


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
                           poisoned=poisoned.poisoned, asr=asr, heldout=heldout.images)


@pytest.fixture(scope="module")
def detector_scores(poisoned_digits):
    data = poisoned_digits
    return {name: run_detector(name, data.model, data.images, data.labels, TEST_SETTINGS[name], seed=0,
                               heldout=data.heldout)
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
    result = evaluate_detection(scores, poisoned_digits.poisoned, resamples=100)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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
        from bibaddiff.images import to_model_space
        logits = model(to_model_space(images)).numpy()
        via_fc = model.fc(torch.from_numpy(features).float()).numpy()
    np.testing.assert_allclose(via_fc, logits, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- STRIP with held-out partners


def _entropy_of_predictions(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        log_probs = torch.log_softmax(model(x).float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(1).double().numpy()


def test_strip_superimposes_the_given_partners(poisoned_digits):
    from bibaddiff.images import to_model_space

    data = poisoned_digits
    images, labels = data.images[:12], data.labels[:12]
    black = np.zeros((5, 8, 8, 1), np.uint8)
    # Adding a black image changes nothing: every blend is the image itself, so the score is minus the entropy of
    # the image's own prediction, whatever partners were drawn.
    added = score_strip(data.model, images, labels, partners=black, num_blends=5, seed=0)
    np.testing.assert_allclose(added, -_entropy_of_predictions(data.model, to_model_space(images)), rtol=1e-5, atol=1e-6)
    # A 50/50 blend with black halves the pixel values.
    halved = score_strip(data.model, images, labels, partners=black, num_blends=5, blend="average", seed=0)
    expected = -_entropy_of_predictions(data.model, to_model_space(images) * 0.5 - 0.5)
    np.testing.assert_allclose(halved, expected, rtol=1e-5, atol=1e-6)
    # Saturated partners: the pixel sum clips to white everywhere, and every image scores the same.
    white = score_strip(data.model, images, labels, partners=np.full((5, 8, 8, 1), 255, np.uint8), num_blends=5)
    np.testing.assert_allclose(white, white[0], rtol=1e-6)


def test_strip_with_partners_does_not_blend_within_the_screened_set(poisoned_digits):
    data = poisoned_digits
    # Partners come from the held-out images only, so an image's score does not depend on the rest of the set.
    whole = score_strip(data.model, data.images[:40], data.labels[:40], partners=data.heldout, num_blends=20, seed=2)
    part = score_strip(data.model, data.images[:10], data.labels[:10], partners=data.heldout, num_blends=20, seed=2)
    np.testing.assert_allclose(part, whole[:10], rtol=1e-5, atol=1e-6)
    own = score_strip(data.model, data.images[:40], data.labels[:40], num_blends=20, seed=2)
    assert not np.allclose(own[:10], whole[:10])


def test_run_detector_passes_heldout_images_as_strip_partners_only(poisoned_digits):
    data = poisoned_digits
    args = (data.model, data.images[:15], data.labels[:15])
    black = np.zeros((4, 8, 8, 1), np.uint8)
    np.testing.assert_array_equal(run_detector("strip", *args, {"num_blends": 4}, 1, heldout=black),
                                  score_strip(*args, partners=black, num_blends=4, seed=1))
    np.testing.assert_array_equal(run_detector("spectral", *args, {}, 1, heldout=black), score_spectral(*args))
    # Partners are data, not a setting a config could give.
    assert "partners" not in detector_settings("strip") and detector_settings("strip")["num_blends"] == 100
    with pytest.raises(BibaddiffError, match="'partners'"):
        run_detector("strip", *args, {"partners": black}, 1)


# ------------------------------------------------------------------- cognitive distillation, published objective


def test_mask_total_variation_by_hand():
    diagonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    # Vertical differences (0-1)^2 + (1-0)^2, horizontal the same: 4, over C*H*W = 4.
    assert mask_total_variation(diagonal).item() == pytest.approx(1.0)
    assert mask_total_variation(torch.full((1, 1, 5, 5), 0.7)).item() == 0.0
    # Same L1 norm (8 of 16 pixels on), more edges, more variation.
    checkerboard = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2
    halves = (torch.arange(4)[None] >= 2).repeat(4, 1)
    tv = mask_total_variation(torch.stack([checkerboard, halves]).float().unsqueeze(1))
    assert tv[0].item() == pytest.approx(24 / 16) and tv[1].item() == pytest.approx(4 / 16)


def test_cognitive_distillation_objective_by_hand():
    torch.manual_seed(0)
    model = PixelFeatures(4, classes=3)
    x = torch.tensor([[0.5, -0.5], [1.0, 0.0]]).view(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    noise = torch.tensor(-0.2).view(1, 1, 1, 1)  # one value per channel, as published
    reference = model(x).detach()
    value = cognitive_distillation_objective(model, x, mask, reference, noise, match="logits", l1_weight=0.01,
                                             tv_weight=1.0).item()
    weight, bias = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    mixed = np.array([0.5, -0.2, 0.5 * 1.0 + 0.5 * -0.2, -0.2])  # x * m + (1 - m) * noise, row by row
    distance = np.abs((weight @ mixed + bias) - (weight @ x.numpy().ravel() + bias)).mean()
    # ||m||_1 = 1.5; TV: vertical (0.5-1)^2 + 0, horizontal (0-1)^2 + (0-0.5)^2 = 1.5, over 4 pixels.
    assert value == pytest.approx(distance + 0.01 * 1.5 + 1.0 * 1.5 / 4, rel=1e-5)


def test_cognitive_distillation_published_runs_and_tv_weight_matters(poisoned_digits):
    data = poisoned_digits
    args = (data.model, data.images[:20], data.labels[:20])
    published = score_cognitive_distillation(*args, steps=5, seed=0)
    assert published.shape == (20,) and np.all((published <= 0) & (published >= -64))
    assert not np.allclose(published, score_cognitive_distillation(*args, steps=5, tv_weight=0.0, seed=0))
    assert not np.allclose(published, score_cognitive_distillation(*args, steps=5, noise="pixel", seed=0))
    # The variant's defaults are the explicit settings.
    np.testing.assert_array_equal(
        score_cognitive_distillation(*args, steps=5, variant="probabilities", seed=0),
        score_cognitive_distillation(*args, steps=5, variant="probabilities", match="probabilities", l1_weight=0.01,
                                     tv_weight=0.0, noise="pixel", seed=0))


# ------------------------------------------------------------------------------------------------------ FCT


def test_rotate_translate_matches_numpy_for_right_angles_and_whole_pixel_shifts():
    from bibaddiff.images import to_model_space, to_uint8

    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 1)).astype(np.uint8)
    x = to_model_space(images)
    rotated = to_uint8(rotate_translate(x, torch.tensor([90.0, -90.0]), torch.zeros(2, 2)))
    np.testing.assert_array_equal(rotated[0], np.rot90(images[0], k=1))  # counter-clockwise, as torchvision
    np.testing.assert_array_equal(rotated[1], np.rot90(images[1], k=-1))
    shifted = to_uint8(rotate_translate(x, torch.zeros(2), torch.tensor([[2.0, 0.0], [0.0, -1.0]])))
    expected = np.zeros_like(images)  # uncovered pixels are black
    expected[0, :, 2:] = images[0, :, :3]
    expected[1, :4, :] = images[1, 1:, :]
    np.testing.assert_array_equal(shifted, expected)


@pytest.mark.parametrize("variant", ["frozen", "published"])
def test_fct_is_zero_for_the_identity_and_independent_of_batch_size(variant, poisoned_digits):
    data = poisoned_digits
    args = (data.model, data.images[:30], data.labels[:30])
    tuning = {"finetune_batch_size": 10, "finetune_epochs": 2} if variant == "published" else {}
    # The identity transformation copies the images exactly: pixel features do not move at all, and the CNN's
    # features only by float rounding (its kernels may take another path for a tensor of another layout).
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(rotate_translate(x, torch.zeros(3), torch.zeros(3, 2)), x)
    assert np.all(score_fct(PixelFeatures(64), *args[1:], variant=variant, rotation_degrees=0.0, translate=0.0,
                            **tuning) == 0.0)
    assert np.all(score_fct(*args, variant=variant, rotation_degrees=0.0, translate=0.0, **tuning) < 1e-10)
    big = score_fct(*args, variant=variant, num_transforms=2, batch_size=30, seed=1, **tuning)
    np.testing.assert_allclose(big, score_fct(*args, variant=variant, num_transforms=2, batch_size=7, seed=1, **tuning),
                               rtol=1e-5, atol=1e-7)
    assert np.all(big >= 0) and not np.allclose(big, score_fct(*args, variant=variant, num_transforms=2, batch_size=30,
                                                               seed=2, **tuning))


def test_fct_scores_a_trigger_that_moves_under_the_transformation_higher():
    # Features are the pixels themselves: FCT is then the mean squared pixel change. On flat grey images the
    # transformation only uncovers black corners; a white corner patch also moves (or turns black), so the same
    # draws change a patched image at least as much as its clean twin, and almost always more.
    model = PixelFeatures(64)
    clean = np.full((40, 8, 8, 1), 128, np.uint8)
    patched = clean.copy()
    patched[:, -3:-1, -3:-1] = 255
    clean_scores = score_fct(model, clean, np.zeros(40, np.int64), variant="frozen", seed=0)
    patched_scores = score_fct(model, patched, np.zeros(40, np.int64), variant="frozen", seed=0)
    assert np.all(patched_scores >= clean_scores - 1e-12)
    assert np.mean(patched_scores > clean_scores + 1e-9) > 0.9
    assert auroc(np.r_[clean_scores, patched_scores], np.r_[np.zeros(40), np.ones(40)]) > 0.6


def test_fct_intra_class_loss_by_hand():
    # Class centres (1, 0) and (0, 1): orthogonal, the off-diagonal similarities are 0.
    features = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    assert fct_intra_class_loss(features, torch.tensor([0, 0, 1])).item() == pytest.approx(0.0)
    # Centres along one direction: similarity 1 off the diagonal, 0 on it, mean over the 2 x 2 matrix = 0.5.
    assert fct_intra_class_loss(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([4, 7])).item() == pytest.approx(0.5)
    # Three classes at 120 degrees: cosine -1/2 off the diagonal, 6 of the 9 entries: mean -1/3.
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    spread = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    assert fct_intra_class_loss(spread, torch.tensor([0, 1, 2])).item() == pytest.approx(-1 / 3)
    # One class: nothing to pull apart.
    assert fct_intra_class_loss(features, torch.tensor([5, 5, 5])).item() == 0.0


def test_published_fct_fine_tunes_a_copy_and_separates_the_patch_at_least_as_well(poisoned_digits):
    data = poisoned_digits
    model = data.model
    before = {name: value.clone() for name, value in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    model.train()  # the published variant scores with its copy: even the caller's mode stays
    try:
        published = score_fct(model, data.images, data.labels, variant="published", seed=0)
        assert model.training
    finally:
        model.eval()
    frozen = score_fct(model, data.images, data.labels, variant="frozen", seed=0)
    # The caller's classifier is untouched: weights, batch-norm statistics, requires_grad.
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads
    # The fine-tuning changes the scores, and the published variant separates the patch at least as well (measured:
    # AUROC 0.979 against 0.954 frozen).
    assert not np.allclose(frozen, published)
    frozen_auroc, published_auroc = auroc(frozen, data.poisoned), auroc(published, data.poisoned)
    assert published_auroc >= frozen_auroc and published_auroc > 0.95, (published_auroc, frozen_auroc)
    # Deterministic, and the same seed gives the same transformation draws in both variants.
    np.testing.assert_array_equal(published, score_fct(model, data.images, data.labels, seed=0))
    np.testing.assert_array_equal(frozen, score_fct(model, data.images, data.labels, variant="frozen",
                                                    rotation_degrees=180.0, seed=0))


@pytest.mark.parametrize("settings, message", [
    ({}, "finetune_batch_size: 100 images per fine-tuning batch, but the screened set holds only 10; allowed up to 10"),
    ({"finetune_batch_size": 11}, "finetune_batch_size: 11 images per fine-tuning batch"),
    ({"finetune_batch_size": 1}, "finetune_batch_size"),
    ({"finetune_epochs": 0, "finetune_batch_size": 5}, "finetune_epochs"),
    ({"finetune_learning_rate": -0.1, "finetune_batch_size": 5}, "finetune_learning_rate"),
    ({"variant": "frozen", "finetune_epochs": 3}, "finetune_epochs: the frozen FCT does not fine-tune"),
    ({"variant": "paper"}, "variant must be one of published, frozen"),
])
def test_fct_rejects_bad_fine_tuning_in_one_line(settings, message, poisoned_digits):
    data = poisoned_digits
    with pytest.raises(BibaddiffError, match=message) as error:
        score_fct(data.model, data.images[:10], data.labels[:10], **settings)
    assert "\n" not in str(error.value)


def test_published_fct_needs_two_classes(poisoned_digits):
    data = poisoned_digits
    with pytest.raises(BibaddiffError, match="one class; use variant 'frozen'"):
        score_fct(data.model, data.images[:10], np.zeros(10, np.int64), finetune_batch_size=5)


# ------------------------------------------------------------------------------- dispatch and validation


def test_run_detector_rejects_unknown_name_listing_allowed(poisoned_digits):
    with pytest.raises(BibaddiffError, match="strip, spectral, activation_clustering, cognitive_distillation, fct"):
        run_detector("neural_cleanse", poisoned_digits.model, poisoned_digits.images, poisoned_digits.labels, {}, 0)


def test_a_name_with_a_variant_runs_that_variant_and_takes_no_variant_setting(poisoned_digits):
    data = poisoned_digits
    args = (data.model, data.images[:20], data.labels[:20])
    assert DETECTOR_NAMES == ("strip", "spectral", "activation_clustering", "cognitive_distillation", "fct",
                              "cognitive_distillation_published", "cognitive_distillation_probabilities",
                              "fct_published", "fct_frozen")
    np.testing.assert_array_equal(run_detector("fct_frozen", *args, {}, seed=2),
                                  score_fct(*args, variant="frozen", seed=2))
    np.testing.assert_array_equal(
        run_detector("cognitive_distillation_probabilities", *args, {"steps": 3}, seed=2),
        score_cognitive_distillation(*args, variant="probabilities", steps=3, seed=2))
    assert "variant" not in detector_settings("fct_frozen") and "variant" in detector_settings("fct")
    assert detector_settings("fct_published").keys() == detector_settings("fct").keys() - {"variant"}
    with pytest.raises(BibaddiffError, match="unknown setting.*'variant' for detector 'fct_frozen'"):
        run_detector("fct_frozen", *args, {"variant": "published"}, seed=0)
    # The variant each run labels its rows with.
    assert detector_variant("fct") == "published" and detector_variant("fct", {"variant": "frozen"}) == "frozen"
    assert detector_variant("cognitive_distillation") == "published"
    assert detector_variant("cognitive_distillation", {"variant": "probabilities"}) == "probabilities"
    assert detector_variant("cognitive_distillation_probabilities", {"steps": 3}) == "probabilities"
    assert detector_variant("strip", {"num_blends": 3}) is None


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
    (lambda m, x, y: score_cognitive_distillation(m, x, y, variant="paper"), "variant"),
    (lambda m, x, y: score_cognitive_distillation(m, x, y, tv_weight=-0.5), "tv_weight"),
    (lambda m, x, y: score_cognitive_distillation(m, x, y, noise="gaussian"), "noise"),
    (lambda m, x, y: score_strip("model", x, y), "nn.Module"),
    (lambda m, x, y: score_strip(m, x, y, partners=x[:3], num_blends=4), "num_blends .4. asks for more"),
    (lambda m, x, y: score_strip(m, x, y, partners=x[:, :4]), "partners must be uint8"),
    (lambda m, x, y: score_strip(m, x, y, blend="max"), "blend"),
    (lambda m, x, y: score_fct(m, x, y, rotation_degrees=270), "rotation_degrees"),
    (lambda m, x, y: score_fct(m, x, y, translate=-0.1), "translate"),
    (lambda m, x, y: score_fct(m, x, y, num_transforms=0), "num_transforms"),
])
def test_detectors_reject_bad_input(call, message, poisoned_digits):
    data = poisoned_digits
    with pytest.raises(BibaddiffError, match=message):
        call(data.model, data.images[:10], data.labels[:10])


def test_evaluate_detection_on_hand_made_scores():
    result = evaluate_detection(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]), resamples=50)
    assert {k: result[k] for k in ("auroc", "tpr_at_5_fpr", "n", "n_poisoned", "resamples")} == {
        "auroc": 0.75, "tpr_at_5_fpr": 0.5, "n": 4, "n_poisoned": 2, "resamples": 50}
    assert 0 <= result["auroc_low"] <= 0.75 <= result["auroc_high"] <= 1
    assert 0 <= result["tpr_at_5_fpr_low"] <= 0.5 <= result["tpr_at_5_fpr_high"] <= 1


def _separated_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n scores, a fifth of them poisoned and shifted up by one standard deviation (true AUROC about 0.76)."""
    rng = np.random.default_rng(seed)
    flags = np.arange(n) < n // 5
    return rng.normal(size=n) + flags, flags


def test_evaluate_detection_uses_sklearn_auroc():
    from sklearn.metrics import roc_auc_score

    scores, flags = _separated_scores(300)
    scores = np.round(scores, 1)  # with ties
    assert evaluate_detection(scores, flags, resamples=10)["auroc"] == pytest.approx(roc_auc_score(flags, scores), abs=1e-12)


def test_bootstrap_intervals_contain_estimate_are_seeded_and_shrink_with_more_images():
    small, large = _separated_scores(100), _separated_scores(2000)
    first = evaluate_detection(*small, resamples=300, seed=3)
    assert first == evaluate_detection(*small, resamples=300, seed=3)
    assert first["auroc_low"] != evaluate_detection(*small, resamples=300, seed=4)["auroc_low"]
    for key in ("auroc", "tpr_at_5_fpr"):
        assert first[f"{key}_low"] <= first[key] <= first[f"{key}_high"]
    wide = first["auroc_high"] - first["auroc_low"]
    big = evaluate_detection(*large, resamples=300, seed=3)
    assert big["auroc_low"] <= big["auroc"] <= big["auroc_high"]
    # The width of an AUROC interval falls about as 1 / sqrt(n): 20x the images, about 4.5x narrower.
    assert big["auroc_high"] - big["auroc_low"] < wide / 2.5


def test_bootstrap_keeps_both_class_counts_and_is_nan_without_a_class():
    scores, flags = _separated_scores(50)
    counts = []
    bootstrap_interval(scores, flags, lambda s, f: counts.append((len(s), int(f.sum()))) or 0.0, resamples=20)
    assert counts == [(50, 10)] * 20
    result = evaluate_detection(scores, np.zeros(50, bool), resamples=20)
    assert all(math.isnan(result[k]) for k in ("auroc", "auroc_low", "auroc_high", "tpr_at_5_fpr_low"))
    assert result["n_poisoned"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: evaluate_detection([0.1, 0.2], [True]), "equal in length"),
    (lambda: evaluate_detection([0.1, float("nan")], [True, False]), "finite"),
    (lambda: evaluate_detection([0.1, 0.2], [True, False], resamples=0), "resamples"),
    (lambda: evaluate_detection([0.1, 0.2], [True, False], level=1.0), "level"),
])
def test_evaluate_detection_rejects_bad_input(call, message):
    with pytest.raises(BibaddiffError, match=message):
        call()


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


def _scored_set(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n scores, a fifth of them poisoned and shifted up by ``shift`` standard deviations."""
    rng = np.random.default_rng(seed)
    flags = np.arange(n) < n // 5
    return rng.normal(size=n) + shift * flags, flags


def test_the_fast_bootstrap_auroc_is_sklearn_auroc_of_the_resampled_images():
    from sklearn.metrics import roc_auc_score

    from bibaddiff.defenses.detectors import _stratified_bootstrap_aurocs

    scores, flags = _scored_set(120, 1.0, 0)
    scores = np.round(scores, 1)  # with ties

    class RecordingGenerator:
        def __init__(self):
            self.generator, self.draws = np.random.default_rng(5), []

        def integers(self, low, high, size):
            self.draws.append(self.generator.integers(low, high, size))
            return self.draws[-1]

    rng = RecordingGenerator()
    values = _stratified_bootstrap_aurocs(scores, flags, 4, rng)
    positives, negatives = np.flatnonzero(flags), np.flatnonzero(~flags)
    resampled_flags = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    for b, value in enumerate(values):
        rows = np.r_[positives[rng.draws[0][b]], negatives[rng.draws[1][b]]]
        assert value == pytest.approx(roc_auc_score(resampled_flags, scores[rows]), abs=1e-12)


def test_same_score_distributions_give_a_difference_interval_that_covers_zero():
    from bibaddiff.defenses.detectors import compare_aurocs

    result = compare_aurocs(_scored_set(500, 1.0, 0), [_scored_set(500, 1.0, 1)], resamples=1000, seed=0)
    one = result["generated"][0]
    assert one["auroc_difference"] == pytest.approx(one["auroc"] - result["training"]["auroc"])
    assert one["auroc_difference_low"] < 0 < one["auroc_difference_high"]
    assert result["pooled"]["auroc_difference_low"] < 0 < result["pooled"]["auroc_difference_high"]


def test_well_separated_generated_scores_give_a_difference_interval_above_zero():
    from bibaddiff.defenses.detectors import compare_aurocs

    training, generated = _scored_set(500, 0.5, 0), _scored_set(500, 3.0, 1)
    result = compare_aurocs(training, [generated], resamples=1000, seed=0)
    assert result["training"]["auroc"] == auroc(*training)
    assert result["generated"][0]["auroc"] == auroc(*generated)
    assert 0 < result["generated"][0]["auroc_difference_low"] < result["generated"][0]["auroc_difference"]
    assert result["pooled"]["auroc_difference_low"] > 0 and result["pooled"]["sets_scored"] == 1
    assert math.isnan(result["pooled"]["between_seed_sd"])  # one seed has no spread
    assert result == compare_aurocs(training, [generated], resamples=1000, seed=0)  # seeded


def test_the_pooled_interval_widens_when_seeds_disagree():
    from bibaddiff.defenses.detectors import compare_aurocs

    training = _scored_set(400, 1.0, 0)
    agreeing = [_scored_set(400, 1.5, seed) for seed in (1, 2, 3)]
    disagreeing = [_scored_set(400, shift, seed) for shift, seed in ((0.5, 1), (1.5, 2), (3.0, 3))]
    agree = compare_aurocs(training, agreeing, resamples=1000, seed=0)["pooled"]
    disagree = compare_aurocs(training, disagreeing, resamples=1000, seed=0)["pooled"]
    assert disagree["between_seed_sd"] > 3 * agree["between_seed_sd"]
    width = lambda pooled: pooled["auroc_difference_high"] - pooled["auroc_difference_low"]
    assert width(disagree) > 2 * width(agree)
    # Each seed's own interval is about as wide in both cases: the width comes from the seeds' spread.
    assert agree["auroc_low"] <= agree["auroc"] <= agree["auroc_high"]


def test_a_generated_set_without_poisoned_images_has_no_auroc_and_is_left_out_of_the_pooled_estimate():
    from bibaddiff.defenses.detectors import compare_aurocs

    scored = _scored_set(200, 2.0, 1)
    result = compare_aurocs(_scored_set(200, 2.0, 0), [scored, (np.zeros(200), np.zeros(200, bool))], resamples=200)
    assert math.isnan(result["generated"][1]["auroc"]) and math.isnan(result["generated"][1]["auroc_difference_low"])
    assert result["pooled"]["sets_scored"] == 1 and result["pooled"]["auroc"] == auroc(*scored)


@pytest.mark.parametrize("call, message", [
    (lambda c: c(([0.1, 0.2], [True]), []), r"training must be a \(scores, is_poisoned\) pair of 1-D arrays of equal"),
    (lambda c: c(([0.1, 0.2], [True, False]), [([0.1, float("nan")], [True, False])]), r"generated_sets\[0\]: scores must be finite"),
    (lambda c: c(([0.1, 0.2], [True, False]), ([0.1, 0.2], [True, False])), "pair"),
    (lambda c: c(([0.1, 0.2], [True, False]), "sets"), "generated_sets must be a list"),
    (lambda c: c(([0.1, 0.2], [True, False]), [], resamples=0), "resamples"),
    (lambda c: c(([0.1, 0.2], [True, False]), [], level=0), "level"),
])
def test_compare_aurocs_rejects_bad_input(call, message):
    from bibaddiff.defenses.detectors import compare_aurocs

    with pytest.raises(BibaddiffError, match=message):
        call(compare_aurocs)


def test_detection_items_round_trip(tmp_path):
    from bibaddiff.defenses.detectors import load_detection_items, save_detection_items

    flags, in_target = np.array([True, False, False]), np.array([True, True, False])
    save_detection_items(tmp_path / "set_items.npz", flags, in_target, {"strip": np.array([0.3, 0.1, 0.2])})
    items = load_detection_items(tmp_path / "set_items.npz")
    assert items["carries_trigger"].tolist() == flags.tolist() and items["in_target"].tolist() == in_target.tolist()
    assert list(items["scores"]) == ["strip"] and items["scores"]["strip"].tolist() == [0.3, 0.1, 0.2]
    with pytest.raises(BibaddiffError, match="one value per image"):
        save_detection_items(tmp_path / "bad.npz", flags, in_target, {"strip": np.zeros(2)})


def _detection_result(set_name: str, scored: tuple[np.ndarray, np.ndarray]) -> dict:
    scores, flags = scored
    in_target = np.arange(len(flags)) % 2 == 0
    in_target[:3] = True  # a few poisoned images in the target class, so that both scopes have both classes
    evaluated = {"all": evaluate_detection(scores, flags, resamples=50, seed=0),
                 "target_class": evaluate_detection(scores[in_target], flags[in_target], resamples=50, seed=0)}
    # What the set is comes from the plan (as the workflow's summary gets it), not from parsing its name in the report.
    name = parse_trainset(set_name)
    described = {"seed": "" if name.seed is None else str(name.seed), "guidance": name.guidance}
    return {"attack": "patch-p0.01", "set": set_name, **described, "n": len(flags), "n_flagged": int(flags.sum()),
            "detectors": {"strip": evaluated},
            "items": {"carries_trigger": flags, "in_target": in_target, "scores": {"strip": scores}}}


def _attack_columns(attack):
    return {"attack": attack, "poison_ratio": 0.01, "trigger": "patch"}


def test_detection_table_has_a_row_per_seed_and_a_pooled_row_decided_on_the_difference():
    from bibaddiff.report.defenses import DETECTION_COLUMNS, _detection_table

    detections = [_detection_result("training", _scored_set(300, 0.5, 0)),
                  _detection_result("generated_seed0_s6", _scored_set(300, 3.0, 1)),
                  _detection_result("generated_seed1_s6", _scored_set(300, 3.0, 2)),
                  _detection_result("generated_seed1_s1", _scored_set(300, 0.5, 3)),
                  _detection_result("generated_seed0_s1", _scored_set(300, 0.5, 4))]
    asr = {("patch-p0.01", "poisoned"): 0.9, ("patch-p0.01", "generated_seed0_s6"): 0.8,
           ("patch-p0.01", "generated_seed1_s6"): 0.05, ("patch-p0.01", "generated_seed0_s1"): 0.7,
           ("patch-p0.01", "generated_seed1_s1"): 0.6}
    table = _detection_table(detections, _attack_columns, asr, seed=0, resamples=500)
    assert list(table.columns) == DETECTION_COLUMNS and not any("envelope" in c for c in table.columns)
    everything = table[table.scope == "all"]
    assert everything.generated_guidance.tolist() == [1.0] * 3 + [6.0] * 3
    assert everything.seed.tolist() == ["0", "1", "pooled"] * 2
    assert (table.auroc_generated_higher == (table.auroc_difference_low > 0)).all()
    at_6 = everything[everything.generated_guidance == 6.0].set_index("seed")
    assert at_6.auroc_generated_higher.all() and not everything[everything.generated_guidance == 1.0].auroc_generated_higher.any()
    pooled = at_6.loc["pooled"]
    assert pooled.auroc_generated == pytest.approx(at_6.loc[["0", "1"]].auroc_generated.mean())
    assert pooled.between_seed_sd == pytest.approx(np.std(at_6.loc[["0", "1"]].auroc_generated, ddof=1))
    assert pooled.n_generated == 600 and pooled.generated_sets == 2 and pooled.generated_sets_scored == 2
    # Seed 1's screening classifier at s = 6 has no backdoor: its row and the pooled row say so, seed 0's does not.
    assert at_6.no_backdoor_to_detect.to_dict() == {"0": False, "1": True, "pooled": True}
    assert at_6.screening_asr_generated.to_dict() == pytest.approx({"0": 0.8, "1": 0.05, "pooled": 0.425})
    assert (table.screening_asr_training == 0.9).all() and not table.training_at_ceiling.any()


def test_two_variants_of_one_detector_get_rows_of_their_own_labelled_with_their_variant(tmp_path):
    from bibaddiff.report.defenses import _detection_table, plot_detection

    def result(set_name, seed):
        plain = _detection_result(set_name, _scored_set(200, 1.0, seed))
        runs = {"cognitive_distillation_probabilities": "probabilities", "cognitive_distillation_published": "published",
                "fct": "published"}
        plain["detectors"] = {**{name: {**plain["detectors"]["strip"], "variant": variant} for name, variant in runs.items()},
                              "strip": {**plain["detectors"]["strip"], "variant": None}}
        plain["items"]["scores"] = {name: plain["items"]["scores"]["strip"] + k for k, name in enumerate(plain["detectors"])}
        return plain

    table = _detection_table([result("training", 0), result("generated_seed0_s1", 1)], _attack_columns,
                             {}, seed=0, resamples=50)
    labels = table[["detector", "variant"]].drop_duplicates().itertuples(index=False)
    assert {(detector, None if isinstance(variant, float) and math.isnan(variant) else variant)
            for detector, variant in labels} == {("cognitive_distillation_probabilities", "probabilities"),
                                               ("cognitive_distillation_published", "published"),
                                               ("fct", "published"), ("strip", None)}
    assert len(table) == 4 * 2 * 2  # detectors x scopes x (one seed + pooled)
    plot_detection(table, tmp_path / "detection.png")
    assert (tmp_path / "detection.png").stat().st_size > 0


def test_a_training_auroc_of_one_is_flagged_at_ceiling_and_a_set_without_flags_is_counted_not_scored():
    from bibaddiff.report.defenses import _detection_table

    perfect = (np.r_[np.full(20, 5.0), np.zeros(180)], np.arange(200) < 20)
    detections = [_detection_result("training", perfect),
                  _detection_result("generated_seed0_s6", _scored_set(200, 2.0, 1)),
                  _detection_result("generated_seed1_s6", (np.zeros(200), np.zeros(200, bool)))]
    table = _detection_table(detections, _attack_columns, {}, resamples=200)
    rows = table[table.scope == "all"].set_index("seed")
    assert rows.training_at_ceiling.all() and not rows.auroc_generated_higher.any()
    assert rows.loc["pooled"].generated_sets == 2 and rows.loc["pooled"].generated_sets_scored == 1
    assert rows.loc["pooled"].auroc_generated == rows.loc["0"].auroc_generated
    assert math.isnan(rows.loc["1"].auroc_generated) and rows.loc["pooled"].n_generated == 400
    assert rows.screening_asr_training.isna().all() and not rows.no_backdoor_to_detect.any()  # ASR unknown


def test_detection_table_needs_per_image_scores_and_leaves_a_missing_training_set_empty():
    from bibaddiff.report.defenses import _detection_table

    result = _detection_result("generated_seed0_s6", _scored_set(50, 1.0, 0))
    with pytest.raises(BibaddiffError, match="no per-image scores"):
        _detection_table([{k: v for k, v in result.items() if k != "items"}], _attack_columns, {})
    # A model whose training set is not at hand (imported with a stated training share): its generated sets keep
    # their AUROCs, and every training column and difference is empty.
    table = _detection_table([result], _attack_columns, {}, resamples=50)
    rows = table[table.scope == "all"].set_index("seed")
    assert rows.auroc_generated.notna().all() and rows.auroc_training.isna().all()
    assert rows.auroc_difference.isna().all() and not rows.auroc_generated_higher.any()
    assert (rows.n_training == 0).all()
    with pytest.raises(BibaddiffError, match="neither 'training' nor a generated set"):
        _detection_table([{**result, "set": "poisoned", "seed": "", "guidance": None}], _attack_columns, {})


def test_detection_figure_draws_per_seed_and_pooled_rows(tmp_path):
    from bibaddiff.report.defenses import _detection_table, plot_detection

    detections = [_detection_result("training", _scored_set(100, 1.0, 0)),
                  _detection_result("generated_seed0_s6", _scored_set(100, 2.0, 1)),
                  _detection_result("generated_seed1_s6", _scored_set(100, 2.0, 2))]
    table = _detection_table(detections, _attack_columns, {("patch-p0.01", "poisoned"): 0.1}, resamples=100)
    plot_detection(table, tmp_path / "detection.png")
    assert (tmp_path / "detection.png").stat().st_size > 0


def test_inference_on_large_images_goes_in_batches_capped_by_pixels():
    """512 images at 256 px per batch made 4 GB activations in a judge's first layer; predictions and features are
    the same whatever the batch, so large images go a few at a time and small ones keep their batch."""
    from bibaddiff.images import inference_batch_size

    assert inference_batch_size(np.zeros((1, 16, 16, 1)), 512) == 512
    assert inference_batch_size(np.zeros((1, 256, 256, 3)), 512) == 32
    assert inference_batch_size(np.zeros((1, 4096, 4096, 3)), 512) == 1
    torch.manual_seed(0)
    model = build_judge("small_cnn", 3, 4).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
    images = np.random.default_rng(0).integers(0, 256, (40, 256, 256, 3), dtype=np.uint8)
    batched = predict(model, images)
    assert max(seen) == 32
    one_by_one = np.concatenate([predict(model, images[i:i + 1]) for i in range(len(images))])
    np.testing.assert_array_equal(batched, one_by_one)
    features = penultimate_features(model, images)
    np.testing.assert_allclose(features, np.concatenate([penultimate_features(model, images[i:i + 1])
                                                         for i in range(len(images))]), rtol=1e-5, atol=1e-6)


def test_penultimate_layers_of_a_resnet_judge_leave_the_judge_whole():
    from bibaddiff.judges import penultimate_layers

    torch.manual_seed(0)
    judge = build_judge("resnet18", 3, 5).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = judge(images)
        features = penultimate_layers(judge)(images)
        assert features.shape == (2, 512)
        torch.testing.assert_close(judge(images), logits)
        torch.testing.assert_close(judge.fc(features), logits)
