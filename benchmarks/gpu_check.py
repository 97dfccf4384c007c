#!/usr/bin/env python
"""One command that checks the workflow on a GPU machine and measures what a first GPU session needs to know.

    python benchmarks/gpu_check.py --device cuda --out-dir benchmarks/results
    python benchmarks/gpu_check.py --device cpu --size tiny --out-dir /tmp/gpu-check     # checks this script

Parts, each in a process of its own, time-boxed, and recorded whatever happens to the others:

- ``training_speed_digits``, ``training_speed_cifar10``: DDPM training steps/s of the library's step
  (``DDPMTrainer.step`` under the accelerator ``train_ddpm`` makes) beside a bare diffusers loop on the same UNet
  architecture, in one process, for the UNet of ``config.yaml`` and of ``configs/cifar10-ddpm.yaml``;
- ``sampling_precision``: one small DDPM trained on digits with ``train_ddpm`` and a content judge trained as
  ``train_content_judge`` does; one cell sampled in fp32 and under bf16 autocast at s = 1 and s = 11, and how many
  images the judge classifies differently;
- ``accelerate_one_process``: ``bibaddiff.diffusion.train_cli`` under ``accelerate launch`` with one process;
- ``tiny_dag``: the whole DAG of ``tests/configs/tiny.yaml`` with its ``device`` replaced, checking that every job of
  a rule that asks for a GPU touched the GPU (or, on a CPU run, none did) and that the summary tables are written;
- ``sd_throughput``: ``benchmarks/sd_throughput.py`` run as it is (Stable Diffusion 1.x shapes, random weights).

Everything goes to one JSON and one Markdown file in ``--out-dir``, rewritten after every part, so a run stopped
part-way keeps what it measured. ``--size tiny`` shrinks every part to a few steps, to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if (REPO_ROOT / "src" / "bibaddiff").is_dir():
    # Check the library of this working tree, even where another copy of bibaddiff is installed.
    sys.path.insert(0, str(REPO_ROOT / "src"))
# Progress bars of training and sampling would bury the parts' output.
os.environ.setdefault("TQDM_DISABLE", "1")

GIB = 2 ** 30
DIGITS_CONFIG = REPO_ROOT / "config.yaml"
CIFAR10_CONFIG = REPO_ROOT / "configs" / "cifar10-ddpm.yaml"
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny.yaml"
PRECISION_GUIDANCE_SCALES = (1, 11)  # the plain conditional model and the paper's largest scale (w = 10)

# Parts in the order they run. The Stable Diffusion benchmark goes last: it takes whatever time is left, and its
# JSON is rewritten after each variant, so a run cut short by the budget still keeps the variants it finished.
TRAINING_CONFIGS = {"digits": DIGITS_CONFIG, "cifar10": CIFAR10_CONFIG}
PARTS = ("training_speed_digits", "training_speed_cifar10", "sampling_precision", "accelerate_one_process",
         "tiny_dag", "sd_throughput")
# The most each part may take on a GPU (seconds). Estimates for an H100/H200 with room to spare, not measurements;
# each part also gets no more than what is left of --budget-s.
TIME_BOX_S = {"training_speed_digits": 75, "training_speed_cifar10": 90, "sampling_precision": 150,
              "accelerate_one_process": 90, "tiny_dag": 300, "sd_throughput": 300}
MIN_PART_S = 20  # a part given less would only record a timeout
REPORT_MARGIN_S = 5  # kept back from the budget for writing the report
# A part stops its own subprocesses this long before its deadline, to read what they left and write its result;
# its process is killed this long after the deadline if it has not ended by then.
WIND_DOWN_S = 10
KILL_GRACE_S = 5


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    train_warmup: int  # untimed steps per training loop (first kernels, allocator growth)
    train_steps: int  # timed steps per training loop
    train_batch: int | None  # None: the config's batch size
    train_loop_seconds: float  # a loop stops sooner once its timed steps took this long (warm-up: half of it)
    precision_train_steps: int
    precision_batch: int
    judge_epochs: int
    precision_images: int
    precision_ddim_steps: int
    accelerate_steps: int
    sd_arguments: tuple[str, ...] = field(default_factory=tuple)


SIZES = {
    # The CIFAR-10 config trains with a batch of 2,000 in fp32: its loops stop at train_loop_seconds, well before
    # 300 steps, so that the part fits its box whatever a config's batch is.
    "full": Sizes(train_warmup=20, train_steps=300, train_batch=None, train_loop_seconds=20,
                  precision_train_steps=2000, precision_batch=64, judge_epochs=8, precision_images=500,
                  precision_ddim_steps=50, accelerate_steps=200),
    # A few steps of everything: every code path, minutes on 2 CPU cores. The CIFAR-10 UNet keeps its 36 M
    # parameters (the config's shape is part of what is checked) at a batch of 2.
    "tiny": Sizes(train_warmup=1, train_steps=2, train_batch=2, train_loop_seconds=60, precision_train_steps=10,
                  precision_batch=16,
                  judge_epochs=1, precision_images=16, precision_ddim_steps=4, accelerate_steps=3,
                  sd_arguments=("--steps", "1", "--warmup", "1", "--gen-steps", "2", "--gen-images", "2")),
}


# --------------------------------------------------------------------------------------------- shared helpers


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def run_with_deadline(command: list[str], seconds: float, **kwargs) -> tuple[int | None, str, str]:
    """Run ``command`` in its own process group; after ``seconds`` kill the group (its children too, as snakemake's
    jobs or a part's own subprocesses). Returns (exit status or None when killed, stdout, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=max(1.0, seconds))
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr


def seconds_before(deadline: float) -> float:
    """How long a part's subprocess may run: until its deadline (wall-clock time), less the part's wind-down."""
    return deadline - time.time() - WIND_DOWN_S


def tail(text: str, characters: int = 3000) -> str:
    return text[-characters:]


# --------------------------------------------------------------------------------------------- DDPM training speed


def ddpm_settings(config: dict[str, Any], steps: int, batch_size: int | None = None, **changes):
    """The config's DDPM training settings (schema defaults for the keys it leaves out), with ``steps``."""
    from bibaddiff.diffusion.train import TrainSettings

    diffusion = config["diffusion"]
    training = {**diffusion.get("training", {}), "steps": steps, **changes}
    if batch_size is not None:
        training["batch_size"] = batch_size
    return TrainSettings.from_config(training, diffusion.get("model", {}))


def image_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """(image size, channels, classes) of a digits or CIFAR-10 config."""
    dataset = config["dataset"]
    channels = 3 if dataset["source"] == "cifar10" or dataset.get("rgb") else 1
    return int(dataset["image_size"]), channels, 10


def time_loop(step: Callable[[], Any], sizes: Sizes, device) -> dict[str, Any]:
    """Untimed warm-up steps, then timed steps as one block between two synchronisations: each loop keeps its own
    pace (the library's step reads its loss every step, a bare loop need not). Each phase stops at its step count or
    once it has run ``sizes.train_loop_seconds`` (half of that for the warm-up), after at least one step."""
    def run(steps: int, seconds: float) -> int:
        started, done = time.perf_counter(), 0
        while done < steps and (done == 0 or time.perf_counter() - started < seconds):
            step()
            done += 1
        return done

    warmup = run(sizes.train_warmup, sizes.train_loop_seconds / 2)
    synchronize(device)
    started = time.perf_counter()
    timed = run(sizes.train_steps, sizes.train_loop_seconds)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"warmup_steps": warmup, "timed_steps": timed, "seconds": seconds, "steps_per_second": timed / seconds}


