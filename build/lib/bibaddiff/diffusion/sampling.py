"""Guided DDIM sampling.

Guidance convention (stated once, used everywhere): ``eps = eps_null + s * (eps_cond - eps_null)``.
s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 classifier-free guidance, as in
diffusers' ``guidance_scale``. The paper's w (Ho & Salimans: ``(1 + w) eps_cond - w eps_null``) is s = 1 + w.

What DDIM does with the predicted clean image x0 at each step (``x0_clipping``):

- ``none``: x0 is used as predicted, as in the paper's DDPM sampler and Stable Diffusion's DDIM;
- ``clip``: x0 is clipped to [-1, 1] and the unclipped noise estimate is kept (diffusers' ``clip_sample``);
- ``clip_recompute``: x0 is clipped and the noise estimate is recomputed from the clipped x0, so the two agree.

Which timesteps DDIM visits (``timesteps``: ``leading``, diffusers' spacing and its own ``DDIMScheduler.step``;
``quadratic``, upstream's list, stepped by :func:`ddim_update` over explicit (t, t_prev) pairs) and the precision the
denoiser runs in (``precision``: ``fp32``, or ``bf16`` / ``fp16`` under ``torch.autocast``) are described in
:mod:`bibaddiff.diffusion.timesteps`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from bibaddiff.errors import BibaddiffError
from bibaddiff.diffusion.timesteps import (DEFAULT_PRECISION, DEFAULT_TIMESTEPS, check_precision_name,
                                           check_timestep_spacing, quadratic_timesteps)
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


def cpu_supports_bf16() -> bool:
    """Whether this CPU has bf16 kernels (oneDNN's own test; AVX512-BF16 or AMX where that test is missing)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def sampling_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the denoiser runs in: no autocast for fp32, ``torch.autocast`` for bf16 and fp16; a device that
    cannot run the precision stops with one line naming ``generation.precision``."""
    check_precision_name(precision)
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BibaddiffError(f"generation.precision: bf16, but {torch.cuda.get_device_name(device)} has no bf16 "
                                 "support; use fp32 or fp16")
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and precision == "bf16":
        if not cpu_supports_bf16():
            raise BibaddiffError("generation.precision: bf16, but this CPU has no bf16 support (torch's oneDNN test "
                                 "failed); use fp32")
        return torch.autocast("cpu", dtype=dtype)
    raise BibaddiffError(f"generation.precision: {precision} sampling needs "
                         f"{'a CUDA device' if precision == 'fp16' else 'a CUDA device or a CPU with bf16'}; this job "
                         f"samples on {device.type}; use fp32")


def timestep_pairs(ascending: Sequence[int]) -> list[tuple[int, int]]:
    """DDIM's (t, t_prev) pairs for an ascending list of timesteps, visited from its end: each entry steps to the one
    before it, the first to t_prev = -1 (the clean image, at the scheduler's final alpha)."""
    ascending = [int(t) for t in ascending]
    return [(ascending[i], ascending[i - 1] if i > 0 else -1) for i in range(len(ascending) - 1, -1, -1)]


def ddim_update(ddim: DDIMScheduler, eps: torch.Tensor, t: int, t_prev: int, sample: torch.Tensor,
                x0_clipping: str) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from timestep ``t`` to ``t_prev`` (-1: the clean image), for any pair,
    evenly spaced or not; diffusers' ``DDIMScheduler.step`` assumes the pairs of its own spacing.

    The same update as ``step``: x0 from the model output (``prediction_type``), clipped by ``clip`` and
    ``clip_recompute`` (which also recomputes the noise from the clipped x0), then
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``. ``t_prev = -1`` takes the scheduler's final alpha (1 for
    our DDPMs, as upstream's sampler; Stable Diffusion's scheduler sets alphas_cumprod[0])."""
    alphas = ddim.alphas_cumprod
    alpha_t = alphas[t]
    alpha_prev = alphas[t_prev] if t_prev >= 0 else ddim.final_alpha_cumprod
    beta_t = 1 - alpha_t
    kind = ddim.config.prediction_type
    if kind == "epsilon":
        x0, eps_pred = (sample - beta_t ** 0.5 * eps) / alpha_t ** 0.5, eps
    elif kind == "sample":
        x0, eps_pred = eps, (sample - alpha_t ** 0.5 * eps) / beta_t ** 0.5
    elif kind == "v_prediction":
        x0 = alpha_t ** 0.5 * sample - beta_t ** 0.5 * eps
        eps_pred = alpha_t ** 0.5 * eps + beta_t ** 0.5 * sample
    else:
        raise BibaddiffError(f"the model's scheduler has prediction_type {kind!r}; DDIM supports epsilon, sample "
                             "and v_prediction")
    if x0_clipping != "none":
        limit = ddim.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
    if x0_clipping == "clip_recompute":
        eps_pred = (sample - alpha_t ** 0.5 * x0) / beta_t ** 0.5
    return alpha_prev ** 0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps_pred


def sampling_timesteps(ddim: DDIMScheduler, num_inference_steps: int, timesteps: str | Sequence[int]) -> list[int] | None:
    """The ascending timesteps to step explicitly, or None for diffusers' leading spacing and its own step."""
    if isinstance(timesteps, str):
        if check_timestep_spacing(timesteps) == "leading":
            return None
        return quadratic_timesteps(num_inference_steps, ddim.config.num_train_timesteps)
    ascending = [int(t) for t in timesteps]
    if not ascending or any(b < a for a, b in zip(ascending, ascending[1:])) or not (
            0 <= ascending[0] and ascending[-1] < ddim.config.num_train_timesteps):
        raise BibaddiffError(f"explicit timesteps must be ascending in [0, {ddim.config.num_train_timesteps}); got "
                             f"{ascending}")
    return ascending


@torch.no_grad()
def sample_ddim(unet: UNet2DModel, scheduler: DDPMScheduler | DDIMScheduler, labels: torch.Tensor, null_class: int,
                guidance_scale: float, num_inference_steps: int, noise: torch.Tensor, *,
                x0_clipping: str, timesteps: str | Sequence[int] = DEFAULT_TIMESTEPS,
                precision: str = DEFAULT_PRECISION) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` for one batch, with ``x0_clipping`` of the clean-image estimate.

    ``timesteps``: ``leading`` (diffusers' spacing and step), ``quadratic`` (upstream's list, stepped explicitly), or
    an explicit ascending list of timesteps (stepped explicitly; for tests). ``precision``: ``fp32``, ``bf16`` or
    ``fp16`` (autocast of the denoiser). Returns the final samples of the diffusion space, unclamped (pixels are
    clamped when they become uint8).
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
    explicit = sampling_timesteps(ddim, num_inference_steps, timesteps)
    autocast = sampling_autocast(device, precision)
    steps = [(t, None) for t in ddim.timesteps] if explicit is None else [
        (torch.tensor(t, dtype=torch.long), t_prev) for t, t_prev in timestep_pairs(explicit)]
    sample = noise.to(device)
    labels = labels.to(device)
    null = torch.full_like(labels, null_class)
    for t, t_prev in steps:
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
        if t_prev is None:
            sample = ddim.step(eps.float(), t, sample, eta=0.0,
                               use_clipped_model_output=x0_clipping == "clip_recompute").prev_sample
        else:
            sample = ddim_update(ddim, eps.float(), int(t), t_prev, sample, x0_clipping)
    return sample


def generate_images(unet: UNet2DModel, scheduler: DDPMScheduler, null_class: int, condition: int,
                    guidance_scale: float, num_images: int, num_inference_steps: int, seed: int,
                    batch_size: int = 250, sample_shape: tuple[int, int, int] | None = None,
                    decode: Callable[[torch.Tensor], np.ndarray] = to_uint8, *,
                    x0_clipping: str, rows: np.ndarray | None = None, timesteps: str = DEFAULT_TIMESTEPS,
                    precision: str = DEFAULT_PRECISION) -> np.ndarray:
    """``num_images`` uint8 images conditioned on ``condition``; paired across guidance scales by the seed.

    ``unet`` is called as ``unet(x_t, t, class_labels=...)``. A latent model passes the latent ``sample_shape``
    (C, H, W) and a ``decode`` from latents to uint8 images; by default samples are pixels of the UNet's size.
    ``rows``, one per image, replaces ``condition`` as the label passed to ``unet`` (a row of a prompt table);
    the initial noise still depends on ``condition``. ``timesteps`` and ``precision``: see :func:`sample_ddim`.
    """
    if num_images < 1 or batch_size < 1:
        raise BibaddiffError(f"generation.num_images and batch_size must be at least 1; got {num_images}, {batch_size}")
    check_x0_clipping(x0_clipping)
    check_timestep_spacing(timesteps)
    check_precision_name(precision)
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
                                          x0_clipping=x0_clipping, timesteps=timesteps, precision=precision)))
    return np.concatenate(batches)
