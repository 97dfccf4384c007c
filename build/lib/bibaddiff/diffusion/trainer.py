"""The training skeleton both diffusion trainers share (the class-conditional DDPM in ``train``, Stable Diffusion
fine-tuning in ``finetune``).

Training state (trained weights, optimiser, EMA, learning-rate schedule and the random generators) is saved every
``checkpoint_every`` steps into a state folder that is not a declared workflow output, because Snakemake deletes
declared outputs before a job runs. A job killed part-way resumes from the last state and, since the generator
state is restored too, ends with the same weights as an uninterrupted run.

A trainer kind supplies its :class:`Trainer` (what is trained and how one step's loss is computed) and a
``take_step`` function; :func:`run_training` does the rest: resume, the loop with its progress bar and checkpoints,
statistics; :func:`finish_training` saves the model once the last step is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from bibaddiff.errors import BibaddiffError
from bibaddiff.schema import training_defaults
from bibaddiff.utils import select_device, write_json

log = logging.getLogger(__name__)
STATE_FILE = "checkpoint.pt"
MAX_GRAD_NORM = 1.0  # gradient-norm clipping of both trainers; not a config key


def schema_field(kind: str, key: str) -> Any:
    """A dataclass field whose default is ``diffusion.training.<key>``'s schema default for ``kind``, read when an
    instance is made: the schema stays the one source of the trainers' defaults."""
    def default() -> Any:
        return training_defaults(kind)[key]

    return field(default_factory=default)


def check_common_settings(settings: Any, mixed_precisions: tuple[str, ...]) -> None:
    """The checks both trainers' settings need (steps, batch size, checkpoints, dropout, EMA, precision)."""
    if settings.steps is None:
        raise BibaddiffError("diffusion.training.steps is missing; give the number of optimiser steps")
    if settings.steps < 1 or settings.batch_size < 1 or settings.checkpoint_every < 1:
        raise BibaddiffError("diffusion.training.steps, batch_size and checkpoint_every must be at least 1")
    if not 0.0 <= settings.label_dropout < 1.0:
        raise BibaddiffError(f"diffusion.training.label_dropout must lie in [0, 1); got {settings.label_dropout}")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise BibaddiffError(f"diffusion.training.ema_decay must lie in [0, 1); got {settings.ema_decay}")
    if settings.mixed_precision not in mixed_precisions:
        raise BibaddiffError(f"diffusion.training.mixed_precision must be {', '.join(mixed_precisions[:-1])} or "
                             f"{mixed_precisions[-1]}; got {settings.mixed_precision!r}")