def ok_or_out_of_memory(measure: Callable[[], dict[str, Any]], device) -> dict[str, Any]:
    """One loop's figures, or OOM: a batch too large for the GPU is a finding, and the other loops still run."""
    import torch

    try:
        return {"status": "ok", **measure()}
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM", "peak_memory_gib": peak_memory_gib(device)}


def measure_library_step(config: dict[str, Any], sizes: Sizes, device, work: Path, images, labels) -> dict[str, Any]:
    """The loop body of ``train_ddpm``: ``DDPMTrainer.step`` under the accelerator ``start_training`` makes."""
    import torch

    from bibaddiff.diffusion.model import build_scheduler, build_unet
    from bibaddiff.diffusion.train import DDPMTrainer
    from bibaddiff.diffusion.trainer import start_training

    size, channels, classes = image_shape(config)
    settings = ddpm_settings(config, sizes.train_warmup + sizes.train_steps, sizes.train_batch)
    reset_memory(device)
    accelerator, local_batch, generator = start_training(device.type, settings, work / "state", seed=0)
    unet = build_unet(size, channels, classes, **settings.model)
    trainer = DDPMTrainer(unet, build_scheduler(settings.num_train_timesteps, settings.beta_schedule), settings,
                          accelerator)
    trainer.prepare()
    data, label_tensor = torch.from_numpy(images), torch.from_numpy(labels)
    losses: list[float] = []
    try:
        timing = time_loop(lambda: losses.append(trainer.step(data, label_tensor, classes, local_batch, generator)),
                           sizes, device)
    finally:
        # accelerate keeps the prepared model and optimiser alive otherwise, also after running out of memory.
        accelerator.free_memory()
    return {**timing, "images_per_second": timing["steps_per_second"] * settings.batch_size,
            "precision": str(accelerator.mixed_precision), "losses_finite": bool(torch.isfinite(
                torch.tensor(losses)).all()), "peak_memory_gib": peak_memory_gib(device)}


