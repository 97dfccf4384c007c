"""Resumable training of the class-conditional DDPM (resuming, checkpoints and statistics: ``trainer``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bibaddiff.data import ImageDataset, content_hash
from bibaddiff.diffusion.base import ModelInfo
from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model
from bibaddiff.diffusion.trainer import (Trainer, check_common_settings, finish_training, run_training, schema_field,
                                         settings_fingerprint, start_training)
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import to_model_space

@dataclass
class TrainSettings:
    steps: int | None = None  # required by check(): the schema has no default for it
    batch_size: int = schema_field("ddpm", "batch_size")
    learning_rate: float = schema_field("ddpm", "learning_rate")
    warmup_steps: int = schema_field("ddpm", "warmup_steps")
    weight_decay: float = schema_field("ddpm", "weight_decay")
    ema_decay: float = schema_field("ddpm", "ema_decay")
    label_dropout: float = schema_field("ddpm", "label_dropout")
    num_train_timesteps: int = schema_field("ddpm", "num_train_timesteps")
    beta_schedule: str = schema_field("ddpm", "beta_schedule")
    checkpoint_every: int = schema_field("ddpm", "checkpoint_every")
    mixed_precision: str = schema_field("ddpm", "mixed_precision")
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any], model: dict[str, Any] | None = None) -> "TrainSettings":
        known = {name for name in cls.__dataclass_fields__ if name != "model"}
        settings = cls(**{k: v for k, v in config.items() if k in known}, model=dict(model or {}))
        settings.check()
        return settings

    def check(self) -> None:
        check_common_settings(self, ("bf16", "no"))


def train_ddpm(dataset: ImageDataset, output_dir: str | Path, state_dir: str | Path, settings: TrainSettings,
               seed: int, device: str = "auto", stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume training of) a DDPM on ``dataset``; saves the EMA model to ``output_dir``.

    Runs in one process, or data-parallel under ``accelerate launch`` (each process draws
    ``batch_size / num_processes`` images per step). ``stop_after`` ends the run after that many steps of this
    call (the state is saved), which is how tests simulate a preempted job. Returns training statistics, also
    written to ``training.json``.
    """
    if len(dataset) == 0:
        raise BibaddiffError("cannot train a diffusion model on an empty dataset")
    accelerator, local_batch, generator = start_training(device, settings, state_dir, seed)
    unet = build_unet(dataset.image_size, dataset.channels, dataset.num_classes, **settings.model)
    scheduler = build_scheduler(settings.num_train_timesteps, settings.beta_schedule)
    trainer = DDPMTrainer(unet, scheduler, settings, accelerator)
    # Kept as uint8 and converted one batch at a time: the whole set as float32 is 4x its size (at 256 px, 9,469
    # images held 18 GB at the conversion's peak); a batch's values are the same either way.
    data, labels = torch.from_numpy(np.ascontiguousarray(dataset.images)), torch.from_numpy(dataset.labels)

    def take_step() -> float:
        return trainer.step(data, labels, dataset.num_classes, local_batch, generator)

    fingerprint = settings_fingerprint(settings, seed, data=content_hash(dataset))
    stats, losses = run_training(trainer, take_step, generator, settings, state_dir, fingerprint, seed,
                                 desc="training", stop_after=stop_after, progress=progress)
    model = accelerator.unwrap_model(trainer.unet)
    stats["parameters"] = sum(p.numel() for p in model.parameters())
    info = ModelInfo(dataset.num_classes, list(dataset.class_names), dataset.image_size, dataset.channels)
    return finish_training(trainer, stats, losses, output_dir, lambda: save_model(
        output_dir, model.cpu(), scheduler, info, extra={"dataset_hash": dataset.manifest.get("content_hash")}))


class DDPMTrainer(Trainer):
    """The DDPM's step: a batch with labels dropped to the null class at ``label_dropout``, noise and timesteps,
    the noise-prediction loss. Every parameter is trained; the saved state holds the UNet's whole state dict."""

    def __init__(self, unet: torch.nn.Module, scheduler: Any, settings: TrainSettings, accelerator: Any):
        super().__init__(unet, dict(unet.named_parameters()), settings, accelerator)
        self.scheduler = scheduler

    def load_state(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.load_optimisation_state(state)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.accelerator.unwrap_model(self.unet).state_dict()

    def step(self, images: torch.Tensor, labels: torch.Tensor, null_class: int, batch_size: int,
             generator: torch.Generator) -> float:
        """One step on a batch drawn from ``images`` (uint8, N x H x W x C) and their ``labels``."""
        device, settings = self.accelerator.device, self.settings
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch_labels = labels[index].clone()
        batch_labels[torch.rand(batch_size, generator=generator) < settings.label_dropout] = null_class
        clean = to_model_space(images[index].numpy())
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, settings.num_train_timesteps, (batch_size,), generator=generator)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        with self.accelerator.autocast():
            prediction = self.unet(noisy.to(device), timesteps.to(device), class_labels=batch_labels.to(device)).sample
        return self.optimise(F.mse_loss(prediction.float(), noise.to(device)))
