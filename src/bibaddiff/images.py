"""Pixel-space conversions between stored uint8 images (N, H, W, C) and model inputs (N, C, H, W) in [-1, 1].

Every model here (diffusion UNets, judges, detectors' classifiers) reads images in the same space, so this is the
one place that defines it. torch is imported on first call: importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def to_model_space(images: np.ndarray) -> "torch.Tensor":
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(samples: "torch.Tensor") -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    import torch

    pixels = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
