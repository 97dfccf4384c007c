"""A tiny Stable-Diffusion-shaped pipeline built from configs, for tests, dry runs and CPU experiments.

It has every component of a Stable Diffusion 1.x folder (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, scheduler) and a character-level tokenizer whose files are written here; nothing is downloaded.
With random weights the text-to-image path of the workflow runs end to end on a CPU in seconds. With its VAE
trained on clean training images it is a base model that a CPU can fine-tune into a working text-to-image model of
digits: the DAG builds it for ``diffusion.pretrained: {build: tiny}`` (configs/digits-sd-cpu.yaml), and
``python -m bibaddiff.diffusion.tiny OUT --vae-steps 3000`` builds one by hand on the bundled digits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bibaddiff.errors import BibaddiffError

TOKENIZER_MAX_LENGTH = 16
# What was built, with the VAE's training figures; diffusers ignores this file when it loads the folder.
BASE_DESCRIPTION = "bibaddiff_base.json"


def _character_vocab() -> dict[str, int]:
    """Printable ASCII characters, each also as a word end, plus CLIP's start and end tokens."""
    characters = [chr(code) for code in range(33, 127)]
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_stable_diffusion(directory: str | Path, image_size: int = 32, seed: int = 0,
                                unet_channels: tuple[int, int] = (16, 32), vae_training_images: np.ndarray | None = None,
                                vae_steps: int = 0) -> Path:
    """Write a tiny Stable Diffusion pipeline in diffusers format to ``directory`` and return it.

    The VAE downsamples by 2 (SD's by 8), so ``image_size`` must be even and its latents must fit the UNet's two
    levels: ``image_size`` divisible by 4. With ``vae_training_images`` (uint8 RGB, N x image_size x image_size x 3)
    the VAE is first trained on them for ``vae_steps`` steps, and its scaling factor set to give latents of unit
    standard deviation, as Stable Diffusion's is.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if image_size < 8 or image_size % 4:
        raise BibaddiffError(f"the tiny pipeline needs an image size divisible by 4 and at least 8; got {image_size}")
    if len(unet_channels) != 2 or any(c < 8 or c % 8 for c in unet_channels):
        raise BibaddiffError(f"unet_channels must be two multiples of 8; got {list(unet_channels)}")
    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _tiny_text_model(directory / "tokenizer")
    vae, unet = _tiny_latent_models(image_size, unet_channels)
    vae_training = {}
    if vae_training_images is not None and vae_steps > 0:
        vae_training = train_vae(vae, vae_training_images, vae_steps, seed=seed)
    # Stable Diffusion 1.x's noise schedule and sampler settings.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    description = {"image_size": image_size, "unet_channels": [int(c) for c in unet_channels], "seed": seed,
                   "vae_steps": vae_steps if vae_training else 0,
                   "vae_training_images": 0 if not vae_training else len(vae_training_images), **vae_training}
    (directory / BASE_DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")
    return directory


def _tiny_text_model(tokenizer_dir: Path) -> tuple[Any, torch.nn.Module]:
    """A character-level CLIP tokenizer (its files written to ``tokenizer_dir``) and a two-layer CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = _character_vocab()
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
    return tokenizer, text_encoder


