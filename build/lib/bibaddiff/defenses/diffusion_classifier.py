"""The class-conditional DM as a classifier: pick the class whose condition denoises the image best.

For an image x0 and K draws (t_k, eps_k), each class c gets the error
``mean_k  filtered_mean_pixels (eps_theta(x_t, t_k, c) - eps_k)^2`` with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``,
and the prediction is the class with the smallest error. Every class sees the same draws, so differences between
classes come from the condition alone, not from luck of the draw. Draws are also shared by all images: each image's
prediction then does not depend on which other images are classified with it.

p_filter discards the largest p_filter share of the pixel-wise squared errors of each (image, draw, class) before
averaging. A trigger is a few pixels that the target condition denoises unusually well or badly; dropping the
worst pixels stops them from deciding the class (the paper's robust diffusion classifier).

Two weightings of the draws:

- ``uniform``: timesteps uniform in [t_min, t_max), every draw weighted 1 (the noise-prediction error as trained).
- ``edm``: the paper's (EDM, Karras et al. 2022, as upstream's ``edm/pred.py`` uses it): noise levels
  sigma ~ log-normal(P_mean, P_std), and the x0 error weighted by lambda(sigma) = (sigma^2 + sigma_d^2) /
  (sigma sigma_d)^2. On our DDPM, x_t / sqrt(abar_t) = x0 + sigma_t eps with sigma_t = sqrt((1 - abar_t) / abar_t),
  so each sigma maps to the timestep whose sigma_t is nearest, and the x0 error of an epsilon model is
  sigma_t^2 (eps_theta - eps)^2: the weighted x0 error is (1 + sigma_t^2 / sigma_d^2) times the squared noise error.
  A positive factor per draw leaves p_filter's choice of pixels unchanged; it weights the draws against each other.

With ``fresh_draws`` every image gets draws of its own (the paper's: 100 per image) instead of draws shared by all
images; every class of one image still sees the same draws.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bibaddiff.images import inference_batch_size, pixel_capped_batch_size, to_model_space
from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError

__all__ = ["diffusion_classify", "class_denoising_errors", "draw_timesteps_and_noise", "noise_levels",
           "WEIGHTINGS"]
WEIGHTINGS = ("uniform", "edm")
# EDM's training distribution of noise levels and its data standard deviation (Karras et al. 2022, Table 1).
EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5


def _check_p_filters(p_filters: Sequence[float]) -> list[float]:
    if isinstance(p_filters, (str, bytes)) or not hasattr(p_filters, "__iter__"):
        raise BibaddiffError(f"p_filters must be a list of numbers in [0, 1); got {p_filters!r}")
    p_filters = list(p_filters)
    if not p_filters:
        raise BibaddiffError("p_filters must name at least one value in [0, 1); got an empty list")
    for p in p_filters:
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0.0 <= p < 1.0:
            raise BibaddiffError(f"every p_filter must be a number in [0, 1); got {p!r}")
    return [float(p) for p in p_filters]


def _timestep_range(scheduler: Any, t_range: tuple[int, int] | None) -> tuple[int, int]:
    total = int(scheduler.config.num_train_timesteps)
    if t_range is None:
        return 0, total
    if not isinstance(t_range, (tuple, list)) or len(t_range) != 2:
        raise BibaddiffError(f"t_range must be a pair (t_min, t_max); got {t_range!r}")
    t_min, t_max = (check_int(t, "t_range bound", 0) for t in t_range)
    if not 0 <= t_min < t_max <= total:
        raise BibaddiffError(f"t_range must satisfy 0 <= t_min < t_max <= {total}; got {tuple(t_range)}")
    return t_min, t_max


def draw_timesteps_and_noise(num_draws: int, image_shape: tuple[int, int, int], t_range: tuple[int, int],
                             seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K (timestep, noise) draws shared by every image and class: timesteps (K,) uniform in
    [t_min, t_max) and standard normal noise (K, C, H, W), from a CPU generator so that any device gives the same."""
    num_draws = check_int(num_draws, "num_draws", 1)
    seed = check_int(seed, "seed", 0)
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.randint(int(t_range[0]), int(t_range[1]), (num_draws,), generator=generator)
    noise = torch.randn((num_draws, *image_shape), generator=generator)
    return timesteps, noise