def measure_bare_loop(config: dict[str, Any], sizes: Sizes, device, images, labels) -> dict[str, Any]:
    """What a plain diffusers training loop does with the same UNet: the data on the device, noise, timesteps and
    ``add_noise`` there too, forward (bf16 autocast where the library uses it), MSE, backward, AdamW. No label
    dropout, gradient clipping, learning-rate warm-up or EMA, and no loss read back every step."""
    import torch
    import torch.nn.functional as F

    from bibaddiff.diffusion.model import build_scheduler, build_unet

    size, channels, classes = image_shape(config)
    settings = ddpm_settings(config, sizes.train_warmup + sizes.train_steps, sizes.train_batch)
    reset_memory(device)
    torch.manual_seed(0)
    unet = build_unet(size, channels, classes, **settings.model).to(device).train()
    scheduler = build_scheduler(settings.num_train_timesteps, settings.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # As the library's accelerator: bf16 autocast on a GPU when the config asks for it, fp32 on a CPU.
    bf16 = device.type == "cuda" and settings.mixed_precision == "bf16"
    pixels, label_tensor = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    batch = settings.batch_size
    last_loss: list[torch.Tensor] = []

    def step() -> None:
        index = torch.randint(0, len(pixels), (batch,), device=device)
        clean = pixels[index].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, settings.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            prediction = unet(noisy, timesteps, class_labels=label_tensor[index]).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last_loss[:] = [loss.detach()]

    timing = time_loop(step, sizes, device)
    return {**timing, "images_per_second": timing["steps_per_second"] * batch,
            "precision": "bf16" if bf16 else "no", "losses_finite": bool(torch.isfinite(last_loss[0]).all()),
            "peak_memory_gib": peak_memory_gib(device)}


def part_training_speed(model_name: str, options: argparse.Namespace, sizes: Sizes, device, work: Path,
                        deadline: float) -> dict[str, Any]:
    """One config's UNet, the library's step and the bare loop. A part of its own per config: accelerate keeps one
    state per process, and the configs ask for different precisions (bf16 autocast for digits, fp32 for CIFAR-10)."""
    import numpy as np

    from bibaddiff.diffusion.model import build_unet

    path = TRAINING_CONFIGS[model_name]
    config = load_yaml(path)
    size, channels, classes = image_shape(config)
    settings = ddpm_settings(config, 1, sizes.train_batch)
    # Random pixels: a step's cost does not depend on what the images show, and no dataset is needed.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(1024, 4 * settings.batch_size), size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, classes, len(images)).astype(np.int64)
    library = ok_or_out_of_memory(lambda: measure_library_step(config, sizes, device, work, images, labels), device)
    bare = ok_or_out_of_memory(lambda: measure_bare_loop(config, sizes, device, images, labels), device)
    both = library["status"] == bare["status"] == "ok"
    print(f"{model_name}: library {library.get('steps_per_second', 'OOM')} steps/s, bare "
          f"{bare.get('steps_per_second', 'OOM')} steps/s", flush=True)
    finite = library.get("losses_finite", True) and bare.get("losses_finite", True)
    return {
        "status": "ok" if finite else "error", **({} if finite else {"error": "a training loss was not finite"}),
        "config": str(path.relative_to(REPO_ROOT)), "model": settings.model, "image_size": size, "channels": channels,
        "batch_size": settings.batch_size,
        "parameters": sum(p.numel() for p in build_unet(size, channels, classes, **settings.model).parameters()),
        "library": library, "bare": bare,
        "library_over_bare": library["steps_per_second"] / bare["steps_per_second"] if both else None,
    }


# --------------------------------------------------------------------------------------------- sampling precision


def fixed_precision_unet(unet, bf16: bool):
    """``unet`` run in one precision whatever the caller's autocast: ``sample_ddim`` turns bf16 autocast on for a
    CUDA UNet and off for a CPU one, and an autocast region opened inside its own decides for the calls in it."""
    import torch

    class FixedPrecision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, class_labels=None):
            device_type = sample.device.type
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                return self.unet(sample, timestep, class_labels=class_labels)

    return FixedPrecision()


def compare_precisions(images: dict[str, Any], predictions: dict[str, Any], target: int) -> dict[str, Any]:
    import numpy as np

    fp32, bf16, library = images["fp32"], images["bf16"], images["library"]
    difference = np.abs(fp32.astype(np.int16) - bf16.astype(np.int16))
    changed = predictions["fp32"] != predictions["bf16"]
    library_equals = [name for name in ("fp32", "bf16") if np.array_equal(library, images[name])]
    return {
        "images": int(len(fp32)),
        "classified_differently": int(changed.sum()),
        "classified_differently_share": float(changed.mean()),
        "target_share_fp32": float(np.mean(predictions["fp32"] == target)),
        "target_share_bf16": float(np.mean(predictions["bf16"] == target)),
        "mean_abs_pixel_difference": float(difference.mean()),
        "max_abs_pixel_difference": int(difference.max()),
        "images_with_a_changed_pixel": int((difference.reshape(len(difference), -1) > 0).any(1).sum()),
        # Which of the two the workflow's own sampler reproduces bit for bit: bf16 on a GPU, fp32 on a CPU.
        "library_default_equals": library_equals[0] if library_equals else "neither",
    }


