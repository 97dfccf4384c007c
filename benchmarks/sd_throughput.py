#!/usr/bin/env python
"""Fine-tuning and generation throughput of Stable Diffusion 1.x, measured with random weights built from configs.

Nothing is downloaded: the UNet, VAE and CLIP text encoder are built from the SD 1.x configurations (or from tiny
ones with ``--size tiny``, to check this script on a CPU). Speed and memory do not depend on the weights' values.

Training variants time the loop body of :func:`bibaddiff.diffusion.finetune.finetune_stable_diffusion` (frozen fp32
text encoder on token ids, UNet under accelerate's bf16 autocast, MSE noise loss, AdamW, gradient clipping, EMA),
with the library's own ``UNetTrainer`` step (full UNet or peft LoRA). With cached
latents each step draws ``mean + std * noise`` from stored VAE latents, as the library does; without, each step
encodes 512 px images with the VAE first, which is what caching saves. Generation runs the workflow's
:func:`bibaddiff.diffusion.sampling.generate_images` (DDIM through ``sample_ddim``, conditional and unconditional
halves in one UNet call) on a :class:`bibaddiff.diffusion.stable.PromptConditionedUNet`, decoding with the VAE as
:func:`bibaddiff.diffusion.stable.load_text_to_image_model` does.

    python benchmarks/sd_throughput.py --size full --device cuda --out benchmarks/sd_throughput_h200.json
    python benchmarks/sd_throughput.py --size tiny --device cpu --out /tmp/sd_bench.json
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

# generate_images shows a progress bar per batch; in a benchmark's output it only buries the table.
os.environ.setdefault("TQDM_DISABLE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
if (REPO_ROOT / "src" / "bibaddiff").is_dir():
    # Measure the library of this working tree, even where another copy of bibaddiff is installed (or none).
    sys.path.insert(0, str(REPO_ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bibaddiff.diffusion.finetune import FinetuneSettings, UNetTrainer  # noqa: E402
from bibaddiff.diffusion.sampling import generate_images  # noqa: E402
from bibaddiff.images import to_model_space, to_uint8  # noqa: E402
from bibaddiff.diffusion.stable import PromptConditionedUNet  # noqa: E402
from bibaddiff.utils import select_device, set_threads, write_json  # noqa: E402

GIB = 2 ** 30
GUIDANCE_SCALE = 7.5  # diffusers' default for Stable Diffusion; any scale other than 0 and 1 costs the same


# --------------------------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class ModelShapes:
    """Constructor arguments of the three networks, and the pixel size they are run at."""

    description: str
    image_size: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD1_NOISE_SCHEDULE))

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae["latent_channels"])

    @property
    def prompt_length(self) -> int:
        return int(self.text_encoder["max_position_embeddings"])


# Stable Diffusion 1.x's training noise schedule, as in its scheduler/ folder.
SD1_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)

SD1_SHAPES = ModelShapes(
    description="Stable Diffusion 1.x at 512 px",
    image_size=512,
    unet=dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
        scaling_factor=0.18215,
    ),
    # CLIP ViT-L/14's text tower.
    text_encoder=dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=1,
    ),
)

# The shapes of bibaddiff.diffusion.tiny's test pipeline: every code path, a CPU second per variant.
TINY_SHAPES = ModelShapes(
    description="tiny test configs at 32 px",
    image_size=32,
    unet=dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=32,
    ),
    text_encoder=dict(
        vocab_size=190, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=16, bos_token_id=188, eos_token_id=189, pad_token_id=189,
    ),
)

SHAPES = {"full": SD1_SHAPES, "tiny": TINY_SHAPES}


def build_unet(shapes: ModelShapes, device: torch.device) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    # Built directly on the device: random initialisation of 860M parameters on a CPU would take longer than
    # the steps that are timed.
    with torch.device(device):
        return UNet2DConditionModel(**shapes.unet)


def build_vae(shapes: ModelShapes, device: torch.device) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**shapes.vae)


def build_text_encoder(shapes: ModelShapes, device: torch.device) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**shapes.text_encoder))


def build_noise_schedule(shapes: ModelShapes) -> Any:
    from diffusers import DDPMScheduler

    # from_config, as load_components does, so that sample_ddim's DDIM sees the same configuration.
    return DDPMScheduler.from_config(shapes.scheduler)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def empty_prompt_ids(shapes: ModelShapes) -> torch.Tensor:
    """What CLIP's tokenizer makes of "": start token, then end tokens up to the padded length."""
    ids = torch.full((1, shapes.prompt_length), shapes.text_encoder["eos_token_id"], dtype=torch.long)
    ids[0, 0] = shapes.text_encoder["bos_token_id"]
    return ids


