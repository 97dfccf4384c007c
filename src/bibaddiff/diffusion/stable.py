"""Stable Diffusion as a text-conditioned model of the same DAG: local components, cached VAE latents, and the
fine-tuned model behind the class-label interface that generation and the defences use.

A class index c stands for the prompt of class c (``A photo of a {class_name}`` unless the dataset says otherwise);
the null class stands for the empty prompt, which is what Stable Diffusion's classifier-free guidance uses.
Everything is read from local paths; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bibaddiff.data import ImageDataset, content_hash
from bibaddiff.diffusion.base import MODEL_INFO_FILE, DiffusionModel, ModelInfo, check_safetensors_weights
from bibaddiff.diffusion.imported import IMPORTED_KEY
from bibaddiff.diffusion.pretrained import check_pretrained
from bibaddiff.images import to_model_space, to_uint8
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import read_json

log = logging.getLogger(__name__)
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class StableDiffusionComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any  # a DDPMScheduler with the model's noise schedule

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_size(self, image_size: int) -> int:
        """The latent side for ``image_size`` pixels, checked against the VAE and the UNet's downsampling."""
        factor = self.vae_scale_factor
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if image_size % (factor * unet_factor):
            raise BibaddiffError(f"dataset.image_size {image_size} must be divisible by {factor * unet_factor} for this "
                                 f"model (VAE downsamples by {factor}, the UNet by {unet_factor})")
        return image_size // factor


def load_components(pretrained: dict[str, Any], unet: Any = None) -> StableDiffusionComponents:
    """UNet, VAE, text encoder, tokenizer and noise schedule from a local diffusers folder or a single file.

    A given ``unet`` (a fine-tuned one) is used instead of the base model's, which is then not loaded at all.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    path, config = check_pretrained(pretrained)
    options = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False)
    if unet is not None:
        options["unet"] = unet
    try:
        if path.is_dir():
            pipeline = StableDiffusionPipeline.from_pretrained(path, feature_extractor=None, **options)
        else:
            pipeline = StableDiffusionPipeline.from_single_file(str(path), config=str(config), **options)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())  # one line, whatever diffusers wrote
        raise BibaddiffError(f"diffusion.pretrained.path: cannot load Stable Diffusion from {path}: {reason}") from None
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    return StableDiffusionComponents(pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, scheduler)


@torch.no_grad()
def encode_text(tokenizer: Any, text_encoder: Any, texts: list[str], device: torch.device | str) -> torch.Tensor:
    """The text encoder's last hidden states for ``texts``, padded to the tokenizer's length, on ``device``:
    (N, L, D)."""
    tokens = tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


def embed_prompts(components: StableDiffusionComponents, prompts: list[str], device: torch.device | str = "cpu",
                  batch_size: int = 64) -> torch.Tensor:
    """:func:`encode_text` of ``prompts`` in batches, gathered as float32 on the CPU: (N, L, D)."""
    return torch.cat([encode_text(components.tokenizer, components.text_encoder, prompts[start:start + batch_size],
                                  device).float().cpu() for start in range(0, len(prompts), batch_size)])


# --------------------------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_latents(dataset: ImageDataset, components: StableDiffusionComponents, batch_size: int = 16,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The VAE's latent distribution of every image, already multiplied by the VAE's scaling factor.

    Training draws ``mean + std * noise`` each time an image is used, as it would if it ran the VAE itself.
    """
    if dataset.channels != 3:
        raise BibaddiffError(f"Stable Diffusion needs RGB images; the dataset has {dataset.channels} channel(s)")
    if len(dataset) == 0:
        raise BibaddiffError("cannot encode an empty dataset")
    components.latent_size(dataset.image_size)
    vae = components.vae.to(device).eval()
    scale = float(vae.config.scaling_factor)
    means, stds = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="VAE latents", unit="batch", mininterval=5):
        pixels = to_model_space(dataset.images[start:start + batch_size]).to(device, vae.dtype)
        distribution = vae.encode(pixels).latent_dist
        means.append((distribution.mean.float() * scale).cpu())
        stds.append((distribution.std.float() * scale).cpu())
    return {"mean": torch.cat(means), "std": torch.cat(stds)}


