"""A tiny Stable-Diffusion-shaped pipeline built from configs, for tests and dry runs (nothing is downloaded).

It has every component of a Stable Diffusion 1.x folder (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, scheduler) with random weights and a character-level tokenizer whose files are written here, so
the text-to-image path of the workflow can run end to end on a CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bibaddiff.errors import BibaddiffError

TOKENIZER_MAX_LENGTH = 16


def _character_vocab() -> dict[str, int]:
    """Printable ASCII characters, each also as a word end, plus CLIP's start and end tokens."""
    characters = [chr(code) for code in range(33, 127)]
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_stable_diffusion(directory: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny Stable Diffusion pipeline in diffusers format to ``directory`` and return it.

    The VAE downsamples by 2 (SD's by 8), so ``image_size`` must be even and its latents must fit the UNet's two
    levels: ``image_size`` divisible by 4.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size < 8 or image_size % 4:
        raise BibaddiffError(f"the tiny pipeline needs an image size divisible by 4 and at least 8; got {image_size}")
    directory = Path(directory)
    torch.manual_seed(seed)
    vocab = _character_vocab()
    tokenizer_dir = directory / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")
    # Positional: transformers 4 names these vocab_file and merges_file, transformers 5 vocab and merges.
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"),
                              model_max_length=TOKENIZER_MAX_LENGTH)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], projection_dim=16,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    # Stable Diffusion 1.x's noise schedule and sampler settings.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    return directory