def part_sampling_precision(options: argparse.Namespace, sizes: Sizes, device, work: Path,
                            deadline: float) -> dict[str, Any]:
    import torch

    from bibaddiff.data import load_source
    from bibaddiff.diffusion.model import load_diffusion_model
    from bibaddiff.diffusion.train import train_ddpm
    from bibaddiff.judges import JudgeSettings, predict, train_content_judge

    config = load_yaml(DIGITS_CONFIG)
    train, heldout = load_source(config["dataset"])
    steps = sizes.precision_train_steps
    settings = ddpm_settings(config, steps, sizes.precision_batch, checkpoint_every=steps)
    started = time.perf_counter()
    training = train_ddpm(train, work / "model", work / "state", settings, seed=0, device=device.type, progress=False)
    training_seconds = time.perf_counter() - started
    training_precision = settings.mixed_precision if device.type == "cuda" else "no"  # as start_training decides
    judge_settings = JudgeSettings.from_config({**config["judges"], "epochs": sizes.judge_epochs})
    judge, judge_metrics = train_content_judge(train, heldout, [], judge_settings, seed=0, device=device.type)
    print(f"trained the DDPM ({steps} steps, {training_seconds:.0f} s) and the judge ({judge_metrics})", flush=True)

    model = load_diffusion_model(work / "model", device)
    unet = model.denoiser
    # A reference in full fp32: PyTorch lets cuDNN convolutions run in TF32 unless told not to. bf16 autocast's
    # convolutions and matrix products are bf16 either way, so the workflow's own sampling is not changed by this.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    generation = config["generation"]
    target, seed = int(config["target"]), int(generation.get("seed", 0))
    # One batch per cell: the batch size does not change what is sampled, only how fast.
    batch = sizes.precision_images
    scales = {}
    with torch.no_grad():
        for scale in PRECISION_GUIDANCE_SCALES:
            images, predictions = {}, {}
            for name, denoiser in (("fp32", fixed_precision_unet(unet, bf16=False)),
                                   ("bf16", fixed_precision_unet(unet, bf16=True)), ("library", unet)):
                model.denoiser = denoiser
                images[name] = model.generate(target, scale, sizes.precision_images, sizes.precision_ddim_steps, seed,
                                              batch, x0_clipping="none")
                predictions[name] = predict(judge, images[name])
            scales[str(scale)] = compare_precisions(images, predictions, target)
            print(f"s = {scale}: {scales[str(scale)]}", flush=True)
    return {
        "status": "ok",
        "cell": {"condition": target, "x0_clipping": "none", "ddim_steps": sizes.precision_ddim_steps, "seed": seed},
        "model": {"config": str(DIGITS_CONFIG.relative_to(REPO_ROOT)), "training_steps": steps,
                  "batch_size": settings.batch_size, "training_precision": training_precision,
                  "training_seconds": training_seconds, "final_loss": training["final_loss"]},
        "judge": {"epochs": sizes.judge_epochs, **judge_metrics},
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "scales": scales,
    }


# --------------------------------------------------------------------------------------------- accelerate


def part_accelerate_one_process(options: argparse.Namespace, sizes: Sizes, device, work: Path,
                                deadline: float) -> dict[str, Any]:
    from bibaddiff.data import load_source, write_dataset

    config = load_yaml(DIGITS_CONFIG)
    train, _ = load_source(config["dataset"])
    write_dataset(work / "data", train)
    steps = sizes.accelerate_steps
    # The trainer's settings resolved as the train_diffusion rule passes them, the model's shape apart.
    training = asdict(ddpm_settings(config, steps, checkpoint_every=steps))
    settings = {"training": training, "model": training.pop("model")}
    # rules/common.smk's training_launcher without --multi_gpu, which accelerate refuses for one process.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "bibaddiff.diffusion.train_cli", "--train-data", str(work / "data"), "--output",
               str(work / "model"), "--state-dir", str(work / "state"), "--settings", json.dumps(settings),
               "--seed", "0", "--device", device.type, "--threads",
               str(config["diffusion"]["training"].get("threads", 1))]
    started = time.perf_counter()
    returncode, stdout, stderr = run_with_deadline(command, seconds_before(deadline), cwd=work)
    wall = time.perf_counter() - started
    result: dict[str, Any] = {"command": shlex.join(command), "returncode": returncode, "wall_seconds": wall,
                              "steps": steps}
    statistics_file = work / "model" / "training.json"
    if returncode != 0 or not statistics_file.is_file():
        what = "timed out" if returncode is None else f"exit status {returncode}"
        return {**result, "status": "error", "error": f"accelerate launch {what}", "output": tail(stdout + stderr)}
    statistics = json.loads(statistics_file.read_text())
    result.update({key: statistics.get(key) for key in ("device", "processes", "steps_per_second",
                                                          "images_per_second", "final_loss", "peak_memory_bytes")})
    if not str(statistics["device"]).startswith(device.type) or statistics["processes"] != 1:
        return {**result, "status": "error",
                "error": f"trained on {statistics['device']} with {statistics['processes']} processes"}
    return {**result, "status": "ok"}


# --------------------------------------------------------------------------------------------- tiny DAG

# Put on PYTHONPATH for the DAG's jobs: when a job's process exits, it records which rule it ran and whether torch
# used CUDA in it. Today's logs do not name the device a job ran on, and this needs no change to the library.
PROCESS_RECORDER = '''\
"""Written by benchmarks/gpu_check.py for one run: each process records, at exit, its rule and CUDA use."""
import atexit
import json
import os
import sys


def _rule_of_this_process():
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    if type(job).__name__ == "Snakemake" and getattr(job, "rule", None):
        return job.rule  # a script: job
    try:  # a shell: job (train_diffusion) writes its output to its log, results/.../logs/<rule>/<name>.log
        output = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    parts = output.split("/")
    return parts[-2] if output.endswith(".log") and len(parts) > 2 and parts[-3] == "logs" else None


def _record():
    try:
        rule = _rule_of_this_process()
        if rule is None:
            return
        torch = sys.modules.get("torch")
        on_cuda = bool(torch is not None and torch.cuda.is_initialized())
        record = {"rule": rule, "pid": os.getpid(), "argv": sys.argv, "torch_imported": torch is not None,
                  "cuda_initialized": on_cuda,
                  "cuda_peak_bytes": int(torch.cuda.max_memory_allocated()) if on_cuda else 0}
        with open(os.path.join(os.environ["GPU_CHECK_PROCESS_DIR"], f"{os.getpid()}.json"), "w") as handle:
            json.dump(record, handle)
    except Exception:  # a check must never fail the job it watches
        pass


atexit.register(_record)
'''