def _tiny_latent_models(image_size: int, unet_channels: tuple[int, int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A VAE that halves the image size into 4 latent channels, and a two-level cross-attention UNet on its latents."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(int(c) for c in unet_channels),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    return vae, unet


def build_tiny_base(directory: str | Path, settings: dict[str, Any], training_images: np.ndarray) -> dict[str, Any]:
    """The base model of ``diffusion.pretrained: {build: tiny, ...}`` (settings as checked by
    :func:`bibaddiff.diffusion.pretrained.check_tiny_build`), its VAE trained on ``training_images`` (uint8 RGB).
    Returns the description written next to the model (settings, VAE reconstruction error, scaling factor)."""
    from bibaddiff.diffusion.pretrained import check_tiny_build

    images = np.asarray(training_images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise BibaddiffError(f"the tiny base model's VAE trains on RGB images (N, H, W, 3); got shape {images.shape}")
    settings = check_tiny_build(settings, images.shape[1])
    path = write_tiny_stable_diffusion(directory, settings["image_size"], settings["seed"],
                                       tuple(settings["unet_channels"]), images, settings["vae_steps"])
    return json.loads((path / BASE_DESCRIPTION).read_text())


def train_vae(vae: torch.nn.Module, images: np.ndarray, steps: int, batch_size: int = 64, learning_rate: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0, random_patches: bool = True) -> dict[str, float]:
    """Train an AutoencoderKL on uint8 RGB images (reconstruction + a small KL term), then set its scaling factor
    so that scaled latents have unit standard deviation. Returns the final reconstruction error and the factor.

    ``random_patches`` pastes random binary squares of random size, place and colour on half of the images. A VAE
    that only ever saw clean digits cannot reconstruct a small high-frequency trigger at all (measured: mean
    absolute error 133 of 255 on a 3x3 checker), whereas Stable Diffusion's VAE, trained on the open web,
    reconstructs such patterns; the squares stand in for that breadth without ever showing the trigger itself."""
    from tqdm.auto import tqdm

    from bibaddiff.images import inference_batch_size, to_model_space
    from bibaddiff.utils import RunningMoments

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise BibaddiffError(f"VAE training images must be uint8 RGB (N, H, W, 3); got {images.dtype} {images.shape}")
    generator = torch.Generator().manual_seed(seed)
    # Each batch is converted to float on its own: the whole set as float32 is four times its pixels (7.4 GB for
    # ImageNette's training set at 256 px).
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    vae.train()
    errors = []
    for _ in tqdm(range(steps), desc="training the tiny VAE", unit="step", mininterval=5):
        batch = to_model_space(images[torch.randint(0, len(images), (batch_size,), generator=generator).numpy()])
        if random_patches:
            batch = _paste_random_patches(batch, generator)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        error = torch.nn.functional.mse_loss(reconstruction, batch)
        loss = error + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        errors.append(error.item())
    vae.eval()
    # The latents' spread is taken batch by batch: the latents of the whole set at once grew with it (245 MB of
    # float32 for 60,000 images at 32 px) for the sake of one number.
    latent_moments = RunningMoments("the tiny VAE's latents")
    with torch.no_grad():
        step = inference_batch_size(images, 256)
        # At 256 px encoding the whole set takes minutes on a CPU, longer than the few training steps a test uses.
        starts = tqdm(range(0, len(images), step), desc="encoding the set for the scaling factor", unit="batch",
                      mininterval=5)
        for i in starts:
            latents = vae.encode(to_model_space(images[i:i + step])).latent_dist.mean
            latent_moments.update(latents.double().cpu().numpy())
    scaling_factor = 1.0 / latent_moments.std()
    vae.register_to_config(scaling_factor=scaling_factor)
    return {"reconstruction_mse": float(np.mean(errors[-100:])), "scaling_factor": scaling_factor}


def _paste_random_patches(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half of the images get a square of random binary noise (side 2 to size/3) at a random place."""
    batch = batch.clone()
    size = batch.shape[-1]
    for i in range(len(batch)):
        if torch.rand(1, generator=generator).item() < 0.5:
            continue
        side = int(torch.randint(2, max(3, size // 3 + 1), (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
        noise = (torch.rand(1, side, side, generator=generator) < 0.5).float() * 2 - 1
        colour = torch.rand(batch.shape[1], 1, 1, generator=generator) < 0.5
        batch[i, :, top:top + side, left:left + side] = torch.where(colour, noise, -noise)
    return batch


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bibaddiff.data import load_source

    parser = argparse.ArgumentParser(description="Write a tiny Stable Diffusion folder (diffusers format).")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--unet-channels", type=int, nargs=2, default=[32, 64])
    parser.add_argument("--vae-steps", type=int, default=0, help="train the VAE on the bundled digits (RGB) first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = None
    if args.vae_steps:
        train, _ = load_source({"source": "digits", "image_size": args.image_size, "rgb": True})
        images = train.images
    try:
        path = write_tiny_stable_diffusion(args.output, args.image_size, args.seed, tuple(args.unet_channels), images,
                                           args.vae_steps)
    except BibaddiffError as error:
        print(f"error: {error}")
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