def noise_levels(scheduler: Any, count: int, weighting: str, t_range: tuple[int, int], generator: torch.Generator,
                 p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD,
                 sigma_data: float = EDM_SIGMA_DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` timesteps and the weight of each draw's squared noise error, under ``weighting`` (see the module
    docstring); edm's sigmas map to the nearest timestep's sigma_t within ``t_range``."""
    if weighting not in WEIGHTINGS:
        raise BibaddiffError(f"defenses.diffusion_classifier.weighting must be one of {', '.join(WEIGHTINGS)}; "
                             f"got {weighting!r}")
    t_min, t_max = t_range
    if weighting == "uniform":
        return torch.randint(int(t_min), int(t_max), (count,), generator=generator), torch.ones(count, dtype=torch.float64)
    if not sigma_data > 0 or not p_std > 0:
        raise BibaddiffError(f"defenses.diffusion_classifier: sigma_data and p_std must be positive; got "
                             f"{sigma_data}, {p_std}")
    abar = scheduler.alphas_cumprod[t_min:t_max].double()
    sigmas = ((1 - abar) / abar).sqrt()
    wanted = (p_mean + p_std * torch.randn(count, generator=generator, dtype=torch.float64)).exp()
    nearest = (sigmas[None, :] - wanted[:, None]).abs().argmin(1)
    return nearest + t_min, 1.0 + sigmas[nearest] ** 2 / sigma_data ** 2


@torch.no_grad()
def class_denoising_errors(unet: Any, scheduler: Any, images_uint8: np.ndarray, num_classes: int, num_draws: int,
                           p_filters: Sequence[float], t_range: tuple[int, int] | None = None, seed: int = 0,
                           batch_size: int = 256,
                           encode: Callable[[np.ndarray], torch.Tensor] | None = None, weighting: str = "uniform",
                           fresh_draws: bool = False, **edm: float) -> dict[float, np.ndarray]:
    """Mean filtered denoising error of every image under every class condition, for each p_filter:
    ``{p_filter: array (N, num_classes)}``.

    The pixel-wise errors are computed once; every p_filter is derived from the same sorted errors, so asking for
    several costs the same as one. ``t_range`` defaults to all training timesteps. Work items (draw, image, class)
    go through the UNet ``batch_size`` at a time, fewer where their pixels would pass
    ``bibaddiff.images.INFERENCE_PIXELS_PER_BATCH``. A latent model passes ``encode`` (uint8 images to its latents,
    called with as many images at a time, capped by their own pixels); the errors are then measured on latents, as the model denoises them.
    ``weighting`` and ``fresh_draws`` are described in the module docstring; ``edm`` takes ``p_mean``, ``p_std`` and
    ``sigma_data``. The result is the weighted mean over draws.
    """
    p_filters = _check_p_filters(p_filters)
    num_classes = check_int(num_classes, "num_classes", 2)
    num_draws = check_int(num_draws, "num_draws", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", 0)
    images = _check_model_and_images(unet, scheduler, images_uint8, num_classes, encode)
    t_min, t_max = _timestep_range(scheduler, t_range)
    device = next(unet.parameters()).device
    unet.eval()
    clean = _diffusion_space(images, encode, inference_batch_size(images, batch_size))
    n, pixels = len(images), int(np.prod(clean.shape[1:]))
    # The configured 500 items at 256 px made GB-sized UNet activations (13 GB peak on the CPU for ten images).
    batch_size = pixel_capped_batch_size(clean.shape[2], clean.shape[3], batch_size)
    # Draws are indexed (draw, image); shared draws repeat one row for every image.
    generator = torch.Generator().manual_seed(seed)
    per_draw = n if fresh_draws else 1
    timesteps, weights = noise_levels(scheduler, num_draws * per_draw, weighting, (t_min, t_max), generator, **edm)
    timesteps, weights = timesteps.view(num_draws, per_draw), weights.view(num_draws, per_draw).numpy()
    noise = torch.randn((num_draws, per_draw, *clean.shape[1:]), generator=generator)
    weight_sums = weights.sum(0) if fresh_draws else np.full(n, weights.sum())
    # floor(p * P) pixels dropped leaves at least one, since p < 1.
    kept = {p: pixels - int(math.floor(p * pixels)) for p in p_filters}
    needs_sort = any(k < pixels for k in kept.values())
    totals = {p: np.zeros((n, num_classes), np.float64) for p in p_filters}

    # Items run draw-major, then image, then class: the classes of one (draw, image) pair sit side by side.
    num_items = num_draws * n * num_classes
    for start in tqdm(range(0, num_items, batch_size), desc="diffusion classifier", unit="batch"):
        item = torch.arange(start, min(num_items, start + batch_size))
        draw, image, label = item // (n * num_classes), (item // num_classes) % n, item % num_classes
        column = image if fresh_draws else torch.zeros_like(image)
        eps = noise[draw, column].to(device)
        t = timesteps[draw, column].to(device)
        noisy = scheduler.add_noise(clean[image].to(device), eps, t)
        # Full precision on purpose: the class decision compares errors that can differ in the third digit.
        predicted = unet(noisy, t, class_labels=label.to(device)).sample.float()
        errors = (predicted - eps).pow(2).flatten(1).double()
        # Ascending cumulative sums give the mean of the smallest k errors for any k at once.
        running = torch.sort(errors, dim=1).values.cumsum(1).cpu().numpy() if needs_sort else None
        full_mean = errors.mean(1).cpu().numpy()
        rows, cols = image.numpy(), label.numpy()
        weight = weights[draw.numpy(), column.numpy()]
        for p, keep in kept.items():
            value = full_mean if keep == pixels else running[:, keep - 1] / keep
            np.add.at(totals[p], (rows, cols), weight * value)
    return {p: total / weight_sums[:, None] for p, total in totals.items()}



def _check_model_and_images(unet: Any, scheduler: Any, images_uint8: np.ndarray, num_classes: int,
                            encode: Callable | None) -> np.ndarray:
    """The images as an array, once they, the class count and the model fit the diffusion classifier."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise BibaddiffError(f"images must be a non-empty uint8 batch (N, H, W, C); got {images.dtype} {images.shape}")
    config = unet.config
    expected = (int(config.sample_size), int(config.sample_size), int(config.in_channels))
    if encode is None and images.shape[1:] != expected:
        raise BibaddiffError(f"images of shape {images.shape[1:]} do not fit the UNet, which expects {expected}")
    embeds = getattr(config, "num_class_embeds", None)
    # bibaddiff's UNet has one embedding per class plus the null class (index num_classes), never used here.
    if embeds is not None and num_classes + 1 > int(embeds):
        raise BibaddiffError(f"num_classes {num_classes} needs {num_classes + 1} class embeddings (with the null "
                             f"class); the UNet has {embeds}")
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise BibaddiffError(f"the diffusion classifier needs an epsilon-prediction model; got prediction_type {prediction_type!r}")
    return images


def _diffusion_space(images: np.ndarray, encode: Callable | None, batch_size: int) -> torch.Tensor:
    """(N, C, H, W) on the CPU, in the space the model denoises (pixels in [-1, 1], or latents); batches move to
    the device as they are built."""
    if encode is None:
        return to_model_space(images)
    return torch.cat([encode(images[start:start + batch_size]).float().cpu() for start in range(0, len(images), batch_size)])

def diffusion_classify(unet: Any, scheduler: Any, images_uint8: np.ndarray, num_classes: int, num_draws: int,
                       p_filters: Sequence[float], t_range: tuple[int, int] | None = None, seed: int = 0,
                       batch_size: int = 256,
                       encode: Callable[[np.ndarray], torch.Tensor] | None = None, weighting: str = "uniform",
                       fresh_draws: bool = False, **edm: float) -> dict[float, np.ndarray]:
    """Predicted class of each image for each p_filter: ``{p_filter: int64 array (N,)}``, the argmin over classes
    of :func:`class_denoising_errors` (ties go to the lower class index)."""
    errors = class_denoising_errors(unet, scheduler, images_uint8, num_classes, num_draws, p_filters,
                                    t_range=t_range, seed=seed, batch_size=batch_size, encode=encode,
                                    weighting=weighting, fresh_draws=fresh_draws, **edm)
    return {p: np.argmin(error, axis=1).astype(np.int64) for p, error in errors.items()}