# --------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"peak_memory_bytes": None, "peak_memory_gib": None, "peak_reserved_bytes": None}
    allocated = torch.cuda.max_memory_allocated(device)
    return {"peak_memory_bytes": allocated, "peak_memory_gib": round(allocated / GIB, 2),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def release_memory(device: torch.device, accelerator: Any | None = None) -> None:
    """Drop every reference a finished variant left behind, so that the next one's peak is its own."""
    if accelerator is not None:
        accelerator.free_memory()  # accelerate keeps the prepared model and optimizer alive otherwise
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def step_statistics(durations: list[float], warmup: int, images_per_step: int) -> dict[str, Any]:
    timed = durations[warmup:]
    total = sum(timed)
    return {
        "warmup_step_seconds": [round(d, 4) for d in durations[:warmup]],
        "timed_steps": len(timed),
        "timed_seconds": total,
        "step_seconds_median": statistics.median(timed),
        "step_seconds_min": min(timed),
        "step_seconds_max": max(timed),
        "steps_per_second": len(timed) / total,
        "images_per_second": len(timed) * images_per_step / total,
    }


# --------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingVariant:
    name: str
    finetune: str  # "full" or "lora", as FinetuneSettings.finetune
    gradient_checkpointing: bool
    cached_latents: bool


TRAINING_VARIANTS = (
    TrainingVariant("full_cached", "full", gradient_checkpointing=False, cached_latents=True),
    TrainingVariant("full_cached_gc", "full", gradient_checkpointing=True, cached_latents=True),
    TrainingVariant("full_vae", "full", gradient_checkpointing=False, cached_latents=False),
    TrainingVariant("full_vae_gc", "full", gradient_checkpointing=True, cached_latents=False),
    # The library's LoRA path as a workflow runs it: cached latents, no checkpointing.
    TrainingVariant("lora_cached", "lora", gradient_checkpointing=False, cached_latents=True),
)
GENERATION_VARIANT = "generation"
VARIANT_NAMES = tuple(v.name for v in TRAINING_VARIANTS) + (GENERATION_VARIANT,)


def measure_training(variant: TrainingVariant, shapes: ModelShapes, options: argparse.Namespace, accelerator: Any,
                     device: torch.device, parameter_counts: dict[str, int]) -> dict[str, Any]:

    # The library's defaults (learning rate, weight decay, EMA decay, clipping, LoRA rank 4 on to_q/k/v/out.0).
    settings = FinetuneSettings(finetune=variant.finetune, gradient_checkpointing=variant.gradient_checkpointing,
                                batch_size=options.batch_size, steps=options.warmup + options.steps)
    settings.check()
    batch = settings.batch_size
    setup_started = time.perf_counter()
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)

    unet = build_unet(shapes, device)
    text_encoder = build_text_encoder(shapes, device).eval().requires_grad_(False)
    parameter_counts.setdefault("unet", count_parameters(unet))
    parameter_counts.setdefault("text_encoder", count_parameters(text_encoder))
    scheduler = build_noise_schedule(shapes)
    # The library's own step: noise, loss, backward, clipping, AdamW, EMA (full UNet or its LoRA adapters).
    trainer = UNetTrainer(unet, scheduler, settings, accelerator)
    trainer.prepare()

    # A pool several batches deep, so that batches are gathered by index as the library does, not reused whole.
    pool_size = 4 * batch
    latent_shape = (pool_size, shapes.latent_channels, shapes.latent_size, shapes.latent_size)
    if variant.cached_latents:
        latent_mean = torch.randn(latent_shape, generator=generator)
        latent_std = torch.full(latent_shape, 0.05)
    else:
        vae = build_vae(shapes, device).eval().requires_grad_(False)
        parameter_counts.setdefault("vae", count_parameters(vae))
        scale = float(vae.config.scaling_factor)
        pixel_pool = np.random.default_rng(options.seed).integers(
            0, 256, (pool_size, shapes.image_size, shapes.image_size, 3), dtype=np.uint8)

        @torch.no_grad()
        def encode_in_step(index: torch.Tensor) -> torch.Tensor:
            # encode_latents' computation, run per step; under the step's autocast, as a per-step VAE would be.
            pixels = to_model_space(pixel_pool[index.numpy()]).to(device, vae.dtype)
            with accelerator.autocast():
                distribution = vae.encode(pixels).latent_dist
            mean, std = distribution.mean.float(), distribution.std.float()
            return (mean + std * torch.randn_like(mean)) * scale

    vocab_size = shapes.text_encoder["vocab_size"]

    def training_step() -> float:
        # finetune_stable_diffusion's loop body; token ids stand in for the tokenizer's output.
        index = torch.randint(0, pool_size, (batch,), generator=generator)
        if variant.cached_latents:
            clean = latent_mean[index].float() + latent_std[index].float() * torch.randn(
                latent_mean[index].shape, generator=generator)
        else:
            clean = encode_in_step(index)
        token_ids = torch.randint(0, vocab_size, (batch, shapes.prompt_length), generator=generator)
        with torch.no_grad():
            hidden = text_encoder(token_ids.to(device))[0]
        return trainer.step(clean, hidden, generator)

    setup_seconds = time.perf_counter() - setup_started
    durations, losses = [], []
    for _ in range(settings.steps):
        synchronize(device)
        started = time.perf_counter()
        losses.append(training_step())
        synchronize(device)
        durations.append(time.perf_counter() - started)
    return {
        "kind": "training",
        "status": "ok",
        "finetune": variant.finetune,
        "lora_rank": settings.lora_rank if variant.finetune == "lora" else None,
        "gradient_checkpointing": variant.gradient_checkpointing,
        "latents": "cached" if variant.cached_latents else "vae_encode_per_step",
        "batch_size": batch,
        "trained_parameters": sum(p.numel() for p in trainer.trainable.values()),
        "setup_seconds": setup_seconds,
        **step_statistics(durations, options.warmup, batch),
        "last_loss": losses[-1],
        "losses_finite": bool(np.isfinite(losses).all()),
        **peak_memory(device),
    }