def gpu_rules() -> list[str]:
    """Rules that ask for a GPU (``gpu=GPUS_PER_JOB`` in their resources), read from the rule files as they are."""
    rules, current = set(), None
    for path in sorted((REPO_ROOT / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*rule (\w+):", line)
            if match:
                current = match.group(1)
            elif current and re.search(r"\bgpu\s*=\s*GPUS_PER_JOB\b", line):
                rules.add(current)
    return sorted(rules)


def rules_that_need_no_gpu(config: dict[str, Any]) -> dict[str, str]:
    """Rules that ask for a GPU but, with this config, do all their work on the CPU by design, and why."""
    embedder = (config.get("replication") or {}).get("embedder") or {"type": "pixel"}
    if embedder.get("type", "pixel") == "pixel":
        return {"replication": "the pixel embedder (the default) compares pixels with CPU tensors"}
    return {}


def job_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per rule, summed over its jobs, from Snakemake's benchmark files."""
    seconds: dict[str, float] = {}
    from bibaddiff.plan import rule_of_job_file

    for path in run_dir.glob("results/**/benchmarks/**/*.tsv"):
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows and rows[0].get("s"):
            rule = rule_of_job_file(path)
            seconds[rule] = seconds.get(rule, 0.0) + float(rows[0]["s"])
    return seconds


def part_tiny_dag(options: argparse.Namespace, sizes: Sizes, device, work: Path, deadline: float) -> dict[str, Any]:
    import yaml

    config = load_yaml(TINY_CONFIG)
    config["device"] = device.type
    config_file, run_dir = work / "config.yaml", work / "run"
    config_file.write_text(yaml.safe_dump(config))
    recorder_dir, records_dir = work / "recorder", work / "processes"
    recorder_dir.mkdir(parents=True)
    records_dir.mkdir()
    (recorder_dir / "sitecustomize.py").write_text(PROCESS_RECORDER)
    environment = {**os.environ, "GPU_CHECK_PROCESS_DIR": str(records_dir),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(recorder_dir), os.environ.get("PYTHONPATH")]))}
    # The jobs are tiny: on a GPU machine several share the GPU at once; on a CPU, as the tests run it.
    cores = min(8, os.cpu_count() or 2) if device.type == "cuda" else 2
    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
               "--directory", str(run_dir), "--cores", str(cores), "--configfile", str(config_file)]
    started = time.perf_counter()
    returncode, stdout, stderr = run_with_deadline(command, seconds_before(deadline), env=environment)
    wall = time.perf_counter() - started

    records = [json.loads(path.read_text()) for path in records_dir.glob("*.json")]
    logs: dict[str, list[Path]] = {}
    from bibaddiff.plan import rule_of_job_file

    for path in run_dir.glob("results/**/logs/**/*.log"):
        logs.setdefault(rule_of_job_file(path), []).append(path)
    asking = set(gpu_rules())
    by_design = rules_that_need_no_gpu(config)
    spent = job_seconds(run_dir)
    rules, problems = {}, []
    for rule in sorted(logs):
        mine = [r for r in records if r["rule"] == rule]
        on_cuda = sum(r["cuda_initialized"] for r in mine)
        names_device = any(re.search(r"\b(cuda|cpu)\b", path.read_text(errors="replace"), re.IGNORECASE)
                           for path in logs[rule])
        rules[rule] = {"jobs": len(logs[rule]), "asks_for_gpu": rule in asking, "processes_recorded": len(mine),
                       "processes_on_cuda": on_cuda,
                       "cuda_peak_mib": round(max((r["cuda_peak_bytes"] for r in mine), default=0) / 2 ** 20, 1),
                       "job_seconds": spent.get(rule), "log_names_device": names_device}
        if rule not in asking:
            continue
        if len(mine) < len(logs[rule]) and returncode == 0:  # jobs killed with a stopped run record nothing
            problems.append(f"{rule}: {len(logs[rule])} jobs but {len(mine)} processes recorded")
        elif device.type == "cuda" and on_cuda < len(mine) and rule not in by_design:
            problems.append(f"{rule}: {len(mine) - on_cuda} of {len(mine)} processes never touched the GPU")
        elif device.type == "cpu" and on_cuda:
            problems.append(f"{rule}: {on_cuda} processes used CUDA with device: cpu")
    summary_dir = run_dir / "results" / "experiments" / config["experiment"] / "summary"
    tables = {path.name: len(path.read_text().splitlines()) - 1 for path in sorted(summary_dir.glob("*.csv"))}
    if returncode != 0:
        problems.insert(0, "snakemake timed out" if returncode is None else f"snakemake failed (exit {returncode})")
    if not tables.get("trigger_amplification.csv"):
        problems.append("no trigger_amplification.csv rows")
    problems += [f"{name} has no rows" for name, rows in tables.items() if rows < 1]
    trained_on = sorted({json.loads(path.read_text()).get("device")
                         for path in run_dir.glob("results/*/models/*/*/seed*/training.json")})
    result = {"status": "error" if problems else "ok", "config": str(TINY_CONFIG.relative_to(REPO_ROOT)),
              "device": device.type, "cores": cores, "snakemake_returncode": returncode, "wall_seconds": wall,
              "jobs": sum(len(paths) for paths in logs.values()), "gpu_rules": sorted(asking),
              "gpu_rules_on_the_cpu_by_design": by_design, "rules": rules,
              "summary_tables": tables, "training_json_devices": trained_on,
              "logs_name_device": sorted(rule for rule, row in rules.items() if row["log_names_device"])}
    if problems:
        result["error"] = "; ".join(problems)
        if returncode != 0:
            result["output"] = tail(stdout + stderr, 6000)
    return result


