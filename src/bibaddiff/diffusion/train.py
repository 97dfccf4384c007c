"""Resumable training of the class-conditional DDPM.

Training state (weights, optimiser, EMA, learning-rate schedule and the random generator) is saved every
``checkpoint_every`` steps into a state folder that is not a declared workflow output, because Snakemake deletes
declared outputs before a job runs. A job killed part-way resumes from the last state and, since the generator
state is restored too, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from bibaddiff.data import ImageDataset, content_hash
from bibaddiff.diffusion.base import ModelInfo
from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model
from bibaddiff.images import to_model_space
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import select_device, write_json

log = logging.getLogger(__name__)
STATE_FILE = "checkpoint.pt"


def schema_field(kind: str, key: str) -> Any:
    """A dataclass field whose default is ``diffusion.training.<key>``'s schema default for ``kind``, read when an
    instance is made: the schema stays the one source of the trainers' defaults."""
    def default() -> Any:
        from bibaddiff.config import training_defaults

        return training_defaults(kind)[key]

    return field(default_factory=default)


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
        if self.steps is None:
            raise BibaddiffError("diffusion.training.steps is missing; give the number of optimiser steps")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise BibaddiffError("diffusion.training.steps, batch_size and checkpoint_every must be at least 1")
        if not 0.0 <= self.label_dropout < 1.0:
            raise BibaddiffError(f"diffusion.training.label_dropout must lie in [0, 1); got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise BibaddiffError(f"diffusion.training.ema_decay must lie in [0, 1); got {self.ema_decay}")
        if self.mixed_precision not in ("bf16", "no"):
            raise BibaddiffError(f"diffusion.training.mixed_precision must be bf16 or no; got {self.mixed_precision!r}")


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
    processes, torch_device = accelerator.num_processes, accelerator.device

    unet = build_unet(dataset.image_size, dataset.channels, dataset.num_classes, **settings.model)
    scheduler = build_scheduler(settings.num_train_timesteps, settings.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = max(1, settings.warmup_steps)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    ema = EMAModel(unet.parameters(), decay=settings.ema_decay)

    state_path = Path(state_dir) / STATE_FILE
    fingerprint = _fingerprint(dataset, settings, seed)
    state = matching_state(state_path, fingerprint, processes)
    step, losses = 0, []
    if state is not None:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        ema.load_state_dict(state["ema"])
        step, losses = restore_progress(state, generator, seed, accelerator.process_index)

    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.to(torch_device)
    data = to_model_space(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    null_class = dataset.num_classes
    start_step, started = step, time.perf_counter()
    last_step = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    unet.train()
    bar = tqdm(total=settings.steps, initial=step, desc="training", unit="step",
               disable=not progress or not accelerator.is_main_process, mininterval=5)
    while step < last_step:
        index = torch.randint(0, len(data), (local_batch,), generator=generator)
        batch_labels = labels[index].clone()
        batch_labels[torch.rand(local_batch, generator=generator) < settings.label_dropout] = null_class
        clean = data[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, settings.num_train_timesteps, (local_batch,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with accelerator.autocast():
            prediction = unet(noisy.to(torch_device), timesteps.to(torch_device),
                              class_labels=batch_labels.to(torch_device)).sample
        loss = F.mse_loss(prediction.float(), noise.to(torch_device))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(accelerator.unwrap_model(unet).parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step % settings.checkpoint_every == 0 or step == last_step) and accelerator.is_main_process:
            save_training_state(state_path, fingerprint, processes, step, accelerator.unwrap_model(unet).state_dict(),
                                optimizer, lr_schedule, ema, generator, losses)
    bar.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - started
    model = accelerator.unwrap_model(unet)
    stats = {**run_statistics(step, start_step, elapsed, settings, losses, torch_device, processes, seed),
             "parameters": sum(p.numel() for p in model.parameters())}
    if step < settings.steps:
        return {**stats, "finished": False}
    if accelerator.is_main_process:
        ema.copy_to(model.parameters())
        info = ModelInfo(dataset.num_classes, list(dataset.class_names), dataset.image_size, dataset.channels)
        save_model(output_dir, model.cpu(), scheduler, info, extra={"dataset_hash": dataset.manifest.get("content_hash")})
        write_json(Path(output_dir) / "training.json", {**stats, "finished": True, "loss_curve": downsample(losses, 200)})
    accelerator.wait_for_everyone()
    return {**stats, "finished": True}


def start_training(device: str, settings: Any, state_dir: str | Path, seed: int) -> tuple[Any, int, torch.Generator]:
    """The accelerator, this process's share of each batch, and its random generator; seeds torch for weight
    initialisation (identical in every process) and creates the state folder."""
    from accelerate import Accelerator

    use_cpu = select_device(device).type == "cpu"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else settings.mixed_precision)
    processes, rank = accelerator.num_processes, accelerator.process_index
    if settings.batch_size % processes:
        raise BibaddiffError(f"diffusion.training.batch_size {settings.batch_size} must be divisible by the {processes} training processes")
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Batches, dropout, noise and timesteps; each process draws its own share of every batch.
    generator = torch.Generator().manual_seed(seed if rank == 0 else process_seed(seed, rank, 0))
    return accelerator, settings.batch_size // processes, generator


def matching_state(state_path: Path, fingerprint: str, processes: int) -> dict[str, Any] | None:
    """The saved training state, if one exists for this very run (data, settings, seed and process count)."""
    if not state_path.is_file():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") == fingerprint and state.get("processes", 1) == processes:
        log.info("resuming from step %d (%s)", state["step"], state_path)
        return state
    log.warning("ignoring %s: it was written for other data, base model, seed, settings or process count", state_path)
    return None


def restore_progress(state: dict[str, Any], generator: torch.Generator, seed: int, rank: int) -> tuple[int, list[float]]:
    """Step, losses and random generators of a saved state. Only the first process's generator is saved; the
    others restart from a seed tied to the step."""
    step = int(state["step"])
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["generator"]) if rank == 0 else generator.manual_seed(process_seed(seed, rank, step))
    return step, list(state["losses"])


def run_statistics(step: int, start_step: int, elapsed: float, settings: Any, losses: list[float],
                   device: torch.device, processes: int, seed: int) -> dict[str, Any]:
    """What a training run reports in training.json, for either kind of model."""
    return {
        "steps": step,
        "target_steps": settings.steps,
        "steps_this_run": step - start_step,
        "seconds_this_run": elapsed,
        "steps_per_second": (step - start_step) / elapsed if elapsed > 0 and step > start_step else None,
        "images_per_second": (step - start_step) * settings.batch_size / elapsed if elapsed > 0 else None,
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "device": str(device),
        "processes": processes,
        "threads": torch.get_num_threads(),
        "seed": seed,
        "settings": asdict(settings),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }


def process_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _fingerprint(dataset: ImageDataset, settings: TrainSettings, seed: int) -> str:
    # The number of steps is left out, so that a longer run can continue a shorter one.
    settings_dict = {k: v for k, v in asdict(settings).items() if k not in ("steps", "checkpoint_every")}
    blob = json.dumps({"data": content_hash(dataset), "settings": settings_dict, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_training_state(path: Path, fingerprint: str, processes: int, step: int, weights: dict[str, torch.Tensor],
                        optimizer, lr_schedule, ema, generator, losses) -> None:
    """Everything a resumed run needs, written atomically: the trained weights, optimiser, schedule, EMA and RNGs."""
    tmp = path.with_suffix(".tmp")
    torch.save({
        "fingerprint": fingerprint, "processes": processes, "step": step, "torch_rng": torch.get_rng_state(),
        "unet": weights, "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(), "ema": ema.state_dict(), "generator": generator.get_state(),
        "losses": losses,
    }, tmp)
    os.replace(tmp, path)


def downsample(values: list[float], points: int) -> list[float]:
    if len(values) <= points:
        return values
    chunks = np.array_split(np.asarray(values), points)
    return [float(chunk.mean()) for chunk in chunks]
