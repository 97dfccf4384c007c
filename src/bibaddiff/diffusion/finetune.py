"""Resumable fine-tuning of a Stable Diffusion UNet on cached VAE latents and their captions.

The VAE and the text encoder stay frozen; the UNet is trained in full or through LoRA adapters (peft) with the
standard noise-prediction loss (velocity for v-prediction models). Resuming, checkpoints and process seeds work as
in :mod:`bibaddiff.diffusion.train`: a killed job continues from its last state and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from bibaddiff.diffusion.base import MODEL_INFO_FILE
from bibaddiff.diffusion.stable import LORA_WEIGHTS_FILE, LatentDataset, caption_pools, load_components
from bibaddiff.diffusion.train import (STATE_FILE, downsample, matching_state, restore_progress, run_statistics,
                                      save_training_state, schema_field, start_training)
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
    max_grad_norm: float = 1.0  # not a config key: gradient-norm clipping, as the DDPM trainer's fixed 1.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FinetuneSettings":
        known = set(cls.__dataclass_fields__)
        settings = cls(**{k: v for k, v in config.items() if k in known})
        settings.check()
        return settings

    def check(self) -> None:
        if self.steps is None:
            raise BibaddiffError("diffusion.training.steps is missing; give the number of optimiser steps")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise BibaddiffError("diffusion.training.steps, batch_size and checkpoint_every must be at least 1")
        if self.finetune not in FINETUNE_METHODS:
            raise BibaddiffError(f"diffusion.training.finetune must be one of {', '.join(FINETUNE_METHODS)}; got {self.finetune!r}")
        if self.lora_rank < 1:
            raise BibaddiffError(f"diffusion.training.lora_rank must be at least 1; got {self.lora_rank}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise BibaddiffError(f"diffusion.training.label_dropout must lie in [0, 1); got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise BibaddiffError(f"diffusion.training.ema_decay must lie in [0, 1); got {self.ema_decay}")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise BibaddiffError(f"diffusion.training.mixed_precision must be bf16, fp16 or no; got {self.mixed_precision!r}")


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
    processes, torch_device = accelerator.num_processes, accelerator.device

    components = load_components(pretrained)
    components.latent_size(latents.image_size)
    scheduler = components.scheduler
    text_encoder = components.text_encoder.to(torch_device).eval().requires_grad_(False)
    del components.vae  # latents are cached: the VAE is not needed here
    trainer = UNetTrainer(components.unet, scheduler, settings, accelerator)  # LoRA initialised from torch's seed

    fingerprint = _fingerprint(latents, pretrained, settings, seed)
    state_path = Path(state_dir) / STATE_FILE
    state = matching_state(state_path, fingerprint, processes)
    step, losses = 0, []
    if state is not None:
        trainer.load_state(state)
        step, losses = restore_progress(state, generator, seed, accelerator.process_index)

    trainer.prepare()
    texts = list(latents.texts)
    start_step, started = step, time.perf_counter()
    last_step = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    bar = tqdm(total=settings.steps, initial=step, desc=f"fine-tuning ({settings.finetune})", unit="step",
               disable=not progress or not accelerator.is_main_process, mininterval=5)
    while step < last_step:
        index = torch.randint(0, len(latents), (local_batch,), generator=generator)
        clean = latents.mean[index].float() + latents.std[index].float() * torch.randn(
            latents.mean[index].shape, generator=generator)
        dropped = (torch.rand(local_batch, generator=generator) < settings.label_dropout).tolist()
        captions = ["" if drop else texts[i] for i, drop in zip(index.tolist(), dropped)]
        hidden = encode_captions(components.tokenizer, text_encoder, captions, torch_device)
        losses.append(trainer.step(clean, hidden, generator))
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step % settings.checkpoint_every == 0 or step == last_step) and accelerator.is_main_process:
            save_training_state(state_path, fingerprint, processes, step, trainer.weights(), trainer.optimizer,
                                trainer.lr_schedule, trainer.ema, generator, losses)
    bar.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - started
    model = accelerator.unwrap_model(trainer.unet)
    stats = {**run_statistics(step, start_step, elapsed, settings, losses, torch_device, processes, seed),
             "trained_parameters": sum(p.numel() for p in trainer.trainable.values())}
    if step < settings.steps:
        return {**stats, "finished": False}
    if accelerator.is_main_process:
        trainer.ema.copy_to(list(trainer.trainable.values()))
        _save_finetuned(Path(output_dir), model, scheduler, latents, pretrained, settings)
        write_json(Path(output_dir) / "training.json", {**stats, "finished": True, "loss_curve": downsample(losses, 200)})
    accelerator.wait_for_everyone()
    return {**stats, "finished": True}


class UNetTrainer:
    """The UNet's optimisation step: noise and timesteps, the noise-prediction (or velocity) loss, backward,
    gradient clipping, AdamW with warm-up, and EMA of the trained parameters (all of them, or the LoRA adapters).

    Build it, restore a saved state with :meth:`load_state` if there is one, then :meth:`prepare` and :meth:`step`.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, settings: FinetuneSettings, accelerator: Any):
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in ("epsilon", "v_prediction"):
            raise BibaddiffError(f"cannot fine-tune a model with prediction_type {prediction_type!r}")
        self.unet, self.scheduler, self.settings, self.accelerator = unet, scheduler, settings, accelerator
        self.trainable = make_trainable(unet, settings)
        if settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay)
        warmup = max(1, settings.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.ema = EMAModel(list(self.trainable.values()), decay=settings.ema_decay)

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["unet"].items():
                self.trainable[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.ema.load_state_dict(state["ema"])

    def prepare(self) -> None:
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)
        self.ema.to(self.accelerator.device)
        self.unet.train()

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu() for name, value in self.trainable.items()}

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
        loss = F.mse_loss(prediction.float(), target.to(device).float())
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        trained = list(self.trainable.values())
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(trained, self.settings.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.step(trained)
        return loss.item()


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


@torch.no_grad()
def encode_captions(tokenizer: Any, text_encoder: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


def _fingerprint(latents: LatentDataset, pretrained: dict[str, Any], settings: FinetuneSettings, seed: int) -> str:
    # The number of steps is left out, so that a longer run can continue a shorter one.
    settings_dict = {k: v for k, v in asdict(settings).items() if k not in ("steps", "checkpoint_every")}
    blob = json.dumps({"data": latents.dataset_hash, "pretrained": pretrained, "settings": settings_dict,
                       "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


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
