"""Which timesteps DDIM visits (``generation.timesteps``) and the precision it samples in (``generation.precision``).

Light on purpose (numpy only), so that the config check can use it without loading torch.

- ``leading``: diffusers' "leading" spacing, T // S apart: 980, 960, ..., 20, 0 for S = 50, T = 1000 (plus the
  scheduler's ``steps_offset``: 981, ..., 1 for Stable Diffusion, which is CompVis' ``ddim_discretize="uniform"``).
  The default, and what every cell before these settings was sampled with.
- ``quadratic``: upstream's ``--select quadratic`` (``ddpm/diffusion.py``): ``[0] + floor(linspace(0, sqrt(T),
  S - 1) ** 2)`` with the last entry set to T - 1. For S = 50, T = 1000: 0, 0, 0, 1, 3, 6, 10, ..., 878, 918, 958,
  999 (:func:`quadratic_timesteps`), dense near t = 0. DDIM visits the list from its end; each step goes from an
  entry to the one before it, the last from the first entry to the clean image. A step between two equal entries
  (the leading zeros) leaves the sample unchanged, as upstream's does, and still costs a model evaluation.
  (The DDIM paper's own quadratic selection, ``floor(linspace(0, sqrt(0.8 T), S) ** 2)``, ends at 800; upstream's
  differs from it, and it is upstream's that is implemented here.)
"""

from __future__ import annotations

import numpy as np

from bibaddiff.errors import BibaddiffError

TIMESTEP_SPACINGS = ("leading", "quadratic")
# fp32: no autocast (upstream's DDPM samples in fp32); bf16 / fp16: the denoiser runs under torch.autocast.
SAMPLING_PRECISIONS = ("fp32", "bf16", "fp16")
# The schema's defaults (a test keeps them equal): what every cell before these settings was sampled with.
DEFAULT_TIMESTEPS = "leading"
DEFAULT_PRECISION = "fp32"
# Upstream's quadratic list starts with these zeros for 50 steps; more zeros, or any other repeat, is refused.
QUADRATIC_LEADING_ZEROS = 3


def check_timestep_spacing(spacing: str) -> str:
    if spacing not in TIMESTEP_SPACINGS:
        raise BibaddiffError(f"generation.timesteps must be one of {', '.join(TIMESTEP_SPACINGS)}; got {spacing!r}")
    return spacing


def check_precision_name(precision: str) -> str:
    if precision not in SAMPLING_PRECISIONS:
        raise BibaddiffError(f"generation.precision must be one of {', '.join(SAMPLING_PRECISIONS)}; got {precision!r}")
    return precision


def raw_quadratic_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """Upstream's quadratic list, unchecked: ``[0] + floor(linspace(0, sqrt(T), S - 1) ** 2)``, last entry T - 1."""
    timesteps = [0] + (np.linspace(0, np.sqrt(num_train_timesteps), steps - 1) ** 2).astype(int).tolist()
    timesteps[-1] = num_train_timesteps - 1
    return timesteps


def quadratic_is_usable(timesteps: list[int]) -> bool:
    """At most the leading zeros repeat: no more than three zeros, then strictly increasing."""
    zeros = sum(1 for t in timesteps if t == 0)
    rest = [t for t in timesteps if t != 0]
    return zeros <= QUADRATIC_LEADING_ZEROS and all(b > a for a, b in zip(rest, rest[1:]))


def allowed_quadratic_steps(num_train_timesteps: int) -> list[int]:
    """Every step count whose quadratic list repeats nothing but its (up to three) leading zeros: 1..65 for T = 1000."""
    return [steps for steps in range(1, num_train_timesteps + 1)
            if quadratic_is_usable(raw_quadratic_timesteps(steps, num_train_timesteps))]


def quadratic_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """Upstream's quadratic list in ascending order, e.g. [0, 0, 0, 1, 3, ..., 958, 999] for 50 steps of T = 1000;
    a step count whose list repeats more than the leading zeros is refused with the allowed counts."""
    if steps < 1 or steps > num_train_timesteps:
        raise BibaddiffError(f"generation.ddim_steps must lie in 1..{num_train_timesteps}; got {steps}")
    timesteps = raw_quadratic_timesteps(steps, num_train_timesteps)
    if not quadratic_is_usable(timesteps):
        allowed = allowed_quadratic_steps(num_train_timesteps)
        raise BibaddiffError(
            f"generation.ddim_steps: {steps} steps with generation.timesteps quadratic repeat timesteps beyond the "
            f"{QUADRATIC_LEADING_ZEROS} leading zeros for {num_train_timesteps} training timesteps; allowed "
            f"{_ranges(allowed)}")
    return timesteps


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] -> '1..3, 5'."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts) or "none"


def sampler_options(settings: dict) -> dict[str, str]:
    """``timesteps`` and ``precision`` of a generation settings mapping, their defaults where it has none (the
    workflow's digests leave them out while they hold their defaults)."""
    return {"timesteps": check_timestep_spacing(settings.get("timesteps", DEFAULT_TIMESTEPS)),
            "precision": check_precision_name(settings.get("precision", DEFAULT_PRECISION))}


SAMPLER_KEYS = ("timesteps", "precision")


def non_default_sampler_options(generation: dict) -> dict[str, str]:
    """The ``generation`` keys of this module that differ from their defaults. The workflow digests these only, so
    that the folders of cells made before the keys existed (at today's defaults) keep their names."""
    defaults = {"timesteps": DEFAULT_TIMESTEPS, "precision": DEFAULT_PRECISION}
    return {key: generation[key] for key in SAMPLER_KEYS if key in generation and generation[key] != defaults[key]}
