"""Pixel-space conversions between stored uint8 images (N, H, W, C) and model inputs (N, C, H, W) in [-1, 1].

Every model here (diffusion UNets, judges, detectors' classifiers) reads images in the same space, so this is the
one place that defines it. torch is imported on first call: importing this module stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bibaddiff.errors import BibaddiffError

if TYPE_CHECKING:
    import torch
    from PIL import Image


# Inference on large images goes this many pixels per batch at most (32 images at 256 px, 8 at 512 px; digits and
# CIFAR-10 keep their batches): 512 images at 256 px made 4 GB activations in a judge's first layer alone, and the
# judges' jobs peaked near 14 GB of host memory on the CPU.
INFERENCE_PIXELS_PER_BATCH = 2 ** 21


def inference_batch_size(images: np.ndarray, batch_size: int) -> int:
    """``batch_size``, or fewer images where that many would pass INFERENCE_PIXELS_PER_BATCH; for inference only, whose
    results do not depend on the batch. ``images`` is a stored batch (N, H, W, C)."""
    height, width = np.shape(images)[1:3]
    return pixel_capped_batch_size(height, width, batch_size)


def pixel_capped_batch_size(height: int, width: int, batch_size: int) -> int:
    """``batch_size``, or as many items of ``height`` x ``width`` as fit INFERENCE_PIXELS_PER_BATCH (at least one)."""
    return max(1, min(int(batch_size), INFERENCE_PIXELS_PER_BATCH // (int(height) * int(width))))


def to_model_space(images: np.ndarray) -> "torch.Tensor":
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(samples: "torch.Tensor") -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    import torch

    pixels = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def load_generated(path: str | Path) -> np.ndarray:
    """A cell of generated images (uint8 ``.npy``, N x H x W x C), or one line naming the file when it is missing,
    cut short (a node died while it was written) or not such an array, so that no garbage is measured."""
    path = Path(path)
    if not path.is_file():
        raise BibaddiffError(f"{path}: generated images not found")
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise BibaddiffError(f"{path}: unreadable or cut short ({str(error).splitlines()[0]}); delete it and rerun, "
                             "and the workflow generates it again") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise BibaddiffError(f"{path}: expected uint8 images (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
    return images


def image_grid(images: np.ndarray, columns: int = 8, max_images: int = 64, scale: int = 1) -> "Image.Image":
    """A grid of the first ``max_images`` uint8 (N, H, W, C) images, each ``scale`` times enlarged."""
    from PIL import Image

    images = np.asarray(images)[:max_images]
    if images.ndim != 4 or len(images) == 0:
        raise BibaddiffError(f"image_grid needs a non-empty (N, H, W, C) batch; got shape {images.shape}")
    n, height, width, channels = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 128, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (height + 1):1 + r * (height + 1) + height, 1 + c * (width + 1):1 + c * (width + 1) + width] = image
    pil = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode="L" if channels == 1 else "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil
