"""Checks of ``diffusion.pretrained`` that read no weights and import no model library, so that config
validation (run on every snakemake call) stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bibaddiff.errors import BibaddiffError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def check_pretrained(pretrained: dict[str, Any] | None) -> tuple[Path, Path | None]:
    """The (path, config folder) of ``diffusion.pretrained``, checked without loading any weights."""
    pretrained = pretrained or {}
    raw_path, raw_config = pretrained.get("path"), pretrained.get("config")
    if not raw_path:
        raise BibaddiffError("diffusion.pretrained.path must name a local Stable Diffusion folder (diffusers format) "
                             "or a single .safetensors/.ckpt file")
    path = Path(raw_path).expanduser()
    config = Path(raw_config).expanduser() if raw_config else None
    if path.is_dir():
        missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / name).is_dir()]
        if missing:
            raise BibaddiffError(f"diffusion.pretrained.path: {path} is not a diffusers Stable Diffusion folder "
                                 f"(missing {', '.join(missing)})")
        return path, config
    if not path.exists():
        raise BibaddiffError(f"diffusion.pretrained.path: {path} does not exist; set it to your local Stable "
                             "Diffusion folder or checkpoint file")
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise BibaddiffError(f"diffusion.pretrained.path: {path} must be a folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file")
    if config is None or not config.is_dir():
        raise BibaddiffError(f"diffusion.pretrained.config: a single-file checkpoint ({path.name}) needs a local "
                             f"diffusers-format folder with the model's configs and tokenizer; got {raw_config!r}")
    if not (config / "tokenizer").is_dir() or not (config / "unet").is_dir():
        raise BibaddiffError(f"diffusion.pretrained.config: {config} has no unet/ and tokenizer/ folders "
                             "(it must be a diffusers-format folder, weights optional)")
    return path, config
