"""The LDM-layout single file written from the tiny pipeline loads back through diffusers' from_single_file, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
from ldm_checkpoint import TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX, write_ldm_checkpoint


def _load_single_file(checkpoint: Path, pipeline_dir: Path):
    from diffusers import StableDiffusionPipeline

    # A local config folder keeps every config, the tokenizer and the scheduler on disk, and local_files_only makes
    # any hub lookup fail instead of download. The safety-checker keywords only restate what the folder says.
    return StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(pipeline_dir), local_files_only=True,
        safety_checker=None, requires_safety_checker=False,
    )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_weights(loaded, original, name: str) -> None:
    loaded_state, original_state = loaded.state_dict(), original.state_dict()
    assert loaded_state.keys() == original_state.keys(), name
    # from_single_file leaves weights missing from the file on the meta device instead of failing, so look.
    differing = [key for key, tensor in original_state.items()
                 if loaded_state[key].is_meta or not torch.equal(loaded_state[key], tensor)]
    assert not differing, f"{name}: {len(differing)} tensors differ, e.g. {differing[:5]}"


def _configs_only(pipeline_dir: Path, destination: Path) -> Path:
    """A copy of the pipeline folder without weights, so every loaded weight must come from the single file."""
    return Path(shutil.copytree(pipeline_dir, destination, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")))


def _assert_round_trip(pipeline_dir: Path, checkpoint: Path) -> None:
    from diffusers import StableDiffusionPipeline

    original = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None, local_files_only=True)
    loaded = _load_single_file(checkpoint, _configs_only(pipeline_dir, checkpoint.parent / "configs"))
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(loaded, name), getattr(original, name), name)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def deeper_pipeline_dir(tmp_path_factory) -> Path:
    """The tiny pipeline with SD 1.x's block pattern at three levels and two layers per block."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    directory = write_tiny_stable_diffusion(tmp_path_factory.mktemp("deeper_sd"))
    torch.manual_seed(1)
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 24, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    ).save_pretrained(directory / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=32,
    ).save_pretrained(directory / "vae")
    return directory


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_tiny_pipeline_round_trips_through_from_single_file(tiny_pipeline_dir, tmp_path, suffix):
    checkpoint = write_ldm_checkpoint(tiny_pipeline_dir, tmp_path / f"tiny{suffix}")
    _assert_round_trip(tiny_pipeline_dir, checkpoint)


def test_deeper_pipeline_round_trips_through_from_single_file(deeper_pipeline_dir, tmp_path):
    checkpoint = write_ldm_checkpoint(deeper_pipeline_dir, tmp_path / "deeper.safetensors")
    _assert_round_trip(deeper_pipeline_dir, checkpoint)


def test_checkpoint_uses_the_original_key_layout(tiny_pipeline_dir, deeper_pipeline_dir, tmp_path):
    """Spot-check names that any LDM-layout reader looks for, independent of diffusers' own converter."""
    tiny = _read_checkpoint(write_ldm_checkpoint(tiny_pipeline_dir, tmp_path / "tiny.ckpt"))
    assert all(key.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_ENCODER_PREFIX)) for key in tiny)
    expected_tiny_keys = [
        UNET_PREFIX + "time_embed.0.weight",
        UNET_PREFIX + "input_blocks.0.0.weight",
        UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight",
        UNET_PREFIX + "input_blocks.1.1.proj_in.weight",
        UNET_PREFIX + "input_blocks.2.0.op.weight",
        UNET_PREFIX + "input_blocks.3.0.skip_connection.weight",
        UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        UNET_PREFIX + "middle_block.2.emb_layers.1.weight",
        UNET_PREFIX + "output_blocks.1.1.conv.weight",
        UNET_PREFIX + "output_blocks.3.1.proj_out.weight",
        UNET_PREFIX + "out.2.weight",
        VAE_PREFIX + "encoder.down.0.downsample.conv.weight",
        VAE_PREFIX + "encoder.down.1.block.0.nin_shortcut.weight",
        VAE_PREFIX + "encoder.norm_out.weight",
        VAE_PREFIX + "decoder.up.1.upsample.conv.weight",
        VAE_PREFIX + "decoder.up.0.block.1.conv2.weight",
        VAE_PREFIX + "decoder.mid.attn_1.proj_out.weight",
        VAE_PREFIX + "post_quant_conv.weight",
        TEXT_ENCODER_PREFIX + "text_model.embeddings.position_embedding.weight",
        TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids",
        TEXT_ENCODER_PREFIX + "text_model.encoder.layers.1.mlp.fc2.weight",
    ]
    assert [key for key in expected_tiny_keys if key not in tiny] == []
    assert not any(key.startswith(UNET_PREFIX + "output_blocks.4") for key in tiny)
    for name in ("q", "k", "v", "proj_out"):
        assert tiny[f"{VAE_PREFIX}encoder.mid.attn_1.{name}.weight"].shape == (16, 16, 1, 1)

    deeper = _read_checkpoint(write_ldm_checkpoint(deeper_pipeline_dir, tmp_path / "deeper.safetensors"))
    # SD 1.x's pattern: an upsampler after an attention sits in slot 2 of the level's last output block.
    for key in ["input_blocks.8.0.in_layers.0.weight", "output_blocks.2.1.conv.weight",
                "output_blocks.5.2.conv.weight", "output_blocks.8.1.proj_in.weight"]:
        assert UNET_PREFIX + key in deeper
    assert VAE_PREFIX + "decoder.up.2.upsample.conv.weight" in deeper
    assert VAE_PREFIX + "decoder.up.0.block.2.norm1.weight" in deeper
