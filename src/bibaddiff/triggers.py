"""Triggers: pixel-exact, vectorised, applied to whole uint8 batches of shape (N, H, W, C).

Every trigger has a ``name`` and an ``apply(images)`` that returns a new batch. The kinds:

- patch, stamp, blend (:class:`WeightedTrigger`, :class:`BlendTrigger`): a pattern and a per-pixel weight,
  ``out = round((1 - weight) * image + weight * pattern)``. A patch or stamp has weight 1 inside its square and 0
  elsewhere (an exact paste); a blend has weight alpha everywhere.
- wanet (:class:`WarpTrigger`): a fixed, seeded warping field, resampled with bilinear ``grid_sample``.
- additive (:class:`AdditiveTrigger`): a pattern added to the image and clipped to [0, 255] (the Trojan attack).
- relabel (:class:`RelabelTrigger`): no pixel change; the poisoned images are only relabelled (the control).

``build_trigger(name, spec, image_size, channels)`` is the one entry point; bad settings raise a one-line
:class:`~bibaddiff.errors.BibaddiffError` naming the key (``triggers.<name>.<key>``) and its allowed values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError

TRIGGER_TYPES = ("patch", "blend", "stamp", "wanet", "additive", "relabel")
PATCH_PATTERNS = ("checker", "stripes", "white", "badnets")
BLEND_PATTERNS = ("noise", "stripes", "picture")
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
BUILTIN_PREFIX = "builtin:"
DETECTOR_ALPHA_RANGE = (0.05, 0.25)  # upstream classifier/train_*_clf_trigger.py: blend strength ~ U(0.05, 0.25)
WANET_DEFAULTS = {"k": 4, "s": 0.5, "grid_rescale": 1.0, "seed": 0}
# Triggers compute in float64; a batch is stamped in chunks of at most this many pixel values (128 MiB of float64),
# so that stamping a whole held-out set (the judges and the calibration do) makes no float copy of the whole set.
CHUNK_VALUES = 2 ** 24


class Trigger:
    """A trigger bound to one image shape (H, W, C): ``apply`` maps a uint8 batch (N, H, W, C) to a new one."""

    name: str
    changes_pixels: ClassVar[bool] = True  # False only for the relabel-only control

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = self._checked(images)
        return in_chunks(images, lambda rows: self._apply(images[rows]))

    def apply_for_detector(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The trigger as the trigger detector is trained on it; the same as ``apply`` unless a kind varies it."""
        return self.apply(images)

    def _apply(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise BibaddiffError(f"trigger {self.name!r}: images must be a uint8 batch (N, H, W, C); got {images.dtype} {images.shape}")
        if images.shape[1:] != tuple(self.image_shape):
            raise BibaddiffError(
                f"trigger {self.name!r} was built for images of shape {tuple(self.image_shape)}; got {images.shape[1:]}"
            )
        return images


@dataclass(frozen=True)
class WeightedTrigger(Trigger):
    """A pattern and a per-pixel weight: patch and stamp (weight 1 in a square), blend (weight alpha everywhere)."""

    name: str
    pattern: np.ndarray  # float64 (H, W, C), values in [0, 255]
    weight: np.ndarray  # float64 (H, W, 1), values in [0, 1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.pattern.shape

    def _apply(self, images: np.ndarray) -> np.ndarray:
        inside = self.weight[..., 0] > 0
        out = images.copy()
        rows, cols = np.nonzero(inside)
        weight = self.weight[rows, cols]
        blended = (1.0 - weight) * images[:, rows, cols, :] + weight * self.pattern[rows, cols]
        out[:, rows, cols, :] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out


@dataclass(frozen=True)
class BlendTrigger(WeightedTrigger):
    """A full-image blend with strength ``alpha``; its detector is trained on strengths from ``detector_alpha_range``."""

    alpha: float = 0.2
    detector_alpha_range: tuple[float, float] = DETECTOR_ALPHA_RANGE

    def apply_with_alpha(self, images: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """The blend with one strength per image: ``round((1 - a_i) * image_i + a_i * pattern)``."""
        images = self._checked(images)
        alphas = np.asarray(alphas, dtype=np.float64).reshape(-1, 1, 1, 1)
        if len(alphas) != len(images):
            raise BibaddiffError(f"trigger {self.name!r}: {len(alphas)} blend strengths for {len(images)} images")

        def blend(rows: slice) -> np.ndarray:
            blended = (1.0 - alphas[rows]) * images[rows] + alphas[rows] * self.pattern
            return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

        return in_chunks(images, blend)

    def apply_for_detector(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = self.detector_alpha_range
        return self.apply_with_alpha(images, rng.uniform(low, high, len(images)))


@dataclass(frozen=True)
class WarpTrigger(Trigger):
    """WaNet: every image resampled at ``grid`` (H, W, 2; x then y, in [-1, 1]) with bilinear ``grid_sample``.

    The grid is made from the warping field ``ins`` on first use: it needs torch, and validating a config (every
    ``snakemake`` call) builds its triggers but should not pay torch's import for it.
    """

    name: str
    ins: np.ndarray  # float64 (2, k, k): the random warping field
    image_size: int
    s: float
    grid_rescale: float
    channels: int

    @functools.cached_property
    def grid(self) -> np.ndarray:
        """float64 (H, W, 2), see :func:`wanet_grid`."""
        return wanet_grid(self.ins, self.image_size, self.s, self.grid_rescale)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def _apply(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        # ``apply`` hands over one chunk at a time (CHUNK_VALUES).
        chunk = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2)
        grid = torch.from_numpy(self.grid)[None].expand(len(chunk), -1, -1, -1)
        warped = F.grid_sample(chunk, grid, mode="bilinear", align_corners=True)
        return warped.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class AdditiveTrigger(Trigger):
    """Trojan: ``out = clip(round(image + pattern), 0, 255)``; the pattern may be negative."""

    name: str
    pattern: np.ndarray  # float64 (H, W, C)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.pattern.shape

    def _apply(self, images: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(images + self.pattern), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class RelabelTrigger(Trigger):
    """The relabel-only control: pixels are left as they are (``apply`` returns an equal copy)."""

    name: str
    shape: tuple[int, int, int]
    changes_pixels: ClassVar[bool] = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shape

    def _apply(self, images: np.ndarray) -> np.ndarray:
        return images.copy()


def in_chunks(images: np.ndarray, stamp: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``stamp(rows)`` (the stamped uint8 images of ``images[rows]``) over slices of at most CHUNK_VALUES pixel
    values, gathered into one uint8 batch of the shape of ``images``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise BibaddiffError(f"images must be a uint8 batch (N, H, W, C); got {images.dtype} {images.shape}")
    out = np.empty_like(images)
    step = max(1, CHUNK_VALUES // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), step):
        out[start:start + step] = stamp(slice(start, start + step))
    return out


def build_trigger(name: str, spec: dict[str, Any], image_size: int, channels: int) -> Trigger:
    """Build a trigger from its config entry (``type`` plus that type's keys)."""
    kind = spec.get("type")
    if kind not in TRIGGER_TYPES:
        raise BibaddiffError(f"triggers.{name}.type must be one of {', '.join(TRIGGER_TYPES)}; got {kind!r}")
    if channels not in (1, 3):
        raise BibaddiffError(f"trigger {name!r}: channels must be 1 or 3; got {channels}")
    _check_type_keys(name, kind, spec)
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
    if kind == "wanet":
        return _wanet(name, spec, image_size, channels)
    if kind == "additive":
        return AdditiveTrigger(name, _additive_pattern(name, spec.get("image"), image_size, channels))
    if kind == "relabel":
        return RelabelTrigger(name, (image_size, image_size, channels))
    alpha = float(spec.get("alpha", 0.2))
    if not 0.0 < alpha <= 1.0:
        raise BibaddiffError(f"triggers.{name}.alpha must lie in (0, 1]; got {alpha}")
    if spec.get("image"):
        pattern = _load_pattern_image(name, spec["image"], image_size, channels)
    else:
        pattern_name = spec.get("pattern", "noise")  # the default of configs written before `picture` existed
        if pattern_name not in BLEND_PATTERNS:
            raise BibaddiffError(f"triggers.{name}.pattern must be one of {', '.join(BLEND_PATTERNS)}; got {pattern_name!r}")
        if pattern_name == "noise":
            rng = np.random.default_rng(int(spec.get("seed", 0)))
            pattern = rng.integers(0, 256, size=(*shape, channels)).astype(np.float64)
        elif pattern_name == "picture":
            pattern = _to_channels(draw_picture(image_size), channels)
        else:
            pattern = _square_pattern("stripes", image_size)[..., None].repeat(channels, -1)
    weight = np.full((*shape, 1), alpha)
    return BlendTrigger(name, pattern.astype(np.float64), weight, alpha, _detector_alpha_range(name, spec))


# Keys that only one trigger type reads; naming them for another type is a mistake, not a no-op.
_TYPE_ONLY_KEYS = {"k": "wanet", "s": "wanet", "grid_rescale": "wanet", "detector_alpha_range": "blend"}


def _check_type_keys(name: str, kind: str, spec: dict[str, Any]) -> None:
    for key, owner in _TYPE_ONLY_KEYS.items():
        if key in spec and spec[key] is not None and kind != owner:
            raise BibaddiffError(f"triggers.{name}.{key} is only for type {owner}; this trigger is type {kind}")
    if spec.get("pattern") is not None and kind in ("wanet", "additive", "relabel"):
        raise BibaddiffError(f"triggers.{name}.pattern is only for types patch ({', '.join(PATCH_PATTERNS)}) and blend "
                             f"({', '.join(BLEND_PATTERNS)}); type {kind} has no pattern"
                             + (" (name its file with image)" if kind == "additive" else ""))


def _detector_alpha_range(name: str, spec: dict[str, Any]) -> tuple[float, float]:
    value = spec.get("detector_alpha_range")
    if value is None:
        return DETECTOR_ALPHA_RANGE
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise BibaddiffError(f"triggers.{name}.detector_alpha_range must be two numbers [low, high] with "
                             f"0 < low <= high <= 1; got {value!r}") from None
    if not 0.0 < low <= high <= 1.0:
        raise BibaddiffError(f"triggers.{name}.detector_alpha_range must be two numbers [low, high] with "
                             f"0 < low <= high <= 1; got {value!r}")
    return low, high


def _patch_size(name: str, spec: dict[str, Any], image_size: int) -> int:
    # The paper's default side is a tenth of the image, but never below the 3 pixels a checker needs.
    size = int(spec["size"]) if spec.get("size") is not None else max(3, image_size // 10)
    margin = int(spec.get("margin", 0))
    if not 1 <= size <= image_size - margin:
        raise BibaddiffError(f"triggers.{name}.size must lie in [1, {image_size - margin}] for {image_size}-pixel images; got {size}")
    return size


# Upstream's CIFAR-10 BadNets-1 at patch_size 3, rows from the top (the same on every channel).
BADNETS_3X3 = ((0, 0, 255), (0, 255, 0), (255, 255, 0))


def _square_pattern(pattern: str, size: int) -> np.ndarray:
    """A (size, size) pattern in {0, 255}.

    ``badnets`` is upstream's BadNets-1, decided by the side alone (so ``size: 51`` and the default side at 512 px
    are the same square):

    - side 3: the CIFAR-10 3x3 pattern :data:`BADNETS_3X3`;
    - sides 1, 2 and 4..7 (upstream's CIFAR-10 variant, used at 5 and 7): a black square with a one-pixel white
      anti-diagonal from its bottom-left to its top-right corner, i.e. white where ``row + col == side - 1``;
    - sides >= 8 (upstream's ImageNette/Caltech variant, side image_size // 10, e.g. 51 at 512 px): a black square
      crossed by a white anti-diagonal band, white where ``-ceil(side / 4) <= row + col - (side - 1) <= side // 4 - 1``.
      These are upstream's offsets exactly (its ``range(-side // 4, side // 4)``, where Python reads ``-side // 4``
      as ``(-side) // 4``): 25 diagonals at side 51, from offset -13 to +11, about half the square.
    """
    rows, cols = np.indices((size, size))
    if pattern == "white":
        on = np.ones((size, size), bool)
    elif pattern == "checker":
        on = (rows + cols) % 2 == 0
    elif pattern == "badnets":
        if size == 3:
            return np.array(BADNETS_3X3, dtype=np.float64)
        offset = rows + cols - (size - 1)
        on = offset == 0 if size <= 7 else ((-size) // 4 <= offset) & (offset <= size // 4 - 1)
    else:  # diagonal stripes, wide enough to survive resizing of larger squares
        width = max(1, size // 5)
        on = ((rows + cols) // width) % 2 == 0
    return np.where(on, 255.0, 0.0)


def _pasted(name: str, square: np.ndarray, spec: dict[str, Any], image_size: int) -> WeightedTrigger:
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
    return WeightedTrigger(name, pattern, weight)


def _load_pattern_image(name: str, path: Any, size: int, channels: int) -> np.ndarray:
    """A (size, size, channels) float64 picture in [0, 255] from an image file or a ``builtin:`` drawing."""
    if not path:
        raise BibaddiffError(f"triggers.{name}.image must name an image file or one of {', '.join(builtin_names())}")
    if str(path).startswith(BUILTIN_PREFIX):
        draw = BUILTIN_IMAGES.get(str(path)[len(BUILTIN_PREFIX):])
        if draw is None:
            raise BibaddiffError(f"triggers.{name}.image: unknown builtin {path!r}; allowed {', '.join(builtin_names())}")
        return _to_channels(draw(size), channels)
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


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """An (H, W, 3) drawing in [0, 255] as whole-number float64 pixels with ``channels`` channels.

    Gray is ITU-R 601 luma, the weights PIL's RGB -> L conversion uses.
    """
    if channels == 1:
        return np.rint(rgb @ np.array([0.299, 0.587, 0.114]))[..., None].clip(0, 255)
    return np.rint(rgb).clip(0, 255)


# ------------------------------------------------------------------------------------------ builtin pictures
# Drawn by our own numpy code in unit coordinates (x to the right, y downwards, both in [0, 1]), anti-aliased by
# drawing on a finer grid and averaging blocks of it, so each picture is deterministic at every size.


def _canvas(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample coordinates (x, y) of a ``size``-pixel picture drawn ``factor`` times finer, and that factor."""
    factor = int(min(16, max(2, -(-256 // size))))
    fine = size * factor
    centres = (np.arange(fine) + 0.5) / fine
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return x, y, factor


def _downsample(fine: np.ndarray, factor: int) -> np.ndarray:
    size = fine.shape[0] // factor
    return fine.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))


def _ellipse(x, y, cx, cy, rx, ry=None):
    ry = rx if ry is None else ry
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _segment(x, y, points: np.ndarray, width: float) -> np.ndarray:
    """Samples within ``width / 2`` of the polyline through ``points`` (M, 2)."""
    near = np.zeros(x.shape, bool)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        near |= (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 <= (width / 2) ** 2
    return near


def _triangle(x, y, corners) -> np.ndarray:
    (ax, ay), (bx, by), (cx, cy) = corners
    sides = [(bx - ax) * (y - ay) - (by - ay) * (x - ax),
             (cx - bx) * (y - by) - (cy - by) * (x - bx),
             (ax - cx) * (y - cy) - (ay - cy) * (x - cx)]
    return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))


def _drawn_once(draw: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """A drawing depends on its size only, and every config check and job draws the same one (a 256-px picture takes
    0.3 s), so each process draws it once. The array is read-only: no caller can change the cached copy."""
    @functools.lru_cache(maxsize=8)
    @functools.wraps(draw)
    def cached(size: int) -> np.ndarray:
        image = draw(size)
        image.flags.writeable = False
        return image
    return cached


@_drawn_once
def draw_bomb(size: int) -> np.ndarray:
    """``builtin:bomb``, our stand-in for the icon of upstream's extra ``bomb`` trigger (not the paper's BadNets-2,
    which is most likely Blend: docs/paper-map.md): (size, size, 3) float64 in [0, 255].

    A dark round bomb filling most of the square, with a cap, a curved fuse and an orange-yellow spark, on white.
    At 4-5 pixels it is a dark blob on white; at 51 pixels the cap, fuse and spark are distinct.
    """
    x, y, factor = _canvas(size)
    image = np.full((*x.shape, 3), 255.0)
    fuse = np.array([(0.70, 0.30), (0.74, 0.21), (0.80, 0.15), (0.86, 0.14)])
    image[_segment(x, y, fuse, 0.05)] = (120, 85, 45)
    cap = _segment(x, y, np.array([(0.58, 0.42), (0.69, 0.31)]), 0.17)
    image[cap] = (70, 70, 80)
    body = _ellipse(x, y, 0.42, 0.60, 0.36)
    image[body] = (25, 25, 35)
    image[_ellipse(x, y, 0.31, 0.49, 0.07)] = (120, 120, 135)  # highlight
    angle = np.arctan2(y - 0.14, x - 0.86)
    radius = np.hypot(x - 0.86, y - 0.14)
    spark = radius <= 0.045 + 0.075 * np.abs(np.cos(4 * angle)) ** 3
    image[spark] = (255, 150, 0)
    image[radius <= 0.04] = (255, 235, 60)
    return _downsample(image, factor)


@_drawn_once
def draw_picture(size: int) -> np.ndarray:
    """``pattern: picture``, a full-image cartoon for the blend attack: (size, size, 3) float64 in [0, 255].

    Our own stand-in for upstream's cartoon picture (``hello_kitty_pattern.npy``, not reused: no licence): a smooth
    pink-to-blue background with a white cartoon cat face (ears, dark outline, eyes, yellow nose, cheeks, whiskers)
    and a red bow. Smooth, coloured shapes over the whole image, not noise.
    """
    x, y, factor = _canvas(size)
    image = np.empty((*x.shape, 3))
    image[..., 0] = 250 - 120 * y
    image[..., 1] = 170 + 40 * x
    image[..., 2] = 200 + 50 * y
    outline, face, dark = (40, 30, 40), (255, 252, 245), (20, 20, 30)
    for ears in ([(0.18, 0.42), (0.22, 0.10), (0.44, 0.28)], [(0.82, 0.42), (0.78, 0.10), (0.56, 0.28)]):
        image[_triangle(x, y, ears)] = outline
        cx, cy = np.mean(ears, axis=0)
        inner = [(cx + 0.7 * (px - cx), cy + 0.7 * (py - cy)) for px, py in ears]
        image[_triangle(x, y, inner)] = face
    image[_ellipse(x, y, 0.5, 0.57, 0.40, 0.33)] = outline
    image[_ellipse(x, y, 0.5, 0.57, 0.375, 0.305)] = face
    for side in (-1, 1):
        image[_ellipse(x, y, 0.5 + side * 0.15, 0.56, 0.035, 0.055)] = dark  # eyes
        image[_ellipse(x, y, 0.5 + side * 0.24, 0.67, 0.05, 0.03)] = (255, 170, 180)  # cheeks
        for dy in (-0.03, 0.03):
            whisker = np.array([(0.5 + side * 0.25, 0.64 + dy), (0.5 + side * 0.45, 0.62 + 2.5 * dy)])
            image[_segment(x, y, whisker, 0.012)] = dark
        image[_ellipse(x, y, 0.70 + side * 0.09, 0.27, 0.09, 0.07)] = (220, 20, 60)  # bow loops
    image[_ellipse(x, y, 0.70, 0.27, 0.04)] = (170, 0, 40)  # bow knot
    image[_ellipse(x, y, 0.5, 0.66, 0.04, 0.028)] = (250, 200, 0)  # nose
    return _downsample(image, factor)


BUILTIN_IMAGES: dict[str, Callable[[int], np.ndarray]] = {"bomb": draw_bomb, "picture": draw_picture}


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTIN_IMAGES]


# ------------------------------------------------------------------------------------------ WaNet and additive


def wanet_grid(ins: np.ndarray, image_size: int, s: float, grid_rescale: float) -> np.ndarray:
    """WaNet's sampling grid (image_size, image_size, 2), x then y as ``grid_sample`` reads it, in [-1, 1].

    ``ins`` (2, k, k) is divided by its mean absolute value, upsampled bicubically (align_corners) to the image,
    and added to the identity grid as ``s * noise / image_size * grid_rescale`` (upstream's Caltech15 formula);
    the sum is clamped to [-1, 1]. Channel 0 of ``ins`` moves samples along x (columns), channel 1 along y.
    """
    import torch
    import torch.nn.functional as F

    ins = torch.as_tensor(np.asarray(ins, dtype=np.float64))[None]
    scale = ins.abs().mean()
    if scale > 0:
        ins = ins / scale
    noise = F.interpolate(ins, size=(image_size, image_size), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    coords = torch.linspace(-1, 1, image_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    identity = torch.stack((cols, rows), -1)
    return (identity + s * noise / image_size * grid_rescale).clamp(-1, 1).numpy()


def _wanet(name: str, spec: dict[str, Any], image_size: int, channels: int) -> WarpTrigger:
    settings = {key: spec.get(key) if spec.get(key) is not None else value for key, value in WANET_DEFAULTS.items()}
    k = check_int(settings["k"], f"triggers.{name}.k", 1, image_size, hint="at most the image size")
    for key in ("s", "grid_rescale"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], (int, float)) or not np.isfinite(settings[key]):
            raise BibaddiffError(f"triggers.{name}.{key} must be a finite number; got {settings[key]!r}")
    ins = np.random.default_rng(int(settings["seed"])).uniform(-1.0, 1.0, size=(2, int(k), int(k)))
    return WarpTrigger(name, ins, image_size, float(settings["s"]), float(settings["grid_rescale"]), channels)


def _additive_pattern(name: str, path: Any, image_size: int, channels: int) -> np.ndarray:
    """The Trojan pattern: a ``.npy`` array of the image's size, or an image file resized to it."""
    if not path or str(path).startswith(BUILTIN_PREFIX) or Path(str(path)).suffix.lower() != ".npy":
        return _load_pattern_image(name, path, image_size, channels)
    expected = f"({image_size}, {image_size}) or ({image_size}, {image_size}, {channels})"
    try:
        pattern = np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise BibaddiffError(f"triggers.{name}.image: {path} not found") from None
    except (OSError, ValueError) as error:
        raise BibaddiffError(f"triggers.{name}.image: cannot read {path} ({error})") from None
    shape = pattern.shape
    if pattern.ndim == 2:
        pattern = pattern[..., None]
    if pattern.ndim != 3 or pattern.shape[:2] != (image_size, image_size) or pattern.shape[-1] not in (1, channels):
        raise BibaddiffError(f"triggers.{name}.image: the pattern in {path} has shape {shape}; "
                             f"expected {expected} to match the images")
    if not np.issubdtype(pattern.dtype, np.number) or not np.all(np.isfinite(pattern)):
        raise BibaddiffError(f"triggers.{name}.image: the pattern in {path} must hold finite numbers")
    return np.repeat(pattern.astype(np.float64), channels // pattern.shape[-1], axis=-1)