# --------------------------------------------------------------------------------------------- Stable Diffusion


def part_sd_throughput(options: argparse.Namespace, sizes: Sizes, device, work: Path,
                       deadline: float) -> dict[str, Any]:
    out = work / "sd_throughput.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "sd_throughput.py"), "--size", options.size,
               "--device", device.type, "--out", str(out), *sizes.sd_arguments]
    returncode, stdout, stderr = run_with_deadline(command, seconds_before(deadline))
    result: dict[str, Any] = {"command": shlex.join(command), "returncode": returncode}
    if not out.is_file():
        return {**result, "status": "error", "error": "sd_throughput.py wrote no JSON",
                "output": tail(stdout + stderr)}
    report = json.loads(out.read_text())  # rewritten after every variant: a run cut short keeps what it finished
    result["report"] = report
    variants = report.get("results", {})
    failed = sorted(name for name, row in variants.items() if row.get("status") == "error")
    if returncode is None:
        finished = ", ".join(variants) or "no variant"
        return {**result, "status": "timeout", "error": f"stopped by the time box after {finished}"}
    if returncode != 0 or failed:
        return {**result, "status": "error", "error": f"exit status {returncode}; failed variants: {failed}",
                "output": tail(stderr)}
    return {**result, "status": "ok"}


# --------------------------------------------------------------------------------------------- running the parts


def run_part_here(options: argparse.Namespace) -> int:
    """The child process of one part: run it and write its result, or its error, to --part-out."""
    from bibaddiff.utils import select_device

    started = time.perf_counter()
    sizes = SIZES[options.size]
    work = Path(options.work_dir) / options.run_part
    work.mkdir(parents=True, exist_ok=True)
    try:
        device = select_device(options.device)
        if device.type == "cpu":
            import torch

            # On a CPU shared with other jobs, a second torch thread made single steps stall for seconds (as
            # sd_throughput.py measured); one thread keeps the smoke run's time steady.
            torch.set_num_threads(1)
        part = {"training_speed_digits": functools.partial(part_training_speed, "digits"),
                "training_speed_cifar10": functools.partial(part_training_speed, "cifar10"),
                "sampling_precision": part_sampling_precision, "accelerate_one_process": part_accelerate_one_process,
                "tiny_dag": part_tiny_dag, "sd_throughput": part_sd_throughput}[options.run_part]
        deadline = options.part_deadline or time.time() + 600  # run by hand, without a parent to set it
        result = part(options, sizes, device, work, deadline)
    except Exception as error:  # noqa: BLE001 -- recorded in the report; the other parts still run
        result = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - started
    Path(options.part_out).write_text(json.dumps(result, indent=2, default=str))
    return 0


