"""Tests of the diffusion classifier: shared draws, determinism, and a case built so that p_filter decides."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bibaddiff.defenses.diffusion_classifier import class_denoising_errors, diffusion_classify
from bibaddiff.diffusion.model import build_scheduler, build_unet
from bibaddiff.images import to_model_space
from bibaddiff.errors import BibaddiffError

SIZE, CHANNELS, CLASSES = 8, 1, 3
PIXELS = SIZE * SIZE * CHANNELS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_unet(SIZE, CHANNELS, CLASSES, block_out_channels=[8, 16], norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def scheduler():
    return build_scheduler()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(3, SIZE, SIZE, CHANNELS)).astype(np.uint8)


class Recorder(nn.Module):
    """Passes calls to a UNet and keeps every (noisy input, timestep, class) it was given."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.config = unet.config
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, sample, timestep, class_labels):
        self.calls.append((sample.clone(), timestep.clone(), class_labels.clone()))
        return self.unet(sample, timestep, class_labels=class_labels)


class BuiltEpsilon(nn.Module):
    """A fake UNet that knows the clean image and so the true noise; its error for class c is ``error_of[c]``.

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, so eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t).
    """

    def __init__(self, clean_image: torch.Tensor, scheduler, error_of: dict[int, torch.Tensor]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the classifier a device to read
        self.clean = clean_image
        self.alphas = scheduler.alphas_cumprod
        self.error_of = error_of
        self.config = SimpleNamespace(sample_size=SIZE, in_channels=CHANNELS, num_class_embeds=len(error_of) + 1)

    def forward(self, sample, timestep, class_labels):
        abar = self.alphas[timestep].view(-1, 1, 1, 1)
        true_eps = (sample - abar.sqrt() * self.clean) / (1 - abar).sqrt()
        error = torch.stack([self.error_of[int(c)] for c in class_labels])
        return SimpleNamespace(sample=true_eps + error)


def _built_case(scheduler, few_pixels: int = 2):
    """Class 0: exact except ``few_pixels`` pixels off by 10; class 1: off by 0.5 everywhere; class 2: off by 3."""
    image = np.random.default_rng(1).integers(0, 256, size=(1, SIZE, SIZE, CHANNELS)).astype(np.uint8)
    few = torch.zeros(CHANNELS, SIZE, SIZE)
    few.view(-1)[[5, 40][:few_pixels]] = 10.0
    errors = {0: few, 1: torch.full((CHANNELS, SIZE, SIZE), 0.5), 2: torch.full((CHANNELS, SIZE, SIZE), 3.0)}
    fake = BuiltEpsilon(to_model_space(image), scheduler, errors)
    return fake, np.repeat(image, 4, axis=0)


def test_p_filter_changes_the_decision(scheduler):
    fake, images = _built_case(scheduler)
    share = 2 / PIXELS  # the two bad pixels of class 0: 0.03125
    p_filters = [0.0, 0.015, share, 0.05, 0.5]
    errors = class_denoising_errors(fake, scheduler, images, CLASSES, num_draws=3, p_filters=p_filters,
                                    t_range=(100, 900), seed=0, batch_size=5)
    # Plain mean: class 0 pays 2 * 10^2 / 64 = 3.125, class 1 0.25, class 2 9.
    np.testing.assert_allclose(errors[0.0], np.tile([3.125, 0.25, 9.0], (4, 1)), rtol=1e-4)
    # 0.015 of 64 pixels rounds down to dropping none: unchanged.
    np.testing.assert_allclose(errors[0.015], errors[0.0], rtol=1e-12)
    # Dropping the two worst pixels leaves class 0 exact; uniform errors keep their mean.
    for p in (share, 0.05, 0.5):
        np.testing.assert_allclose(errors[p], np.tile([0.0, 0.25, 9.0], (4, 1)), atol=1e-4)
    predictions = diffusion_classify(fake, scheduler, images, CLASSES, num_draws=3, p_filters=p_filters,
                                     t_range=(100, 900), seed=0, batch_size=5)
    assert {p: predictions[p].tolist() for p in p_filters} == {
        0.0: [1] * 4, 0.015: [1] * 4, share: [0] * 4, 0.05: [0] * 4, 0.5: [0] * 4}


def test_every_class_sees_the_same_draws(tiny_unet, scheduler, images):
    recorder = Recorder(tiny_unet)
    # A batch size that is no multiple of the class count makes batches cut across images and draws.
    class_denoising_errors(recorder, scheduler, images, CLASSES, num_draws=4, p_filters=[0.0], t_range=(50, 950),
                           seed=0, batch_size=5)
    samples = torch.cat([c[0] for c in recorder.calls])
    timesteps = torch.cat([c[1] for c in recorder.calls])
    labels = torch.cat([c[2] for c in recorder.calls])
    assert len(labels) == 4 * len(images) * CLASSES
    assert torch.equal(torch.bincount(labels), torch.full((CLASSES,), 4 * len(images)))
    for c in range(1, CLASSES):
        assert torch.equal(samples[labels == c], samples[labels == 0])
        assert torch.equal(timesteps[labels == c], timesteps[labels == 0])
    assert timesteps.min() >= 50 and timesteps.max() < 950
    assert len(torch.unique(timesteps)) > 1  # the draws differ from each other
    # Every image gets the same draws too: (draw k, image i) noisy inputs differ only through the clean image.
    per_draw = timesteps[labels == 0].view(4, len(images))
    assert torch.all(per_draw == per_draw[:, :1])


def test_deterministic_given_seed_and_independent_of_batch_size(tiny_unet, scheduler, images):
    def run(seed, batch_size):
        return class_denoising_errors(tiny_unet, scheduler, images, CLASSES, num_draws=4, p_filters=[0.0, 0.1],
                                      seed=seed, batch_size=batch_size)

    first, again, other = run(0, 64), run(0, 64), run(1, 64)
    small = run(0, 4)
    for p in (0.0, 0.1):
        np.testing.assert_array_equal(first[p], again[p])
        np.testing.assert_allclose(first[p], small[p], rtol=1e-5)
        assert not np.allclose(first[p], other[p])
        assert first[p].shape == (len(images), CLASSES) and np.all(first[p] >= 0)
    assert np.all(first[0.1] <= first[0.0] + 1e-12)  # dropping the largest errors can only lower the mean


def test_many_p_filters_agree_with_one_at_a_time(tiny_unet, scheduler, images):
    together = class_denoising_errors(tiny_unet, scheduler, images, CLASSES, 2, [0.0, 0.2, 0.6], seed=2)
    for p in (0.0, 0.2, 0.6):
        alone = class_denoising_errors(tiny_unet, scheduler, images, CLASSES, 2, [p], seed=2)
        np.testing.assert_allclose(together[p], alone[p], rtol=1e-9)
    predictions = diffusion_classify(tiny_unet, scheduler, images, CLASSES, 2, [0.0, 0.2, 0.6], seed=2)
    for p, predicted in predictions.items():
        assert predicted.dtype == np.int64
        np.testing.assert_array_equal(predicted, together[p].argmin(1))


def test_oracle_class_wins(scheduler):
    # A UNet that is exact only for class 2 makes class 2 the prediction, with or without filtering.
    image = np.random.default_rng(3).integers(0, 256, size=(1, SIZE, SIZE, CHANNELS)).astype(np.uint8)
    off = torch.full((CHANNELS, SIZE, SIZE), 0.3)
    fake = BuiltEpsilon(to_model_space(image), scheduler, {0: off, 1: -off, 2: torch.zeros_like(off)})
    predictions = diffusion_classify(fake, scheduler, np.repeat(image, 2, 0), CLASSES, 2, [0.0, 0.3],
                                     t_range=(100, 900))
    assert predictions[0.0].tolist() == [2, 2] and predictions[0.3].tolist() == [2, 2]


@pytest.mark.parametrize("change, message", [
    ({"p_filters": [1.0]}, r"p_filter must be a number in \[0, 1\); got 1.0"),
    ({"p_filters": [-0.1]}, "p_filter"),
    ({"p_filters": []}, "at least one"),
    ({"p_filters": 0.1}, "p_filters must be a list"),
    ({"t_range": (10, 5)}, "t_min < t_max"),
    ({"t_range": (0, 1001)}, "t_max <= 1000"),
    ({"num_draws": 0}, "num_draws"),
    ({"batch_size": 0}, "batch_size"),
    ({"num_classes": 4}, "needs 5 class embeddings .* the UNet has 4"),
    ({"num_classes": 1}, "num_classes"),
    ({"seed": -1}, "seed"),
    ({"images_uint8": np.zeros((2, 16, 16, 1), np.uint8)}, "do not fit the UNet"),
    ({"images_uint8": np.zeros((2, 8, 8, 1), np.float32)}, "uint8"),
])
def test_rejects_bad_input(tiny_unet, scheduler, images, change, message):
    arguments = dict(unet=tiny_unet, scheduler=scheduler, images_uint8=images, num_classes=CLASSES, num_draws=1,
                     p_filters=[0.0], t_range=None, seed=0, batch_size=8)
    arguments.update(change)
    with pytest.raises(BibaddiffError, match=message):
        diffusion_classify(**arguments)


def test_rejects_non_epsilon_scheduler(tiny_unet, images):
    from diffusers import DDPMScheduler

    v_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    with pytest.raises(BibaddiffError, match="v_prediction"):
        diffusion_classify(tiny_unet, v_scheduler, images, CLASSES, 1, [0.0])


def test_unet_batches_are_capped_by_pixels_and_give_the_same_errors(tiny_unet, scheduler, images, monkeypatch):
    import bibaddiff.images

    size = int(tiny_unet.config.sample_size)
    uncapped = class_denoising_errors(tiny_unet, scheduler, images, CLASSES, num_draws=2, p_filters=[0.0, 0.1],
                                      seed=0, batch_size=500)
    # Room for 3 images of this size per batch: a 256-px set under the real cap gets 32 per batch the same way.
    monkeypatch.setattr(bibaddiff.images, "INFERENCE_PIXELS_PER_BATCH", 3 * size * size)
    recorder = Recorder(tiny_unet)
    capped = class_denoising_errors(recorder, scheduler, images, CLASSES, num_draws=2, p_filters=[0.0, 0.1], seed=0,
                                    batch_size=500)
    assert max(len(call[2]) for call in recorder.calls) == 3
    assert sum(len(call[2]) for call in recorder.calls) == 2 * len(images) * CLASSES
    for p in (0.0, 0.1):
        np.testing.assert_allclose(capped[p], uncapped[p], rtol=1e-5)


# ------------------------------------------------------------------------- the paper's weighting and fresh draws


def test_fresh_draws_differ_between_images_and_are_shared_by_classes(tiny_unet, scheduler, images):
    recorder = Recorder(tiny_unet)
    class_denoising_errors(recorder, scheduler, images, CLASSES, num_draws=3, p_filters=[0.0], seed=0, batch_size=5,
                           fresh_draws=True)
    timesteps = torch.cat([c[1] for c in recorder.calls])
    labels = torch.cat([c[2] for c in recorder.calls])
    for c in range(1, CLASSES):
        assert torch.equal(timesteps[labels == c], timesteps[labels == 0])
    per_draw = timesteps[labels == 0].view(3, len(images))
    assert not torch.all(per_draw == per_draw[:, :1])  # each image has draws of its own


def test_fresh_draws_are_reproducible_and_independent_of_batch_size(tiny_unet, scheduler, images):
    def run(batch_size, weighting="edm"):
        return class_denoising_errors(tiny_unet, scheduler, images, CLASSES, num_draws=3, p_filters=[0.0], seed=4,
                                      batch_size=batch_size, fresh_draws=True, weighting=weighting)[0.0]

    np.testing.assert_allclose(run(64), run(7), rtol=1e-5)
    assert not np.allclose(run(64), run(64, "uniform"))


def test_edm_noise_levels_follow_the_log_normal_and_weight_the_x0_error():
    from bibaddiff.defenses.diffusion_classifier import noise_levels

    scheduler = build_scheduler()
    timesteps, weights = noise_levels(scheduler, 20000, "edm", (0, 1000), torch.Generator().manual_seed(0))
    abar = scheduler.alphas_cumprod[timesteps].double()
    sigma = ((1 - abar) / abar).sqrt()
    # log sigma of the chosen timesteps: EDM's P_mean -1.2 and P_std 1.2 (the schedule covers that range).
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.05)
    # lambda(sigma) sigma^2 = (sigma^2 + 0.25) / 0.25: the weight of the squared noise error.
    torch.testing.assert_close(weights, 1 + sigma ** 2 / 0.25)
    uniform_t, uniform_w = noise_levels(scheduler, 50, "uniform", (10, 20), torch.Generator().manual_seed(0))
    assert uniform_t.min() >= 10 and uniform_t.max() < 20 and torch.all(uniform_w == 1)
    with pytest.raises(BibaddiffError, match="weighting must be one of uniform, edm; got 'karras'"):
        noise_levels(scheduler, 1, "karras", (0, 1000), torch.Generator())


def test_weighted_mean_of_a_constant_error_is_that_error(scheduler):
    """Weights are normalised per image: an error that is the same at every noise level stays what it is."""
    fake, images = _built_case(scheduler)
    for weighting in ("uniform", "edm"):
        errors = class_denoising_errors(fake, scheduler, images, 3, num_draws=5, p_filters=[0.0], seed=1,
                                        weighting=weighting, fresh_draws=True)[0.0]
        np.testing.assert_allclose(errors[:, 1], 0.25, rtol=1e-6)  # 0.5 everywhere, squared
        np.testing.assert_allclose(errors[:, 2], 9.0, rtol=1e-6)
