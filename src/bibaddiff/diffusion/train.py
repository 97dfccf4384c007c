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
from bibaddiff.diffusion.model import ModelInfo, build_scheduler, build_unet, save_model
from bibaddiff.diffusion.sampling import to_model_space
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import select_device, write_json

log = logging.getLogger(__name__)
STATE_FILE = "checkpoint.pt"


@dataclass
class TrainSettings:
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.998
    label_dropout: float = 0.15
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    checkpoint_every: int = 500
    mixed_precision: str = "bf16"
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any], model: dict[str, Any] | None = None) -> "TrainSettings":
        known = {name for name in cls.__dataclass_fields__ if name != "model"}
        settings = cls(**{k: v for k, v in config.items() if k in known}, model=dict(model or {}))
        settings.check()
        return settings

    def check(self) -> None:
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

    ``stop_after`` ends the run after that many steps of this call (the state is saved), which is how tests
    and users simulate a preempted job. Returns training statistics, also written to ``training.json``.
    """
    if len(dataset) == 0:
        raise BibaddiffError("cannot train a diffusion model on an empty dataset")
    torch_device = select_device(device)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # weight initialisation

    unet = build_unet(dataset.image_size, dataset.channels, dataset.num_classes, **settings.model).to(torch_device)
    scheduler = build_scheduler(settings.num_train_timesteps, settings.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = max(1, settings.warmup_steps)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    ema = EMAModel(unet.parameters(), decay=settings.ema_decay)
    ema.to(torch_device)
    generator = torch.Generator().manual_seed(seed)  # batches, label dropout, noise and timesteps

    fingerprint = _fingerprint(dataset, settings, seed)
    state_path = state_dir / STATE_FILE
    step, losses = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location=torch_device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            unet.load_state_dict(state["unet"])
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["lr_schedule"])
            ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            step, losses = int(state["step"]), list(state["losses"])
            log.info("resuming from step %d of %d (%s)", step, settings.steps, state_path)
        else:
            log.warning("ignoring %s: it was written for another dataset, seed or setting", state_path)

    data = to_model_space(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    null_class = dataset.num_classes
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if torch_device.type == "cuda" and settings.mixed_precision == "bf16"
                else torch.autocast("cpu", enabled=False))
    start_step, started = step, time.perf_counter()
    last_step = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    unet.train()
    bar = tqdm(total=settings.steps, initial=step, desc="training", unit="step", disable=not progress, mininterval=5)
    while step < last_step:
        index = torch.randint(0, len(data), (settings.batch_size,), generator=generator)
        batch_labels = labels[index].clone()
        batch_labels[torch.rand(settings.batch_size, generator=generator) < settings.label_dropout] = null_class
        clean = data[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, settings.num_train_timesteps, (settings.batch_size,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with autocast:
            prediction = unet(noisy.to(torch_device), timesteps.to(torch_device),
                              class_labels=batch_labels.to(torch_device)).sample
        loss = F.mse_loss(prediction.float(), noise.to(torch_device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % settings.checkpoint_every == 0 or step == last_step:
            _save_state(state_path, fingerprint, step, unet, optimizer, lr_schedule, ema, generator, losses)
    bar.close()
    elapsed = time.perf_counter() - started
    stats = {
        "steps": step,
        "target_steps": settings.steps,
        "steps_this_run": step - start_step,
        "seconds_this_run": elapsed,
        "steps_per_second": (step - start_step) / elapsed if elapsed > 0 and step > start_step else None,
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "device": str(torch_device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "settings": asdict(settings),
        "parameters": sum(p.numel() for p in unet.parameters()),
    }
    if step < settings.steps:
        return {**stats, "finished": False}
    ema.copy_to(unet.parameters())
    info = ModelInfo(dataset.num_classes, list(dataset.class_names), dataset.image_size, dataset.channels)
    save_model(output_dir, unet.cpu(), scheduler, info, extra={"dataset_hash": dataset.manifest.get("content_hash")})
    stats["finished"] = True
    write_json(Path(output_dir) / "training.json", {**stats, "loss_curve": _downsample(losses, 200)})
    return stats


def _fingerprint(dataset: ImageDataset, settings: TrainSettings, seed: int) -> str:
    # The number of steps is left out, so that a longer run can continue a shorter one.
    settings_dict = {k: v for k, v in asdict(settings).items() if k not in ("steps", "checkpoint_every")}
    blob = json.dumps({"data": content_hash(dataset), "settings": settings_dict, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_state(path: Path, fingerprint: str, step: int, unet, optimizer, lr_schedule, ema, generator, losses) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({
        "fingerprint": fingerprint, "step": step, "unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(), "ema": ema.state_dict(), "generator": generator.get_state(),
        "losses": losses,
    }, tmp)
    os.replace(tmp, path)


def _downsample(values: list[float], points: int) -> list[float]:
    if len(values) <= points:
        return values
    chunks = np.array_split(np.asarray(values), points)
    return [float(chunk.mean()) for chunk in chunks]
