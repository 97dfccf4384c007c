"""Checks of ``diffusion.pretrained`` that read no weights and import no model library, so that config
validation (run on every snakemake call) stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bibaddiff.errors import BibaddiffError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# ``diffusion.pretrained: {build: tiny}``: the tiny base model that the DAG builds for CPU experiments.
TINY_BUILD_DEFAULTS = {"unet_channels": [32, 64], "vae_steps": 3000, "seed": 0}
TINY_BUILD_KEYS = ("build", "image_size", *TINY_BUILD_DEFAULTS)
HOW_TO_GET_A_MODEL = ("set it to a local Stable Diffusion folder (diffusers format) or a single .safetensors/.ckpt "
                      "file, or for a CPU experiment replace path by 'build: tiny' to have the workflow build a tiny "
                      "base model")


def check_tiny_build(pretrained: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The settings of ``diffusion.pretrained: {build: tiny, ...}`` with defaults filled in, checked."""
    if pretrained.get("build") != "tiny":
        raise BibaddiffError(f"config key diffusion.pretrained.build: {pretrained.get('build')!r} is not a known "
                             "builder; allowed: tiny")
    given = [key for key in ("path", "config") if pretrained.get(key)]
    if given:
        raise BibaddiffError(f"config key diffusion.pretrained.{given[0]}: give either build: tiny or a path, not both")
    settings = {"build": "tiny", "image_size": pretrained.get("image_size", image_size),
                **{key: pretrained.get(key, default) for key, default in TINY_BUILD_DEFAULTS.items()}}
    if settings["image_size"] != image_size:
        raise BibaddiffError(f"config key diffusion.pretrained.image_size: {settings['image_size']} differs from "
                             f"dataset.image_size {image_size}; the base model is built for the dataset's images")
    if image_size < 8 or image_size % 4:
        raise BibaddiffError(f"config key dataset.image_size: {image_size} must be divisible by 4 and at least 8 for "
                             "diffusion.pretrained.build: tiny (its VAE and UNet each halve the size)")
    channels = settings["unet_channels"]
    if len(channels) != 2 or any(not isinstance(c, int) or c < 8 or c % 8 for c in channels):
        raise BibaddiffError(f"config key diffusion.pretrained.unet_channels: {channels} must be two multiples of 8")
    return settings


def check_pretrained(pretrained: dict[str, Any] | None) -> tuple[Path, Path | None]:
    """The (path, config folder) of ``diffusion.pretrained``, checked without loading any weights."""
    pretrained = pretrained or {}
    raw_path, raw_config = pretrained.get("path"), pretrained.get("config")
    if not raw_path:
        raise BibaddiffError(f"diffusion.pretrained.path: missing; {HOW_TO_GET_A_MODEL}")
    path = Path(raw_path).expanduser()
    config = Path(raw_config).expanduser() if raw_config else None
    if path.is_dir():
        missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / name).is_dir()]
        if missing:
            raise BibaddiffError(f"diffusion.pretrained.path: {path} is not a diffusers Stable Diffusion folder "
                                 f"(missing {', '.join(missing)})")
        return path, config
    if not path.exists():
        raise BibaddiffError(f"diffusion.pretrained.path: {path} does not exist; {HOW_TO_GET_A_MODEL}")
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise BibaddiffError(f"diffusion.pretrained.path: {path} must be a folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file")
    if config is None or not config.is_dir():
        raise BibaddiffError(f"diffusion.pretrained.config: a single-file checkpoint ({path.name}) needs a local "
                             f"diffusers-format folder with the model's configs and tokenizer; got {raw_config!r}")
    if not (config / "tokenizer").is_dir() or not (config / "unet").is_dir():
        raise BibaddiffError(f"diffusion.pretrained.config: {config} has no unet/ and tokenizer/ folders "
                             "(it must be a diffusers-format folder, weights optional)")
    return path, config
