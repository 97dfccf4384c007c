"""Resumable fine-tuning of a Stable Diffusion UNet on cached VAE latents and their captions.

The VAE and the text encoder stay frozen; the UNet is trained in full or through LoRA adapters (peft) with the
standard noise-prediction loss (velocity for v-prediction models). Resuming, checkpoints and process seeds come from
:mod:`bibaddiff.diffusion.trainer`, as for the DDPM: a killed job continues from its last state and ends with the same
weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bibaddiff.diffusion.base import MODEL_INFO_FILE
from bibaddiff.diffusion.stable import LORA_WEIGHTS_FILE, LatentDataset, caption_pools, encode_text, load_components
from bibaddiff.diffusion.trainer import (MAX_GRAD_NORM, Trainer, check_common_settings, finish_training, run_training,
                                         schema_field, settings_fingerprint, start_training)
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import write_json

log = logging.getLogger(__name__)
FINETUNE_METHODS = ("full", "lora")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class FinetuneSettings:
    # Defaults: the schema's for kind stable_diffusion (diffusion.training), read when an instance is made.
    steps: int | None = None  # required by check(): the schema has no default for it
    batch_size: int = schema_field("stable_diffusion", "batch_size")
    learning_rate: float = schema_field("stable_diffusion", "learning_rate")
    warmup_steps: int = schema_field("stable_diffusion", "warmup_steps")
    weight_decay: float = schema_field("stable_diffusion", "weight_decay")
    ema_decay: float = schema_field("stable_diffusion", "ema_decay")
    label_dropout: float = schema_field("stable_diffusion", "label_dropout")  # share of captions replaced by ""
    checkpoint_every: int = schema_field("stable_diffusion", "checkpoint_every")
    mixed_precision: str = schema_field("stable_diffusion", "mixed_precision")
    finetune: str = schema_field("stable_diffusion", "finetune")
    lora_rank: int = schema_field("stable_diffusion", "lora_rank")
    lora_alpha: float | None = schema_field("stable_diffusion", "lora_alpha")
    gradient_checkpointing: bool = schema_field("stable_diffusion", "gradient_checkpointing")
    max_grad_norm: float = MAX_GRAD_NORM  # not a config key; kept here because saved states' fingerprints include it

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FinetuneSettings":
        known = set(cls.__dataclass_fields__)
        settings = cls(**{k: v for k, v in config.items() if k in known})
        settings.check()
        return settings

    def check(self) -> None:
        check_common_settings(self, ("bf16", "fp16", "no"))
        if self.finetune not in FINETUNE_METHODS:
            raise BibaddiffError(f"diffusion.training.finetune must be one of {', '.join(FINETUNE_METHODS)}; got {self.finetune!r}")
        if self.lora_rank < 1:
            raise BibaddiffError(f"diffusion.training.lora_rank must be at least 1; got {self.lora_rank}")


def finetune_stable_diffusion(latents: LatentDataset, pretrained: dict[str, Any], output_dir: str | Path,
                              state_dir: str | Path, settings: FinetuneSettings, seed: int, device: str = "auto",
                              stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) the UNet of ``pretrained`` on ``latents``; writes the model folder.

    Full fine-tuning saves the EMA UNet as ``unet/``; LoRA saves the EMA adapter weights in diffusers' LoRA format
    (``pytorch_lora_weights.safetensors``, loadable with ``pipeline.load_lora_weights``). Either way the folder has
    ``scheduler/``, ``bibaddiff_model.json`` (base model, classes and their prompts) and ``training.json``.
    """

    if len(latents) == 0:
        raise BibaddiffError("cannot fine-tune on an empty dataset")
    if dict(latents.pretrained) != dict(pretrained):
        raise BibaddiffError(f"the latents were encoded with the VAE of {latents.pretrained}, not of {pretrained}; "
                             "re-encode them (delete the latent file)")
    accelerator, local_batch, generator = start_training(device, settings, state_dir, seed)
    torch_device = accelerator.device

    components = load_components(pretrained)
    components.latent_size(latents.image_size)
    scheduler = components.scheduler
    text_encoder = components.text_encoder.to(torch_device).eval().requires_grad_(False)
    del components.vae  # latents are cached: the VAE is not needed here
    trainer = UNetTrainer(components.unet, scheduler, settings, accelerator)  # LoRA initialised from torch's seed

    texts = list(latents.texts)

    def take_step() -> float:
        index = torch.randint(0, len(latents), (local_batch,), generator=generator)
        clean = latents.mean[index].float() + latents.std[index].float() * torch.randn(
            latents.mean[index].shape, generator=generator)
        dropped = (torch.rand(local_batch, generator=generator) < settings.label_dropout).tolist()
        captions = ["" if drop else texts[i] for i, drop in zip(index.tolist(), dropped)]
        return trainer.step(clean, encode_text(components.tokenizer, text_encoder, captions, torch_device), generator)

    fingerprint = settings_fingerprint(settings, seed, data=latents.dataset_hash, pretrained=pretrained)
    stats, losses = run_training(trainer, take_step, generator, settings, state_dir, fingerprint, seed,
                                 desc=f"fine-tuning ({settings.finetune})", stop_after=stop_after, progress=progress)
    stats["trained_parameters"] = sum(p.numel() for p in trainer.trainable.values())
    model = accelerator.unwrap_model(trainer.unet)
    return finish_training(trainer, stats, losses, output_dir, lambda: _save_finetuned(
        Path(output_dir), model, scheduler, latents, pretrained, settings))


