"""Class-conditional DDPM: model construction, resumable training and guided DDIM sampling."""

from bibaddiff.diffusion.model import build_unet, load_model, ModelInfo
from bibaddiff.diffusion.sampling import combine_guidance, sample_ddim, generate_images, to_uint8, to_model_space

__all__ = ["build_unet", "load_model", "ModelInfo", "combine_guidance", "sample_ddim", "generate_images",
           "to_uint8", "to_model_space"]
