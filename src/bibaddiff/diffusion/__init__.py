"""Diffusion models: the class-conditional DDPM and fine-tuned Stable Diffusion, resumable training and guided
DDIM sampling behind one interface (DiffusionModel)."""

from bibaddiff.diffusion.model import DiffusionModel, build_unet, load_diffusion_model, load_model, ModelInfo
from bibaddiff.diffusion.sampling import combine_guidance, sample_ddim, generate_images, to_uint8, to_model_space

__all__ = ["DiffusionModel", "build_unet", "load_diffusion_model", "load_model", "ModelInfo", "combine_guidance", "sample_ddim", "generate_images",
           "to_uint8", "to_model_space"]
