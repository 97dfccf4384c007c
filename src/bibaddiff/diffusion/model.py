"""The class-conditional UNet: diffusers' UNet2DModel with a class embedding that has one extra null class."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from bibaddiff.diffusion.base import MODEL_INFO_FILE, DiffusionModel, ModelInfo, check_safetensors_weights
from bibaddiff.diffusion.imported import IMPORTED_KEY, unet_folder, verify_import
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import read_json, write_json

def build_unet(image_size: int, channels: int, num_classes: int, block_out_channels: list[int] = (16, 32, 64),
               layers_per_block: int = 1, attention: bool = False, norm_num_groups: int = 8,
               dropout: float = 0.0, attention_head_dim: int = 8) -> UNet2DModel:
    """A UNet2DModel conditioned on ``num_classes`` classes plus the null class used for guidance."""
    block_out_channels = tuple(int(c) for c in block_out_channels)
    if not block_out_channels or any(c % norm_num_groups for c in block_out_channels):
        raise BibaddiffError(
            f"diffusion.model.block_out_channels {list(block_out_channels)} must be non-empty multiples of "
            f"norm_num_groups={norm_num_groups}"
        )
    downsamplings = len(block_out_channels) - 1
    if image_size % (2 ** downsamplings):
        raise BibaddiffError(
            f"dataset.image_size {image_size} must be divisible by 2**{downsamplings} for {len(block_out_channels)} UNet blocks"
        )
    depth = len(block_out_channels)
    # Attention, when asked for, only at the coarsest resolution: that is where it is cheap and useful.
    down = ["DownBlock2D"] * depth
    up = ["UpBlock2D"] * depth
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=int(layers_per_block),
        block_out_channels=block_out_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        add_attention=bool(attention),
        attention_head_dim=int(attention_head_dim),
        norm_num_groups=int(norm_num_groups),
        num_class_embeds=num_classes + 1,
        dropout=float(dropout),
    )


def build_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2") -> DDPMScheduler:
    allowed = ("linear", "scaled_linear", "squaredcos_cap_v2")
    if beta_schedule not in allowed:
        raise BibaddiffError(f"diffusion.training.beta_schedule must be one of {', '.join(allowed)}; got {beta_schedule!r}")
    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule)


def save_model(directory: str | Path, unet: UNet2DModel, scheduler: DDPMScheduler, info: ModelInfo,
               extra: dict[str, Any] | None = None) -> None:
    directory = Path(directory)
    unet.save_pretrained(directory / "unet")
    scheduler.save_pretrained(directory / "scheduler")
    write_json(directory / MODEL_INFO_FILE, {**asdict(info), **(extra or {})})


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[UNet2DModel, DDPMScheduler, ModelInfo]:
    directory = Path(directory)
    info_path = directory / MODEL_INFO_FILE
    if not info_path.is_file():
        raise BibaddiffError(f"{directory}: not a bibaddiff model folder ({MODEL_INFO_FILE} missing)")
    raw = read_json(info_path)
    info = ModelInfo(**{key: raw[key] for key in ("num_classes", "class_names", "image_size", "channels")})
    check_safetensors_weights(directory / "unet")
    unet = UNet2DModel.from_pretrained(directory / "unet").to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
    return unet, scheduler, info


def load_diffusion_model(directory: str | Path, device: torch.device | str = "cpu") -> DiffusionModel:
    """Load a model folder written by either training path, or an import's folder (``kind`` in its model file says
    which kind; ``imported``, that the weights are the imported files, checked against their digests first)."""
    directory = Path(directory)
    info_path = directory / MODEL_INFO_FILE
    if not info_path.is_file():
        raise BibaddiffError(f"{directory}: not a bibaddiff model folder ({MODEL_INFO_FILE} missing)")
    raw = read_json(info_path)
    kind = raw.get("kind", "ddpm")
    if IMPORTED_KEY in raw:
        verify_import(directory)
    if kind == "stable_diffusion":
        from bibaddiff.diffusion.stable import load_imported_text_to_image_model, load_text_to_image_model

        if IMPORTED_KEY in raw:
            return load_imported_text_to_image_model(raw, device)
        return load_text_to_image_model(directory, device)
    if kind != "ddpm":
        raise BibaddiffError(f"{info_path}: unknown model kind {kind!r}")
    if IMPORTED_KEY in raw:
        return _load_imported_ddpm(raw, device)
    unet, scheduler, info = load_model(directory, device)
    return DiffusionModel(unet, scheduler, info, (info.channels, info.image_size, info.image_size))


def _load_imported_ddpm(raw: dict[str, Any], device: torch.device | str) -> DiffusionModel:
    """A DDPM from another run: a bibaddiff folder as it is; a diffusers pipeline or UNet folder with the classes of
    its import folder and, for a bare UNet, the noise schedule recorded at import."""
    record = raw[IMPORTED_KEY]
    path, layout = Path(record["path"]), record["layout"]
    if layout == "bibaddiff":
        unet, scheduler, info = load_model(path, device)
    else:
        folder = unet_folder(path, layout)
        check_safetensors_weights(folder)
        unet = UNet2DModel.from_pretrained(folder).to(device).eval()
        scheduler = (DDPMScheduler.from_pretrained(path / "scheduler") if layout == "pipeline"
                     else build_scheduler(**record["scheduler"]))
        info = ModelInfo(int(raw["num_classes"]), list(raw["class_names"]), int(raw["image_size"]), int(raw["channels"]))
    return DiffusionModel(unet, scheduler, info, (info.channels, info.image_size, info.image_size))
