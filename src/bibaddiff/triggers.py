"""Triggers: pixel-exact, vectorised, applied to whole uint8 batches of shape (N, H, W, C).

Every trigger is a pattern and a per-pixel weight: ``out = round((1 - weight) * image + weight * pattern)``.
A patch or stamp has weight 1 inside its square and 0 elsewhere (an exact paste); a blend has weight alpha
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bibaddiff.errors import BibaddiffError

TRIGGER_TYPES = ("patch", "blend", "stamp")
PATCH_PATTERNS = ("checker", "stripes", "white")
BLEND_PATTERNS = ("noise", "stripes")
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class Trigger:
    """A trigger bound to one image size and channel count."""

    name: str
    pattern: np.ndarray  # float64 (H, W, C), values in [0, 255]
    weight: np.ndarray  # float64 (H, W, 1), values in [0, 1]

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise BibaddiffError(f"trigger {self.name!r}: images must be a uint8 batch (N, H, W, C); got {images.dtype} {images.shape}")
        if images.shape[1:] != self.pattern.shape:
            raise BibaddiffError(
                f"trigger {self.name!r} was built for images of shape {self.pattern.shape}; got {images.shape[1:]}"
            )
        inside = self.weight[..., 0] > 0
        out = images.copy()
        rows, cols = np.nonzero(inside)
        weight = self.weight[rows, cols]
        blended = (1.0 - weight) * images[:, rows, cols, :] + weight * self.pattern[rows, cols]
        out[:, rows, cols, :] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    @property
    def region(self) -> np.ndarray:
        """Boolean (H, W) mask of the pixels the trigger changes."""
        return self.weight[..., 0] > 0


def build_trigger(name: str, spec: dict[str, Any], image_size: int, channels: int) -> Trigger:
    """Build a trigger from its config entry (``type`` plus that type's keys)."""
    kind = spec.get("type")
    if kind not in TRIGGER_TYPES:
        raise BibaddiffError(f"triggers.{name}.type must be one of {', '.join(TRIGGER_TYPES)}; got {kind!r}")
    if channels not in (1, 3):
        raise BibaddiffError(f"trigger {name!r}: channels must be 1 or 3; got {channels}")
    shape = (image_size, image_size)
    if kind == "patch":
        size = _patch_size(name, spec, image_size)
        pattern_name = spec.get("pattern", "checker")
        if pattern_name not in PATCH_PATTERNS:
            raise BibaddiffError(f"triggers.{name}.pattern must be one of {', '.join(PATCH_PATTERNS)}; got {pattern_name!r}")
        square = _square_pattern(pattern_name, size)
        return _pasted(name, square[..., None].repeat(channels, -1), spec, image_size)
    if kind == "stamp":
        size = _patch_size(name, spec, image_size)
        square = _load_pattern_image(name, spec.get("image"), size, channels)
        return _pasted(name, square, spec, image_size)
    alpha = float(spec.get("alpha", 0.2))
    if not 0.0 < alpha <= 1.0:
        raise BibaddiffError(f"triggers.{name}.alpha must lie in (0, 1]; got {alpha}")
    if spec.get("image"):
        pattern = _load_pattern_image(name, spec["image"], image_size, channels)
    else:
        pattern_name = spec.get("pattern", "noise")
        if pattern_name not in BLEND_PATTERNS:
            raise BibaddiffError(f"triggers.{name}.pattern must be one of {', '.join(BLEND_PATTERNS)}; got {pattern_name!r}")
        if pattern_name == "noise":
            rng = np.random.default_rng(int(spec.get("seed", 0)))
            pattern = rng.integers(0, 256, size=(*shape, channels)).astype(np.float64)
        else:
            pattern = _square_pattern("stripes", image_size)[..., None].repeat(channels, -1)
    weight = np.full((*shape, 1), alpha)
    return Trigger(name, pattern.astype(np.float64), weight)


def _patch_size(name: str, spec: dict[str, Any], image_size: int) -> int:
    # The paper's default side is a tenth of the image, but never below the 3 pixels a checker needs.
    size = int(spec["size"]) if spec.get("size") is not None else max(3, image_size // 10)
    margin = int(spec.get("margin", 0))
    if not 1 <= size <= image_size - margin:
        raise BibaddiffError(f"triggers.{name}.size must lie in [1, {image_size - margin}] for {image_size}-pixel images; got {size}")
    return size


def _square_pattern(pattern: str, size: int) -> np.ndarray:
    """A (size, size) pattern in {0, 255}."""
    rows, cols = np.indices((size, size))
    if pattern == "white":
        on = np.ones((size, size), bool)
    elif pattern == "checker":
        on = (rows + cols) % 2 == 0
    else:  # diagonal stripes, wide enough to survive resizing of larger squares
        width = max(1, size // 5)
        on = ((rows + cols) // width) % 2 == 0
    return np.where(on, 255.0, 0.0)


def _pasted(name: str, square: np.ndarray, spec: dict[str, Any], image_size: int) -> Trigger:
    corner = spec.get("corner", "bottom-right")
    if corner not in CORNERS:
        raise BibaddiffError(f"triggers.{name}.corner must be one of {', '.join(CORNERS)}; got {corner!r}")
    size = square.shape[0]
    margin = int(spec.get("margin", 0))
    top = margin if corner.startswith("top") else image_size - size - margin
    left = margin if corner.endswith("left") else image_size - size - margin
    pattern = np.zeros((image_size, image_size, square.shape[-1]))
    weight = np.zeros((image_size, image_size, 1))
    pattern[top:top + size, left:left + size] = square
    weight[top:top + size, left:left + size] = 1.0
    return Trigger(name, pattern, weight)


def _load_pattern_image(name: str, path: Any, size: int, channels: int) -> np.ndarray:
    if not path:
        raise BibaddiffError(f"triggers.{name}.image must name an image file")
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.float64)
    except FileNotFoundError:
        raise BibaddiffError(f"triggers.{name}.image: {path} not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise BibaddiffError(f"triggers.{name}.image: cannot read {path} ({error})") from None
    return pixels[..., None] if channels == 1 else pixels