def save_latents(path: str | Path, latents: dict[str, torch.Tensor], dataset: ImageDataset,
                 pretrained: dict[str, Any]) -> None:
    """Latents plus what training needs from the dataset (captions, labels, classes), in one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "texts": json.dumps(dataset.texts),
        "class_names": json.dumps(list(dataset.class_names)),
        "class_prompts": json.dumps(class_prompts(dataset)),
        # A dataset straight from a loader has no manifest hash yet; resuming must still tell datasets apart.
        "dataset_hash": dataset.manifest.get("content_hash") or content_hash(dataset),
        "image_size": str(dataset.image_size),
        "pretrained": json.dumps(dict(pretrained), sort_keys=True),
        "captioned_per_image": json.dumps(dataset.manifest.get("captions") is not None),
    }
    tensors = {"mean": latents["mean"].contiguous(), "std": latents["std"].contiguous(),
               "labels": torch.from_numpy(dataset.labels.copy()), "poisoned": torch.from_numpy(dataset.poisoned.astype(np.uint8))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


@dataclass
class LatentDataset:
    mean: torch.Tensor
    std: torch.Tensor
    labels: np.ndarray
    poisoned: np.ndarray
    texts: list[str]
    class_names: list[str]
    class_prompts: list[str]
    dataset_hash: str
    image_size: int
    pretrained: dict[str, Any]
    captioned_per_image: bool = False

    def __len__(self) -> int:
        return len(self.mean)


def load_latents(path: str | Path) -> LatentDataset:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BibaddiffError(f"{path}: latent file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return LatentDataset(
            mean=tensors["mean"], std=tensors["std"], labels=tensors["labels"].numpy(),
            poisoned=tensors["poisoned"].numpy().astype(bool), texts=json.loads(metadata["texts"]),
            class_names=json.loads(metadata["class_names"]), class_prompts=json.loads(metadata["class_prompts"]),
            dataset_hash=metadata["dataset_hash"], image_size=int(metadata["image_size"]),
            pretrained=json.loads(metadata["pretrained"]),
            captioned_per_image=json.loads(metadata.get("captioned_per_image", "false")),
        )
    except (KeyError, json.JSONDecodeError, OSError) as error:
        raise BibaddiffError(f"{path}: not a latent file written by bibaddiff ({error})") from None


def class_prompts(dataset: ImageDataset) -> list[str]:
    """The prompt of each class: the dataset's class captions, or its class names when it has none."""
    prompts = dataset.manifest.get("class_prompts")
    if prompts is None:
        return list(dataset.class_names)
    if len(prompts) != dataset.num_classes:
        raise BibaddiffError(f"the dataset manifest has {len(prompts)} class prompts for {dataset.num_classes} classes")
    return list(prompts)


def caption_pools(latents: LatentDataset) -> list[list[str]]:
    """Per class, the distinct captions of its clean training images (in order of first appearance): the prompts
    that a model trained on per-image captions is sampled with, one drawn per generated image."""
    pools: list[list[str]] = [[] for _ in latents.class_names]
    for text, label, poisoned in zip(latents.texts, latents.labels, latents.poisoned):
        if not poisoned and text not in pools[int(label)]:
            pools[int(label)].append(text)
    return pools


def pooled_prompt_rows(pool_sizes: list[int], first_row: int) -> Any:
    """``rows(condition, num_images, seed)``: the prompt-table row of each generated image when every class has a
    pool of captions stored from ``first_row`` on. A seeded permutation of the class's pool, repeated, so that a cell
    uses every caption about equally often and the same captions at every guidance scale."""
    offsets = np.concatenate([[0], np.cumsum(pool_sizes)]).astype(np.int64) + first_row

    def rows(condition: int, num_images: int, seed: int) -> np.ndarray:
        size = pool_sizes[condition]
        if size == 0:
            raise BibaddiffError(f"class {condition} has no training caption to prompt with")
        order = np.random.default_rng([seed, condition, 3]).permutation(size)
        return offsets[condition] + order[np.arange(num_images) % size]

    return rows


# --------------------------------------------------------------------------------------------- the trained model


class PromptConditionedUNet(torch.nn.Module):
    """A UNet2DConditionModel behind the class-label interface: class c is prompt c, the null class the empty prompt."""

    def __init__(self, unet: Any, prompt_embeddings: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("prompt_embeddings", prompt_embeddings, persistent=False)

    @property
    def config(self) -> Any:
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor) -> Any:
        hidden = self.prompt_embeddings[class_labels.to(self.prompt_embeddings.device)].to(sample.dtype)
        return self.unet(sample, timestep, encoder_hidden_states=hidden)