# --------------------------------------------------------------------------------------------- generation


def measure_generation(shapes: ModelShapes, options: argparse.Namespace, device: torch.device,
                       parameter_counts: dict[str, int]) -> dict[str, Any]:
    setup_started = time.perf_counter()
    torch.manual_seed(options.seed)
    unet = build_unet(shapes, device).eval().requires_grad_(False)
    vae = build_vae(shapes, device).eval().requires_grad_(False)
    text_encoder = build_text_encoder(shapes, device).eval().requires_grad_(False)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        parameter_counts.setdefault(name, count_parameters(module))

    # One prompt (class 0) and the empty prompt (the null class), embedded once as load_text_to_image_model does;
    # the text encoder is not needed after that.
    prompt_ids = torch.randint(0, shapes.text_encoder["vocab_size"], (1, shapes.prompt_length),
                               generator=torch.Generator().manual_seed(options.seed))
    with torch.no_grad():
        embeddings = text_encoder(torch.cat([prompt_ids, empty_prompt_ids(shapes)]).to(device))[0].float()
    del text_encoder
    null_class = 1
    denoiser = PromptConditionedUNet(unet, embeddings).to(device)
    scheduler = build_noise_schedule(shapes)
    scale = float(vae.config.scaling_factor)
    decode_seconds: list[float] = []

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> np.ndarray:
        # load_text_to_image_model's decode, timed to split the VAE's share from the UNet's.
        synchronize(device)
        started = time.perf_counter()
        images = to_uint8(vae.decode(latents.to(device, vae.dtype) / scale).sample)
        decode_seconds.append(time.perf_counter() - started)
        return images

    batch_size = options.gen_batch_size or options.gen_images

    def generate(ddim_steps: int) -> np.ndarray:
        return generate_images(denoiser, scheduler, null_class, condition=0, guidance_scale=GUIDANCE_SCALE,
                               num_images=options.gen_images, num_inference_steps=ddim_steps, seed=options.seed,
                               batch_size=batch_size,
                               sample_shape=(shapes.latent_channels, shapes.latent_size, shapes.latent_size),
                               decode=decode, x0_clipping="none")

    setup_seconds = time.perf_counter() - setup_started
    warmup_seconds = None
    if options.warmup > 0:
        # Two DDIM steps meet every kernel and shape of the timed run (UNet at 2x batch, VAE decode).
        started = time.perf_counter()
        generate(2)
        synchronize(device)
        warmup_seconds = time.perf_counter() - started
        decode_seconds.clear()
    synchronize(device)
    started = time.perf_counter()
    images = generate(options.gen_steps)
    synchronize(device)
    seconds = time.perf_counter() - started
    decoding = sum(decode_seconds)
    return {
        "kind": "generation",
        "status": "ok",
        "sampler": "DDIM (eta 0) through bibaddiff.diffusion.sampling.generate_images",
        "ddim_steps": options.gen_steps,
        "guidance_scale": GUIDANCE_SCALE,
        "images": int(len(images)),
        "batch_size": batch_size,
        "unet_batch": 2 * batch_size,  # conditional and unconditional halves in one call
        "image_shape": list(images.shape[1:]),
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmup_seconds,
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "seconds_per_image": seconds / len(images),
        "vae_decode_seconds": decoding,
        "vae_decode_share": decoding / seconds,
        "unet_steps_per_second": options.gen_steps * -(-len(images) // batch_size) / (seconds - decoding),
        **peak_memory(device),
    }


# --------------------------------------------------------------------------------------------- running


def run_variant(name: str, measure: Callable[[], dict[str, Any]], device: torch.device,
                accelerator: Any | None) -> dict[str, Any]:
    """One variant's results; running out of memory (or any failure) is recorded, and the next variant still runs."""
    release_memory(device, accelerator)
    memory_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    started = time.perf_counter()
    try:
        result = measure()
    except torch.cuda.OutOfMemoryError:
        result = {"status": "OOM", **peak_memory(device)}
    except Exception as error:  # noqa: BLE001 -- on a borrowed GPU, one broken variant must not cost the others
        result = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    # Outside the except blocks, where the traceback (and every tensor its frames hold) has been let go.
    release_memory(device, accelerator)
    result["memory_allocated_before_bytes"] = memory_before
    result["wall_seconds"] = time.perf_counter() - started
    summary = result["status"] if result["status"] != "ok" else f"{result['images_per_second']:.3g} images/s"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {summary}", flush=True)
    if result["status"] == "error":
        print(result["traceback"], file=sys.stderr, flush=True)
    return result


def environment(device: torch.device) -> dict[str, Any]:
    import accelerate
    import diffusers
    import peft
    import transformers

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python"] + sys.argv),
        "python_executable": sys.executable,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__, "numpy": np.__version__},
        "git_commit": _git_commit(),
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update({
            "device_name": properties.name,
            "device_memory_bytes": properties.total_memory,
            "device_capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    else:
        info["device_name"] = info["cpu"]
    return info


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None  # a copy of the tree without its .git folder


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_only(shapes: ModelShapes, device: torch.device) -> dict[str, Any]:
    """Build each network once and count its parameters: a check of the configs that runs no step."""
    counts, seconds = {}, {}
    for name, build in (("unet", build_unet), ("vae", build_vae), ("text_encoder", build_text_encoder)):
        started = time.perf_counter()
        module = build(shapes, device)
        seconds[name] = time.perf_counter() - started
        counts[name] = count_parameters(module)
        del module
        release_memory(device)
    return {"parameters": counts, "build_seconds": seconds}


# --------------------------------------------------------------------------------------------- reporting


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _millions(count: int | None) -> str:
    if count is None:
        return "n/a"
    # The tiny configs have thousands of parameters, where "0.0 M" would say nothing.
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count / 1e3:.1f} k"


def _memory(result: dict[str, Any]) -> str:
    return "n/a (CPU)" if result.get("peak_memory_gib") is None else f"{result['peak_memory_gib']:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k != "numpy")
    lines = [
        f"Measured {env['date']} on {env['device_name']} ({report['precision']}), {report['shapes']}, random weights; "
        f"{versions}.",
        f"Command: `{env['command']}`" + (f" at commit `{env['git_commit'][:10]}`" if env.get("git_commit") else ""),
        "",
    ]
    parameters = report.get("parameters", {})
    if parameters:
        lines.append("Parameters: " + ", ".join(f"{name} {_millions(count)}" for name, count in parameters.items())
                     + ".")
        lines.append("")
    results = report.get("results", {})
    training = [(name, r) for name, r in results.items() if name != GENERATION_VARIANT]
    if training:
        lines += [
            "| Fine-tuning | Gradient checkpointing | Latents | Batch | Images/s | Median s/step "
            "| Peak GPU memory (GiB) |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for name, result in training:
            variant = next(v for v in TRAINING_VARIANTS if v.name == name)
            method = "full UNet" if variant.finetune == "full" else f"LoRA r{FinetuneSettings().lora_rank}"
            latents = "cached" if variant.cached_latents else "VAE encode per step"
            checkpointing = "yes" if variant.gradient_checkpointing else "no"
            if result["status"] == "ok":
                speed, step, memory = (_number(result["images_per_second"]),
                                       _number(result["step_seconds_median"]), _memory(result))
            else:
                speed = step = memory = result["status"]
            lines.append(f"| {method} | {checkpointing} | {latents} | {report['batch_size']} | {speed} | {step} "
                         f"| {memory} |")
        lines.append("")
    generation = results.get(GENERATION_VARIANT)
    if generation:
        lines += [
            "| Generation | Images (batch) | Images/s | s/image | VAE decode share | Peak GPU memory (GiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        label = f"DDIM {report['gen_steps']} steps, guidance {GUIDANCE_SCALE} (cond + uncond in one UNet call)"
        if generation["status"] == "ok":
            lines.append(f"| {label} | {generation['images']} ({generation['batch_size']}) "
                         f"| {_number(generation['images_per_second'])} | {_number(generation['seconds_per_image'])} "
                         f"| {generation['vae_decode_share']:.0%} | {_memory(generation)} |")
        else:
            status = generation["status"]
            lines.append(f"| {label} | {report['gen_images']} | {status} | {status} | {status} | {status} |")
    return "\n".join(lines).rstrip() + "\n"


def build_only_table(report: dict[str, Any]) -> str:
    lines = ["| Network | Parameters | Build seconds |", "|---|---:|---:|"]
    for name, count in report["parameters"].items():
        lines.append(f"| {name} | {count:,} ({_millions(count)}) | {report['build_seconds'][name]:.1f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- command line


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="JSON file for every measured number")
    parser.add_argument("--size", choices=sorted(SHAPES), default="full",
                        help="full: SD 1.x at 512 px; tiny: small configs at 32 px, to check the script on a CPU")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="training images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps per variant (first kernels, "
                        "allocator growth); 0 also skips the generation warm-up")
    parser.add_argument("--gen-images", type=int, default=16, help="images generated in the timed generation run")
    parser.add_argument("--gen-batch-size", type=int, default=None, help="images per generation batch; "
                        "all of --gen-images in one batch when not given")
    parser.add_argument("--gen-steps", type=int, default=50, help="DDIM steps per image")
    parser.add_argument("--variants", default=",".join(VARIANT_NAMES),
                        help=f"comma-separated subset of {', '.join(VARIANT_NAMES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch; default 1 for --size tiny on a CPU, torch's own choice otherwise")
    parser.add_argument("--build-only", action="store_true",
                        help="only build the networks and count their parameters; runs no step")
    options = parser.parse_args(argv)
    for name in ("batch_size", "steps", "gen_images", "gen_steps"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if options.warmup < 0:
        parser.error("--warmup must be at least 0")
    if options.gen_batch_size is not None and options.gen_batch_size < 1:
        parser.error("--gen-batch-size must be at least 1")
    options.variants = [v.strip() for v in options.variants.split(",") if v.strip()]
    unknown = sorted(set(options.variants) - set(VARIANT_NAMES))
    if unknown or not options.variants:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(VARIANT_NAMES)}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    device = select_device(options.device)
    if options.threads is None and options.size == "tiny" and device.type == "cpu":
        # The tiny networks gain little from a second thread, and on a shared CPU the threads' waiting for each
        # other stalled single steps for seconds (measured on 2 busy cores: 27 s with one thread, 57 s with two).
        options.threads = 1
    set_threads(options.threads)
    shapes = SHAPES[options.size]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment(device),
        "size": options.size,
        "shapes": shapes.description,
        "configs": {"unet": shapes.unet, "vae": shapes.vae, "text_encoder": shapes.text_encoder,
                    "noise_schedule": shapes.scheduler},
        "image_size": shapes.image_size,
        "latent_size": shapes.latent_size,
    }
    if options.build_only:
        report.update(build_only(shapes, device), mode="build_only", total_seconds=time.perf_counter() - started)
        write_json(options.out, report)
        print(build_only_table(report), end="")
        print(f"\nwritten to {options.out}")
        return 0

    from accelerate import Accelerator

    # As in finetune_stable_diffusion: bf16 autocast on a GPU, full precision on a CPU.
    use_cpu = device.type == "cpu"
    precision = "no" if use_cpu else FinetuneSettings().mixed_precision
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision)
    parameter_counts: dict[str, int] = {}
    report.update({
        "mode": "measure",
        "precision": "fp32" if precision == "no" else f"{precision} autocast",
        "notes": ("Training: text encoder frozen in fp32 outside autocast (as in finetune.py); UNet forward under "
                  "accelerate autocast; VAE encode (uncached variants) under the same autocast, fp32 weights. "
                  "Generation: UNet under sample_ddim's bf16 autocast on CUDA; VAE decode in fp32 as in "
                  "load_text_to_image_model. Step times include a device synchronisation per step."),
        "batch_size": options.batch_size,
        "warmup_steps": options.warmup,
        "timed_steps": options.steps,
        "gen_images": options.gen_images,
        "gen_steps": options.gen_steps,
        "parameters": parameter_counts,
        "results": {},
    })
    for name in VARIANT_NAMES:
        if name not in options.variants:
            continue
        if name == GENERATION_VARIANT:
            measure = lambda: measure_generation(shapes, options, device, parameter_counts)  # noqa: E731
        else:
            variant = next(v for v in TRAINING_VARIANTS if v.name == name)
            measure = lambda variant=variant: measure_training(  # noqa: E731
                variant, shapes, options, accelerator, device, parameter_counts)
        report["results"][name] = run_variant(name, measure, device, accelerator)
        report["total_seconds"] = time.perf_counter() - started
        # Written after every variant: a run stopped by a time limit still leaves what it measured.
        write_json(options.out, report)
    report["markdown"] = markdown_table(report)
    write_json(options.out, report)
    print()
    print(report["markdown"], end="")
    print(f"\nwritten to {options.out} in {report['total_seconds']:.0f} s")
    return 1 if any(r["status"] == "error" for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