def run_part(name: str, seconds: float, options: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One part in a process of its own: a crash, a hung kernel or a leak of GPU memory ends with it."""
    out = work / f"{name}.result.json"
    # A wall-clock deadline rather than a duration: the child's own start-up (seconds on a busy machine) counts.
    deadline = time.time() + seconds
    command = [sys.executable, str(Path(__file__).resolve()), "--run-part", name, "--part-out", str(out),
               "--part-deadline", f"{deadline:.1f}", "--device", options.device, "--size", options.size,
               "--work-dir", str(work)]
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} (at most {seconds:.0f} s) ...", flush=True)
    returncode, stdout, stderr = run_with_deadline(command, seconds + KILL_GRACE_S)
    (work / f"{name}.log").write_text(stdout + stderr)
    if out.is_file():
        result = json.loads(out.read_text())
    elif returncode is None:
        result = {"status": "timeout", "error": f"stopped after its time box of {seconds:.0f} s",
                  "output": tail(stdout + stderr)}
    else:
        result = {"status": "error", "error": f"the part's process ended with exit status {returncode}",
                  "output": tail(stdout + stderr)}
    result["wall_seconds_with_start_up"] = time.perf_counter() - started
    result["time_box_seconds"] = seconds
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {result['status']}"
          + (f" ({result['error']})" if result.get("error") else ""), flush=True)
    return result


def environment(device_name: str) -> dict[str, Any]:
    """sd_throughput's record of the machine and libraries, with snakemake's version and the checkout's state."""
    import importlib.metadata

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from sd_throughput import environment as benchmark_environment

    from bibaddiff.utils import select_device

    info = benchmark_environment(select_device(device_name))
    info["versions"]["snakemake"] = importlib.metadata.version("snakemake")
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        info["git_uncommitted_changes"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_uncommitted_changes"] = None
    info["cpu_count"] = os.cpu_count()
    return info


# --------------------------------------------------------------------------------------------- reporting


def number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def precision_name(mixed_precision: str) -> str:
    """accelerate's mixed-precision setting as a reader says it: "no" is fp32."""
    return {"no": "fp32", "n/a": "n/a"}.get(mixed_precision, f"{mixed_precision} autocast")


def part_summary(name: str, result: dict[str, Any]) -> str:
    """One line of the summary table: the part's headline figure, or its error."""
    if result.get("error"):
        return str(result["error"])[:300].replace("|", "/").replace("\n", " ")
    if name.startswith("training_speed_"):
        return f"library {loop_speed(result['library'])}, bare {loop_speed(result['bare'])} steps/s"
    if name == "sampling_precision":
        return "; ".join(f"s = {scale}: {row['classified_differently']} of {row['images']} classified differently"
                         for scale, row in result["scales"].items())
    if name == "accelerate_one_process":
        return f"{result['steps']} steps on {result['device']}, {number(result['steps_per_second'])} steps/s"
    if name == "tiny_dag":
        asking = [rule for rule, row in result["rules"].items() if row["asks_for_gpu"]]
        on_cpu = [rule for rule in asking if rule in result["gpu_rules_on_the_cpu_by_design"]]
        where = (f"all on {result['device']}" if result["device"] == "cpu" or not on_cpu
                 else f"all on cuda but {', '.join(on_cpu)} (CPU by design)")
        return (f"{result['jobs']} jobs; {len(asking)} GPU rules ran, {where}; "
                f"{len(result['summary_tables'])} summary tables")
    if name == "sd_throughput":
        variants = result["report"].get("results", {})
        return ", ".join(f"{variant} " + (f"{number(row['images_per_second'])} img/s" if row["status"] == "ok"
                                          else row["status"]) for variant, row in variants.items())
    return ""


def markdown_report(report: dict[str, Any]) -> str:
    env = report["environment"]
    commit = (env.get("git_commit") or "unknown")[:10]
    if env.get("git_uncommitted_changes"):
        commit += " (with uncommitted changes)"
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    lines = [
        f"# GPU check: {env['device_name']} ({report['device']}), size {report['size']}",
        "",
        f"Date {env['date']}, commit {commit}, {env['cpu_count']} CPU cores; {versions}.",
        f"Command: `{env['command']}`; budget {report['budget_s']} s, took {number(report.get('total_seconds'), 4)} s.",
    ]
    if report["device"] == "cpu":
        lines.append("A CPU smoke run of the script: its figures say that every part runs, not how fast anything is.")
    lines += ["", "| Part | Status | Seconds | Result |", "|---|---|---:|---|"]
    for name, result in report["parts"].items():
        seconds = result.get("wall_seconds_with_start_up")
        lines.append(f"| {name} | {result['status']} | {number(seconds)} | {part_summary(name, result)} |")
    parts = report["parts"]
    # Both training parts in one table; one that failed before measuring shows its error in the summary above.
    training = {name.removeprefix("training_speed_"): result for name, result in parts.items()
                if name.startswith("training_speed_") and "library" in result}
    if training:
        lines += [""] + training_section(training)
    section_writers = (("sampling_precision", precision_section), ("accelerate_one_process", accelerate_section),
                       ("tiny_dag", dag_section), ("sd_throughput", sd_section))
    for name, write_section in section_writers:
        result = parts.get(name)
        if result is None:
            continue
        lines.append("")
        try:
            lines += write_section(result)
        except (KeyError, TypeError, ZeroDivisionError):
            # A part that failed before it measured anything has only its error, which the summary shows.
            lines += [f"## {name}", "", f"{result['status']}: {result.get('error', 'no figures')}"]
    return "\n".join(lines).rstrip() + "\n"


def loop_speed(loop: dict[str, Any]) -> str:
    """A loop's steps/s with the steps it timed, or why it has none."""
    if loop["status"] != "ok":
        return loop["status"]
    return f"{number(loop['steps_per_second'])} ({loop['timed_steps']} steps)"


def training_section(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## DDPM training speed: the library's step beside a bare diffusers loop", "",
             "| Model | Parameters | Image | Batch | Precision | Library steps/s | Bare steps/s | Library / bare "
             "| Library peak GiB | Bare peak GiB |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        library, bare = row["library"], row["bare"]
        ratio = "n/a" if row["library_over_bare"] is None else f"{row['library_over_bare']:.2f}"
        lines.append(f"| {name} ({row['config']}) | {row['parameters'] / 1e6:.2f} M | {row['image_size']} px x "
                     f"{row['channels']} | {row['batch_size']} | {precision_name(library.get('precision', 'n/a'))} | "
                     f"{loop_speed(library)} | {loop_speed(bare)} | {ratio} | "
                     f"{number(library.get('peak_memory_gib'))} | {number(bare.get('peak_memory_gib'))} |")
    lines += ["", "Steps are timed after untimed warm-up steps, each loop stopping at its step count or its time cap. "
              "The bare loop keeps the data on the device and has no label dropout, clipping, warm-up or EMA; the "
              "library's step assembles each batch on the CPU and reads its loss back every step."]
    return lines


def precision_section(result: dict[str, Any]) -> list[str]:
    model, judge, cell = result["model"], result["judge"], result["cell"]
    lines = ["## Sampling precision: one cell in fp32 and under bf16 autocast", "",
             f"DDPM of {model['config']} trained {model['training_steps']} steps (batch {model['batch_size']}, "
             f"{precision_name(model['training_precision'])}), final loss {number(model['final_loss'])}; content judge "
             f"of {judge['epochs']} epoch(s), held-out accuracy {number(judge['heldout_clean_accuracy'])}. Cell: class "
             f"{cell['condition']}, x0 {cell['x0_clipping']}, {cell['ddim_steps']} DDIM steps, seed {cell['seed']}; "
             "the fp32 run without TF32.", "",
             "| s | Images | Classified differently | Target share fp32 | Target share bf16 | Mean abs pixel "
             "difference | Images with a changed pixel | Workflow's sampler equals |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for scale, row in result["scales"].items():
        lines.append(f"| {scale} | {row['images']} | {row['classified_differently']} "
                     f"({row['classified_differently_share']:.1%}) | {row['target_share_fp32']:.3f} | "
                     f"{row['target_share_bf16']:.3f} | {row['mean_abs_pixel_difference']:.3f} | "
                     f"{row['images_with_a_changed_pixel']} | {row['library_default_equals']} |")
    return lines


def accelerate_section(result: dict[str, Any]) -> list[str]:
    return ["## `accelerate launch`, one process", "",
            f"`bibaddiff.diffusion.train_cli` trained {result['steps']} steps on {result['device']} in "
            f"{result['processes']} process at {number(result['steps_per_second'])} steps/s "
            f"({number(result['wall_seconds'])} s with the launch).", "", f"Command: `{result['command']}`"]


def dag_section(result: dict[str, Any]) -> list[str]:
    lines = [f"## The tiny config's DAG with `device: {result['device']}`", "",
             f"{result['jobs']} jobs on {result['cores']} cores in {number(result['wall_seconds'])} s (snakemake exit "
             f"status {result['snakemake_returncode']}). Trained models' training.json name the device "
             f"{', '.join(map(str, result['training_json_devices'])) or 'nowhere'}; logs that name it: "
             f"{', '.join(result['logs_name_device']) or 'none'}.", "",
             "| Rule | Jobs | Asks for a GPU | Processes recorded | On CUDA | Peak CUDA MiB | Job seconds |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for rule, row in result["rules"].items():
        lines.append(f"| {rule} | {row['jobs']} | {'yes' if row['asks_for_gpu'] else 'no'} | "
                     f"{row['processes_recorded']} | {row['processes_on_cuda']} | {row['cuda_peak_mib']} | "
                     f"{number(row['job_seconds'])} |")
    lines += [""] + [f"{rule} asks for a GPU but works on the CPU with this config: {why}."
                     for rule, why in result["gpu_rules_on_the_cpu_by_design"].items() if rule in result["rules"]]
    lines += ["", "Summary tables (rows): " + ", ".join(f"{name} ({rows})"
                                                          for name, rows in result["summary_tables"].items())]
    return lines


def sd_section(result: dict[str, Any]) -> list[str]:
    report = result["report"]
    body = report.get("markdown")
    if body is None:  # cut short: sd_throughput writes its table only at the end
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
        from sd_throughput import markdown_table

        body = markdown_table(report)
    return ["## Stable Diffusion 1.x shapes (benchmarks/sd_throughput.py)", "", body.rstrip()]


def write_report(report: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    from bibaddiff.utils import write_atomically, write_json

    write_json(json_path, report)
    text = markdown_report(report)
    write_atomically(markdown_path, lambda tmp: tmp.write_text(text))


def run_all(options: argparse.Namespace) -> int:
    from bibaddiff.errors import BibaddiffError

    started = time.perf_counter()
    try:
        env = environment(options.device)
    except BibaddiffError as error:  # no CUDA device: every part would fail the same way
        print(f"error: {error}", file=sys.stderr)
        return 1
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    machine = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-") if options.device == "cuda" else "cpu"
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"gpu_check_{stamp}_{machine}_{options.size}.json"
    markdown_path = json_path.with_suffix(".md")
    report: dict[str, Any] = {"environment": env, "device": options.device, "size": options.size,
                              "sizes": asdict(SIZES[options.size]), "budget_s": options.budget_s,
                              "time_boxes_s": TIME_BOX_S, "parts": {}}
    work = Path(options.work_dir) if options.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = started + options.budget_s - REPORT_MARGIN_S
    try:
        for name in options.parts:
            left = deadline - time.perf_counter()
            if left < MIN_PART_S:
                report["parts"][name] = {"status": "skipped", "error": f"budget spent ({left:.0f} s left)"}
                continue
            # The last part takes whatever is left; the others stop at their own box. The boxes are GPU estimates:
            # on a CPU (a smoke run of this script, where the tiny DAG alone took 3-5 minutes on 2 busy cores) only
            # the budget bounds a part.
            boxed = name != options.parts[-1] and options.device == "cuda"
            seconds = min(TIME_BOX_S[name], left) if boxed else left
            report["parts"][name] = run_part(name, seconds, options, work)
            report["total_seconds"] = time.perf_counter() - started
            write_report(report, json_path, markdown_path)
    finally:
        if not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - started
    write_report(report, json_path, markdown_path)
    print()
    print(markdown_path.read_text(), end="")
    print(f"\nwritten to {json_path} and {markdown_path.name} in {report['total_seconds']:.0f} s")
    return 0 if all(result["status"] == "ok" for result in report["parts"].values()) else 1


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: the sizes for a GPU; tiny: a few steps of everything, to check the script on a CPU")
    parser.add_argument("--out-dir", default=str(REPO_ROOT / "benchmarks" / "results"),
                        help="folder for the JSON and Markdown files")
    parser.add_argument("--budget-s", type=float, default=550,
                        help="seconds for all parts together; a part that would start with less than "
                             f"{MIN_PART_S} s left is skipped")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--work-dir", default=None,
                        help="folder for the parts' models, data and DAG run, kept afterwards (default: a temporary "
                             "folder, deleted)")
    # Used by the script itself to run one part in a child process.
    parser.add_argument("--run-part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    parser.add_argument("--part-deadline", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    chosen = [name.strip() for name in options.parts.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown or not chosen:
        parser.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")
    options.parts = [name for name in PARTS if name in chosen]
    if options.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if options.run_part:
        return run_part_here(options)
    return run_all(options)


if __name__ == "__main__":
    sys.exit(main())
