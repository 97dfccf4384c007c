"""Write a diffusers Stable Diffusion 1.x folder as one checkpoint in the original (CompVis/LDM) key layout.

Community Stable Diffusion checkpoints (A1111, civitai) are single ``.safetensors`` or ``.ckpt`` files that hold the
UNet, VAE and text encoder under LDM's module names. Tests build such a file from the tiny diffusers pipeline so the
single-file loading path can run offline. The mapping is derived from the model configs (levels, layers per block,
which levels have attention), so it is not tied to the tiny model's shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

# Module renames inside one block, keyed by the diffusers path relative to the block.
UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


@dataclass(frozen=True)
class LdmBlock:
    """Where one diffusers module lives in the LDM layout."""

    ldm_path: str
    renames: Mapping[str, str] = field(default_factory=dict)
    # LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers.
    linear_as_conv: bool = False


def unet_block_map(config: Mapping) -> dict[str, LdmBlock]:
    """Map each diffusers UNet2DConditionModel block to its LDM ``input_blocks``/``middle_block``/``output_blocks`` slot."""
    layers_per_block = config["layers_per_block"]
    if not isinstance(layers_per_block, int):
        # diffusers' single-file converter reads layers_per_block as one number, so a per-level list cannot round-trip.
        raise ValueError(f"the LDM layout needs one layers_per_block for all levels; got {layers_per_block!r}")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"the LDM layout expects a cross-attention mid block; got {config['mid_block_type']!r}")
    blocks = {
        "conv_in": LdmBlock("input_blocks.0.0"),
        "time_embedding.linear_1": LdmBlock("time_embed.0"),
        "time_embedding.linear_2": LdmBlock("time_embed.2"),
        "conv_norm_out": LdmBlock("out.0"),
        "conv_out": LdmBlock("out.2"),
        "mid_block.resnets.0": LdmBlock("middle_block.0", UNET_RESNET_RENAMES),
        "mid_block.attentions.0": LdmBlock("middle_block.1"),
        "mid_block.resnets.1": LdmBlock("middle_block.2", UNET_RESNET_RENAMES),
    }

    # LDM numbers the encoder path flat: input_blocks.0 is conv_in, then each level's layers, then its downsampler.
    down_types = config["down_block_types"]
    input_index = 1
    for level, block_type in enumerate(down_types):
        for layer in range(layers_per_block):
            blocks[f"down_blocks.{level}.resnets.{layer}"] = LdmBlock(f"input_blocks.{input_index}.0",
                                                                      UNET_RESNET_RENAMES)
            if "CrossAttn" in block_type:
                blocks[f"down_blocks.{level}.attentions.{layer}"] = LdmBlock(f"input_blocks.{input_index}.1")
            input_index += 1
        if level < len(down_types) - 1:
            blocks[f"down_blocks.{level}.downsamplers.0.conv"] = LdmBlock(f"input_blocks.{input_index}.0.op")
            input_index += 1

    # Each decoder level has one more layer (it also takes the skip from the downsampler); the upsampler sits in the
    # level's last output block, after the attention when there is one.
    up_types = config["up_block_types"]
    output_index = 0
    for level, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(layers_per_block + 1):
            blocks[f"up_blocks.{level}.resnets.{layer}"] = LdmBlock(f"output_blocks.{output_index}.0",
                                                                    UNET_RESNET_RENAMES)
            if has_attention:
                blocks[f"up_blocks.{level}.attentions.{layer}"] = LdmBlock(f"output_blocks.{output_index}.1")
            if layer == layers_per_block and level < len(up_types) - 1:
                upsampler_slot = 2 if has_attention else 1
                blocks[f"up_blocks.{level}.upsamplers.0.conv"] = LdmBlock(
                    f"output_blocks.{output_index}.{upsampler_slot}.conv")
            output_index += 1
    return blocks


def vae_block_map(config: Mapping) -> dict[str, LdmBlock]:
    """Map each diffusers AutoencoderKL block to its LDM ``encoder.down``/``mid``/``decoder.up`` slot."""
    layers_per_block = config["layers_per_block"]
    blocks = {
        "quant_conv": LdmBlock("quant_conv"),
        "post_quant_conv": LdmBlock("post_quant_conv"),
    }
    for coder in ("encoder", "decoder"):
        blocks[f"{coder}.conv_in"] = LdmBlock(f"{coder}.conv_in")
        blocks[f"{coder}.conv_norm_out"] = LdmBlock(f"{coder}.norm_out")
        blocks[f"{coder}.conv_out"] = LdmBlock(f"{coder}.conv_out")
        blocks[f"{coder}.mid_block.resnets.0"] = LdmBlock(f"{coder}.mid.block_1", VAE_RESNET_RENAMES)
        blocks[f"{coder}.mid_block.resnets.1"] = LdmBlock(f"{coder}.mid.block_2", VAE_RESNET_RENAMES)
        blocks[f"{coder}.mid_block.attentions.0"] = LdmBlock(f"{coder}.mid.attn_1", VAE_ATTENTION_RENAMES,
                                                             linear_as_conv=True)

    down_levels = len(config["down_block_types"])
    for level in range(down_levels):
        for layer in range(layers_per_block):
            blocks[f"encoder.down_blocks.{level}.resnets.{layer}"] = LdmBlock(f"encoder.down.{level}.block.{layer}",
                                                                              VAE_RESNET_RENAMES)
        if level < down_levels - 1:
            blocks[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = LdmBlock(f"encoder.down.{level}.downsample.conv")

    # diffusers numbers decoder levels in the order they run (lowest resolution first); LDM numbers them by
    # resolution like the encoder, so up.0 is the last level to run and the only one without an upsampler.
    up_levels = len(config["up_block_types"])
    for level in range(up_levels):
        ldm_level = up_levels - 1 - level
        for layer in range(layers_per_block + 1):
            blocks[f"decoder.up_blocks.{level}.resnets.{layer}"] = LdmBlock(f"decoder.up.{ldm_level}.block.{layer}",
                                                                            VAE_RESNET_RENAMES)
        if ldm_level > 0:
            blocks[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = LdmBlock(f"decoder.up.{ldm_level}.upsample.conv")
    return blocks


def _find_block(module_path: str, blocks: Mapping[str, LdmBlock]) -> tuple[str, str] | None:
    """Split ``module_path`` into the deepest mapped block that contains it and the path inside that block."""
    parts = module_path.split(".")
    for cut in range(len(parts), 0, -1):
        block = ".".join(parts[:cut])
        if block in blocks:
            return block, ".".join(parts[cut:])
    return None


def _rename_to_ldm(state_dict: Mapping[str, torch.Tensor], blocks: Mapping[str, LdmBlock],
                   prefix: str) -> dict[str, torch.Tensor]:
    renamed = {}
    unmapped = []
    for key, tensor in state_dict.items():
        module_path, _, parameter = key.rpartition(".")
        found = _find_block(module_path, blocks)
        if found is None:
            unmapped.append(key)
            continue
        block_path, inner_path = found
        block = blocks[block_path]
        inner_path = block.renames.get(inner_path, inner_path)
        ldm_key = ".".join(part for part in (block.ldm_path, inner_path, parameter) if part)
        if block.linear_as_conv and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        # safetensors refuses views and shared storage.
        renamed[prefix + ldm_key] = tensor.detach().clone().contiguous()
    if unmapped:
        raise ValueError(f"no LDM name for {len(unmapped)} weights, e.g. {unmapped[:5]}")
    return renamed


def _text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    # SD 1.x stores the HF CLIPTextModel state dict as is, from the era when its keys started with "text_model.";
    # transformers >= 5.6 dropped that level, and diffusers detects SD 1.x CLIP by the full old key.
    renamed = {}
    for key, tensor in text_encoder.state_dict().items():
        old_key = key if key.startswith("text_model.") else "text_model." + key
        renamed[TEXT_ENCODER_PREFIX + old_key] = tensor.detach().clone().contiguous()
    # Real SD 1.x files also carry position_ids (a buffer that newer transformers no longer saves); loaders must skip it.
    positions = text_encoder.config.max_position_embeddings
    renamed[TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return renamed


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three models' weights under the key names of an original Stable Diffusion 1.x checkpoint."""
    state = _rename_to_ldm(unet.state_dict(), unet_block_map(unet.config), UNET_PREFIX)
    state.update(_rename_to_ldm(vae.state_dict(), vae_block_map(vae.config), VAE_PREFIX))
    state.update(_text_encoder_to_ldm(text_encoder))
    return state


def write_ldm_checkpoint(pipeline_dir: Path, path: Path) -> Path:
    """Write the UNet, VAE and text encoder of the diffusers folder ``pipeline_dir`` as one LDM-layout checkpoint.

    ``path`` ending in ``.safetensors`` gets a safetensors file; ``.ckpt`` a torch pickle of ``{"state_dict": ...}``
    as the original training code saved it.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipeline_dir, path = Path(pipeline_dir), Path(path)
    if path.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"checkpoint path must end in .safetensors or .ckpt; got {path}")
    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
    state = ldm_state_dict(unet, vae, text_encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, path)
    return path