def load_text_to_image_model(directory: str | Path, device: torch.device | str = "cpu",
                             pretrained: dict[str, Any] | None = None) -> DiffusionModel:
    """A fine-tuned model folder (full UNet or LoRA weights over the base model named in it, or over ``pretrained``
    when given) as a DiffusionModel."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    directory = Path(directory)
    info_json = read_json(directory / MODEL_INFO_FILE)
    base = pretrained or info_json["pretrained"]
    if (directory / "unet").is_dir():
        check_safetensors_weights(directory / "unet")
        components = load_components(base, unet=UNet2DConditionModel.from_pretrained(directory / "unet"))
    elif (directory / LORA_WEIGHTS_FILE).is_file():
        check_safetensors_weights(directory)
        components = load_components(base)
        components.unet = _unet_with_lora(components, directory / LORA_WEIGHTS_FILE)
    else:
        raise BibaddiffError(f"{directory}: neither a unet/ folder nor {LORA_WEIGHTS_FILE}")
    return text_to_image_model(components, DDPMScheduler.from_pretrained(directory / "scheduler"), info_json, device)


def load_imported_text_to_image_model(info_json: dict[str, Any], device: torch.device | str = "cpu") -> DiffusionModel:
    """An imported Stable Diffusion (an import folder's ``bibaddiff_model.json``: its classes and prompts, and under
    ``imported`` the layout, path and base; :mod:`bibaddiff.diffusion.imported`) as a DiffusionModel. A single-file
    checkpoint is read the way a single-file base model is, with the configs of a diffusers folder."""
    from diffusers import UNet2DConditionModel

    record = info_json[IMPORTED_KEY]
    path, layout = Path(record["path"]), record["layout"]
    if layout == "bibaddiff":
        return load_text_to_image_model(path, device, pretrained=record.get("base"))
    if layout == "pipeline":
        components = load_components({"path": str(path), "config": None})
    elif layout == "checkpoint":
        components = load_components({"path": str(path), "config": record["config"]})
    elif layout == "unet":
        check_safetensors_weights(path)
        components = load_components(record["base"], unet=UNet2DConditionModel.from_pretrained(path))
    elif layout == "lora":
        components = load_components(record["base"])
        components.unet = _unet_with_lora(components, path)
    else:
        raise BibaddiffError(f"{path}: unknown import layout {layout!r}")
    return text_to_image_model(components, components.scheduler, info_json, device)


def text_to_image_model(components: StableDiffusionComponents, scheduler: Any, info_json: dict[str, Any],
                        device: torch.device | str = "cpu") -> DiffusionModel:
    """Stable Diffusion components behind the class-label interface: ``info_json`` gives the class names, the
    prompt of each class and the image size (and, for a model trained on per-image captions, each class's captions)."""
    info = ModelInfo(len(info_json["class_names"]), list(info_json["class_names"]), int(info_json["image_size"]), 3)
    device = torch.device(device)
    components.text_encoder.to(device).eval()
    # The null condition (index num_classes) is the empty prompt. A model trained on per-image captions is sampled
    # with its classes' training captions, stored after it; class prompts stay rows 0..num_classes-1 for the
    # diffusion classifier.
    pools = info_json.get("caption_pools") or []
    prompts = list(info_json["class_prompts"]) + [""] + [caption for pool in pools for caption in pool]
    embeddings = embed_prompts(components, prompts, device)
    prompt_rows = pooled_prompt_rows([len(pool) for pool in pools], len(info_json["class_prompts"]) + 1) if pools else None
    denoiser = PromptConditionedUNet(components.unet.eval(), embeddings).to(device)
    vae = components.vae.to(device).eval()
    scale = float(vae.config.scaling_factor)
    latent = components.latent_size(info.image_size)

    @torch.no_grad()
    def encode(images: np.ndarray) -> torch.Tensor:
        pixels = to_model_space(images).to(device, vae.dtype)
        return (vae.encode(pixels).latent_dist.mean.float() * scale).cpu()

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> np.ndarray:
        return to_uint8(vae.decode(latents.to(device, vae.dtype) / scale).sample)

    return DiffusionModel(denoiser, scheduler, info, (int(components.unet.config.in_channels), latent, latent),
                          encode, decode, kind="stable_diffusion", prompt_rows=prompt_rows)


def _unet_with_lora(components: StableDiffusionComponents, weights: Path) -> Any:
    """The base UNet with the LoRA weights of the file ``weights`` fused in, through diffusers' own LoRA loader."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                       tokenizer=components.tokenizer, unet=components.unet,
                                       scheduler=components.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.load_lora_weights(str(weights.parent), weight_name=weights.name)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    return pipeline.unet