class UNetTrainer(Trainer):
    """Stable Diffusion's step: noise and timesteps on clean latents, the noise-prediction (or velocity) loss given
    the captions' text hidden states. The trained parameters are the whole UNet or its LoRA adapters."""

    def __init__(self, unet: torch.nn.Module, scheduler: Any, settings: FinetuneSettings, accelerator: Any):
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in ("epsilon", "v_prediction"):
            raise BibaddiffError(f"cannot fine-tune a model with prediction_type {prediction_type!r}")
        trainable = make_trainable(unet, settings)
        if settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        super().__init__(unet, trainable, settings, accelerator, settings.max_grad_norm)
        self.scheduler = scheduler

    def step(self, clean: torch.Tensor, hidden: torch.Tensor, generator: torch.Generator) -> float:
        """One step on clean latents (B, C, h, w) and text hidden states; returns the loss."""
        device, scheduler = self.accelerator.device, self.scheduler
        noise = torch.randn(clean.shape, generator=generator).to(clean.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps.to(clean.device))
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(clean, noise, timesteps.to(clean.device))
        with self.accelerator.autocast():
            prediction = self.unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=hidden).sample
        return self.optimise(F.mse_loss(prediction.float(), target.to(device).float()))


def make_trainable(unet: torch.nn.Module, settings: FinetuneSettings) -> dict[str, torch.nn.Parameter]:
    """Freeze what is not trained; return the trained parameters by name (all of the UNet, or its LoRA adapters)."""
    if settings.finetune == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or settings.lora_rank,
                                    init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    else:
        unet.requires_grad_(True)
    trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
    if not trainable:
        raise BibaddiffError("no UNet parameter is trainable; check diffusion.training.finetune")
    return trainable


def _save_finetuned(output_dir: Path, unet: Any, scheduler: Any, latents: LatentDataset, pretrained: dict[str, Any],
                    settings: FinetuneSettings) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    unet = unet.cpu()
    if settings.finetune == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(str(output_dir), unet_lora_layers=lora_layers,
                                                  weight_name=LORA_WEIGHTS_FILE)
    else:
        unet.save_pretrained(output_dir / "unet")
    scheduler.save_pretrained(output_dir / "scheduler")
    write_json(output_dir / MODEL_INFO_FILE, {
        "kind": "stable_diffusion", "pretrained": dict(pretrained), "finetune": settings.finetune,
        "num_classes": len(latents.class_names), "class_names": list(latents.class_names),
        "class_prompts": list(latents.class_prompts), "image_size": latents.image_size, "channels": 3,
        "dataset_hash": latents.dataset_hash,
        **({"caption_pools": caption_pools(latents)} if latents.captioned_per_image else {}),
    })
