"""Guided DDIM sampling.

Guidance convention (stated once, used everywhere): ``eps = eps_null + s * (eps_cond - eps_null)``.
s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 classifier-free guidance, as in
diffusers' ``guidance_scale``. The paper's w (Ho & Salimans: ``(1 + w) eps_cond - w eps_null``) is s = 1 + w.

What DDIM does with the predicted clean image x0 at each step (``x0_clipping``):

- ``none``: x0 is used as predicted, as in the paper's DDPM sampler and Stable Diffusion's DDIM;
- ``clip``: x0 is clipped to [-1, 1] and the unclipped noise estimate is kept (diffusers' ``clip_sample``);
- ``clip_recompute``: x0 is clipped and the noise estimate is recomputed from the clipped x0, so the two agree.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from bibaddiff.errors import BibaddiffError
from bibaddiff.images import to_uint8

X0_CLIPPING_MODES = ("none", "clip", "clip_recompute")


def check_x0_clipping(mode: str) -> str:
    if mode not in X0_CLIPPING_MODES:
        raise BibaddiffError(f"generation.x0_clipping must be one of {', '.join(X0_CLIPPING_MODES)}; got {mode!r}")
    return mode


def combine_guidance(eps_null: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``eps_null + scale * (eps_cond - eps_null)``."""
    return eps_null + scale * (eps_cond - eps_null)


def cell_noise(num_images: int, channels: int, image_size: int, seed: int, condition: int) -> torch.Tensor:
    """Initial noise that depends on (seed, condition) only, so that every guidance scale sees the same draws."""
    entropy = np.random.SeedSequence([int(seed), int(condition)]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(entropy))
    return torch.randn((num_images, channels, image_size, image_size), generator=generator)


@torch.no_grad()
def sample_ddim(unet: UNet2DModel, scheduler: DDPMScheduler | DDIMScheduler, labels: torch.Tensor, null_class: int,
                guidance_scale: float, num_inference_steps: int, noise: torch.Tensor, *,
                x0_clipping: str) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` for one batch, with ``x0_clipping`` of the clean-image estimate.

    Returns the final samples of the diffusion space, unclamped (pixels are clamped when they become uint8).
    """
    if num_inference_steps < 1:
        raise BibaddiffError(f"generation.ddim_steps must be at least 1; got {num_inference_steps}")
    if guidance_scale < 0:
        raise BibaddiffError(f"guidance scales must be >= 0; got {guidance_scale}")
    check_x0_clipping(x0_clipping)
    device = next(unet.parameters()).device
    # The mode, not the trained scheduler's config, decides clipping; a DDPMScheduler clips by default.
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=x0_clipping != "none", thresholding=False)
    ddim.set_timesteps(num_inference_steps)
    sample = noise.to(device)
    labels = labels.to(device)
    null = torch.full_like(labels, null_class)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for t in ddim.timesteps:
        with autocast:
            if guidance_scale == 1:
                eps = unet(sample, t, class_labels=labels).sample
            elif guidance_scale == 0:
                eps = unet(sample, t, class_labels=null).sample
            else:
                both = unet(torch.cat([sample, sample]), t, class_labels=torch.cat([labels, null])).sample
                eps_cond, eps_null = both.float().chunk(2)
                eps = combine_guidance(eps_null, eps_cond, guidance_scale)
        # Guidance pushes the predicted clean image outside [-1, 1]. Clipping it while keeping the unclipped noise
        # estimate makes the two disagree, and guided samples drift (measured: at s = 3 a clean model's class-6
        # samples became 1% sixes); clip_recompute makes them agree, none leaves x0 as the model predicts it.
        sample = ddim.step(eps.float(), t, sample, eta=0.0,
                           use_clipped_model_output=x0_clipping == "clip_recompute").prev_sample
    return sample


def generate_images(unet: UNet2DModel, scheduler: DDPMScheduler, null_class: int, condition: int,
                    guidance_scale: float, num_images: int, num_inference_steps: int, seed: int,
                    batch_size: int = 250, sample_shape: tuple[int, int, int] | None = None,
                    decode: Callable[[torch.Tensor], np.ndarray] = to_uint8, *,
                    x0_clipping: str, rows: np.ndarray | None = None) -> np.ndarray:
    """``num_images`` uint8 images conditioned on ``condition``; paired across guidance scales by the seed.

    ``unet`` is called as ``unet(x_t, t, class_labels=...)``. A latent model passes the latent ``sample_shape``
    (C, H, W) and a ``decode`` from latents to uint8 images; by default samples are pixels of the UNet's size.
    ``rows``, one per image, replaces ``condition`` as the label passed to ``unet`` (a row of a prompt table);
    the initial noise still depends on ``condition``.
    """
    if num_images < 1 or batch_size < 1:
        raise BibaddiffError(f"generation.num_images and batch_size must be at least 1; got {num_images}, {batch_size}")
    check_x0_clipping(x0_clipping)
    if not 0 <= condition < null_class:
        raise BibaddiffError(f"condition must be a class index in [0, {null_class}); got {condition}")
    if sample_shape is None:
        sample_shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    channels, height, width = sample_shape
    if height != width:
        raise BibaddiffError(f"samples must be square; got {height}x{width}")
    if rows is not None and (len(rows) != num_images or np.any(np.asarray(rows) == null_class)):
        raise BibaddiffError(f"rows must give one conditioning row per image ({num_images}), none the null row {null_class}")
    noise = cell_noise(num_images, channels, height, seed, condition)
    batches = []
    for start in tqdm(range(0, num_images, batch_size), desc=f"class {condition}, s={guidance_scale}", unit="batch"):
        chunk = noise[start:start + batch_size]
        labels = (torch.full((len(chunk),), condition, dtype=torch.long) if rows is None
                  else torch.as_tensor(np.asarray(rows[start:start + batch_size]), dtype=torch.long))
        batches.append(decode(sample_ddim(unet, scheduler, labels, null_class, guidance_scale, num_inference_steps, chunk,
                                          x0_clipping=x0_clipping)))
    return np.concatenate(batches)