def settings_fingerprint(settings: Any, seed: int, **identity: Any) -> str:
    """What makes a saved state this run's: the data (and base model) in ``identity``, the settings and the seed.
    The number of steps is left out, so that a longer run can continue a shorter one."""
    settings_dict = {k: v for k, v in asdict(settings).items() if k not in ("steps", "checkpoint_every")}
    blob = json.dumps({**identity, "settings": settings_dict, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the full learning rate over ``warmup_steps``, then constant. Step i trains at
    (i + 1) / warmup_steps of it, so the first step already learns; diffusers' ``constant_with_warmup`` starts at 0
    (one wasted step) and would change every model trained so far, so it is not used."""
    warmup = max(1, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


class Trainer:
    """One UNet's optimisation: AdamW with warm-up over the trained parameters, gradient clipping and their EMA;
    saving and restoring that state. Subclasses compute each step's loss and hand it to :meth:`optimise`.

    Build it, restore a saved state with :meth:`load_state` if there is one, then :meth:`prepare` and step.
    """

    def __init__(self, unet: torch.nn.Module, trainable: dict[str, torch.nn.Parameter], settings: Any,
                 accelerator: Any, max_grad_norm: float = MAX_GRAD_NORM):
        self.unet, self.trainable, self.settings, self.accelerator = unet, trainable, settings, accelerator
        self.max_grad_norm = max_grad_norm
        self.trained = list(trainable.values())  # built once: every step clips, steps and averages these
        self.optimizer = torch.optim.AdamW(self.trained, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.lr_schedule = warmup_schedule(self.optimizer, settings.warmup_steps)
        # ema_decay 0 turns the EMA off: the trained weights themselves are saved (upstream's CIFAR-10 DDPM has none).
        self.ema = EMAModel(self.trained, decay=settings.ema_decay) if settings.ema_decay > 0 else None

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["unet"].items():
                self.trainable[name].copy_(value)
        self.load_optimisation_state(state)

    def load_optimisation_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu() for name, value in self.trainable.items()}

    def prepare(self) -> None:
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        self.unet.train()

    def optimise(self, loss: torch.Tensor) -> float:
        """Backward, clip, step the optimiser and the schedule, update the EMA (when on); returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.trained, self.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema.step(self.trained)
        return loss.item()


def start_training(device: str, settings: Any, state_dir: str | Path, seed: int) -> tuple[Any, int, torch.Generator]:
    """The accelerator, this process's share of each batch, and its random generator; seeds torch for weight
    initialisation (identical in every process) and creates the state folder."""
    from accelerate import Accelerator

    use_cpu = select_device(device).type == "cpu"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else settings.mixed_precision)
    processes, rank = accelerator.num_processes, accelerator.process_index
    if settings.batch_size % processes:
        raise BibaddiffError(f"diffusion.training.batch_size {settings.batch_size} must be divisible by the "
                             f"{processes} training processes")
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Batches, dropout, noise and timesteps; each process draws its own share of every batch.
    generator = torch.Generator().manual_seed(seed if rank == 0 else process_seed(seed, rank, 0))
    return accelerator, settings.batch_size // processes, generator


def run_training(trainer: Trainer, take_step: Callable[[], float], generator: torch.Generator, settings: Any,
                 state_dir: str | Path, fingerprint: str, seed: int, *, desc: str, stop_after: int | None,
                 progress: bool) -> tuple[dict[str, Any], list[float]]:
    """Resume from a matching saved state, run ``take_step`` (one optimiser step, returning its loss) up to
    ``settings.steps`` (or ``stop_after`` more steps), saving the state every ``checkpoint_every`` steps and at the
    end. Returns the run's statistics and every step's loss."""
    accelerator = trainer.accelerator
    processes = accelerator.num_processes
    state_path = Path(state_dir) / STATE_FILE
    state = matching_state(state_path, fingerprint, processes)
    step, losses = 0, []
    if state is not None:
        trainer.load_state(state)
        step, losses = restore_progress(state, generator, seed, accelerator.process_index)
    trainer.prepare()
    start_step, started = step, time.perf_counter()
    last_step = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    bar = tqdm(total=settings.steps, initial=step, desc=desc, unit="step",
               disable=not progress or not accelerator.is_main_process, mininterval=5)
    while step < last_step:
        losses.append(take_step())
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
    return run_statistics(step, start_step, elapsed, settings, losses, accelerator.device, processes, seed), losses


def finish_training(trainer: Trainer, stats: dict[str, Any], losses: list[float], output_dir: str | Path,
                    save_model: Callable[[], None]) -> dict[str, Any]:
    """After the last step: the main process copies the EMA weights (when on) into the model, ``save_model()``
    writes it and ``training.json`` records the run. A run stopped early saves nothing (its state is saved)."""
    if stats["steps"] < stats["target_steps"]:
        return {**stats, "finished": False}
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        if trainer.ema is not None:
            trainer.ema.copy_to(trainer.trained)
        save_model()
        write_json(Path(output_dir) / "training.json", {**stats, "finished": True, "loss_curve": downsample(losses, 200)})
    accelerator.wait_for_everyone()
    return {**stats, "finished": True}


def matching_state(state_path: Path, fingerprint: str, processes: int) -> dict[str, Any] | None:
    """The saved training state, if one exists for this very run (data, settings, seed and process count)."""
    if not state_path.is_file():
        return None
    try:
        # weights_only: a state file is data, and loading it must never run code that someone put into it.
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # a cut-short file, or one pickled with objects a state never holds
        log.warning("ignoring %s: it cannot be read as a training state (%s); training starts from step 0",
                    state_path, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
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


def save_training_state(path: Path, fingerprint: str, processes: int, step: int, weights: dict[str, torch.Tensor],
                        optimizer, lr_schedule, ema, generator, losses) -> None:
    """Everything a resumed run needs, written atomically: the trained weights, optimiser, schedule, EMA and RNGs."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save({
            "fingerprint": fingerprint, "processes": processes, "step": step, "torch_rng": torch.get_rng_state(),
            "unet": weights, "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(), "ema": None if ema is None else ema.state_dict(),
            "generator": generator.get_state(),
            "losses": losses,
        }, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written state (full disk, kill) must not take the room the next one needs
        raise
    os.replace(tmp, path)


def downsample(values: list[float], points: int) -> list[float]:
    if len(values) <= points:
        return values
    chunks = np.array_split(np.asarray(values), points)
    return [float(chunk.mean()) for chunk in chunks]
