"""Diffusion models: the class-conditional DDPM and fine-tuned Stable Diffusion, resumable training and guided
DDIM sampling behind one interface (DiffusionModel).

Exports are imported on first use, so that light submodules (``pretrained``) do not load diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "DiffusionModel": "base", "ModelInfo": "base", "build_unet": "model", "load_diffusion_model": "model",
    "load_model": "model", "combine_guidance": "sampling", "sample_ddim": "sampling", "generate_images": "sampling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"bibaddiff.diffusion.{_EXPORTS[name]}"), name)
