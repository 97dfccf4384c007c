"""What every diffusion model kind shares: the model file's name, the class metadata (ModelInfo) and the interface
generation, the generated training sets and the diffusion classifier use (DiffusionModel).

Both model kinds (``model``: the pixel DDPM; ``stable``: fine-tuned Stable Diffusion) import this module; ``stable``
never imports ``model`` (only ``model.load_diffusion_model`` reaches into ``stable``, to load either kind). Importing
this module loads neither torch nor diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bibaddiff.diffusion.timesteps import (DEFAULT_PRECISION, DEFAULT_TIMESTEPS, check_precision_name,
                                           check_timestep_spacing)
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import to_model_space, to_uint8

MODEL_INFO_FILE = "bibaddiff_model.json"


def check_safetensors_weights(folder: str | Path) -> None:
    """Fail with one line naming ``folder`` unless it holds weights as complete ``.safetensors`` files only.

    A model folder whose weights are missing, cut short by a dying node, or pickled (``.bin``, ``.ckpt``: loading
    those runs code) must stop the job that loads it rather than be loaded half, or loaded at all.
    """
    from safetensors import safe_open

    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        found = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        raise BibaddiffError(f"{folder}: no .safetensors weights (found: {', '.join(found) or 'nothing'}); rerun the "
                             "rule that wrote this model, or delete the folder so that the workflow retrains it")
    for path in weights:
        try:
            with safe_open(str(path), framework="np") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError on a truncated or foreign file
            raise BibaddiffError(f"{path}: not a complete safetensors file ({str(error).splitlines()[0]}); delete "
                                 "the model folder so that the workflow retrains it") from None


@dataclass
class ModelInfo:
    """What a saved model needs besides its weights: the classes and which index is the null class."""

    num_classes: int
    class_names: list[str]
    image_size: int
    channels: int

    @property
    def null_class(self) -> int:
        return self.num_classes


class DiffusionModel:
    """A trained model of either kind (pixel DDPM or latent text-to-image) behind what generation, the
    generated training sets and the diffusion classifier need.

    ``denoiser(x_t, t, class_labels=...)`` predicts the scheduler's target in diffusion space; class index
    ``num_classes`` is the null condition. ``encode`` maps uint8 images into diffusion space (pixels in [-1, 1],
    or VAE latents) and ``decode`` maps samples back to uint8 images. ``prompt_rows(condition, num_images, seed)``,
    when given, picks each generated image's conditioning row (a text-to-image model trained on per-image captions
    is prompted with its class's captions rather than one class prompt).

    ``timesteps`` and ``precision`` are the sampler's ``generation.timesteps`` and ``generation.precision``
    (:mod:`bibaddiff.diffusion.timesteps`), used by every :meth:`generate` that does not name its own; a workflow
    script sets them with :meth:`use_sampler` once it has loaded the model, so that library code that generates
    (the defences' generated sets, the quality stage) samples as the config says.
    """

    def __init__(self, denoiser: Any, scheduler: Any, info: ModelInfo, sample_shape: tuple[int, int, int],
                 encode: Any = None, decode: Any = None, kind: str = "ddpm", prompt_rows: Any = None):
        self.denoiser, self.scheduler, self.info, self.kind = denoiser, scheduler, info, kind
        self.sample_shape = tuple(int(v) for v in sample_shape)
        self.encode = encode or to_model_space
        self.decode = decode or to_uint8
        self.prompt_rows = prompt_rows
        self.timesteps, self.precision = DEFAULT_TIMESTEPS, DEFAULT_PRECISION

    def use_sampler(self, timesteps: str = DEFAULT_TIMESTEPS, precision: str = DEFAULT_PRECISION) -> "DiffusionModel":
        """Sample with these ``generation.timesteps`` and ``generation.precision`` from now on."""
        self.timesteps, self.precision = check_timestep_spacing(timesteps), check_precision_name(precision)
        return self

    def generate(self, condition: int, guidance_scale: float, num_images: int, num_inference_steps: int, seed: int,
                 batch_size: int, *, x0_clipping: str, timesteps: str | None = None,
                 precision: str | None = None) -> np.ndarray:
        from bibaddiff.diffusion.sampling import generate_images

        if self.kind == "stable_diffusion" and x0_clipping != "none":
            # Latents are not bounded by [-1, 1]; clipping them would destroy the images.
            raise BibaddiffError(f"generation.x0_clipping: a stable_diffusion model samples latents, which only "
                                 f"'none' leaves intact; got {x0_clipping!r}")
        rows = None if self.prompt_rows is None else self.prompt_rows(condition, num_images, seed)
        return generate_images(self.denoiser, self.scheduler, self.info.null_class, condition, guidance_scale,
                               num_images, num_inference_steps, seed, batch_size, self.sample_shape, self.decode,
                               x0_clipping=x0_clipping, rows=rows, timesteps=timesteps or self.timesteps,
                               precision=precision or self.precision)
