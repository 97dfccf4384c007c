"""Command line for training one diffusion model: ``python -m bibaddiff.diffusion.train_cli`` (or under
``accelerate launch``).

The workflow's train_diffusion rule runs this through a shell command, so that the same command line works for
one process and, under ``accelerate launch --num_processes N``, for N GPUs. The settings' ``kind`` says what is
trained: a DDPM from scratch on a dataset folder (the default), or a Stable Diffusion UNet fine-tuned on a latent
file written by the encode_latents rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bibaddiff.data import read_dataset
from bibaddiff.diffusion.train import TrainSettings, train_ddpm
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import PEAK_MEMORY_PREFIX, disk_full, peak_memory_mb, set_threads, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", required=True,
                        help="dataset folder written by bibaddiff (PNG + metadata.jsonl), or a latent file for stable_diffusion")
    parser.add_argument("--output", required=True, help="model folder to write (unet/, scheduler/, training.json)")
    parser.add_argument("--state-dir", required=True, help="resumable training state; kept across preempted runs")
    parser.add_argument("--settings", required=True,
                        help='JSON: {"training": {...}, "model": {...}} or {"kind": "stable_diffusion", "training": {...}, "pretrained": {...}}')
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (state is saved)")
    parser.add_argument("--record", default=None,
                        help="JSON written to <output>/params.json once trained: what the model is (the workflow's stage record)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            settings_json = json.loads(args.settings)
        except json.JSONDecodeError as error:
            raise BibaddiffError(f"--settings is not valid JSON ({error.msg})") from None
        try:
            record = None if args.record is None else json.loads(args.record)
        except json.JSONDecodeError as error:
            raise BibaddiffError(f"--record is not valid JSON ({error.msg})") from None
        set_threads(args.threads)
        kind = settings_json.get("kind", "ddpm")
        if kind == "stable_diffusion":
            from bibaddiff.diffusion.finetune import FinetuneSettings, finetune_stable_diffusion
            from bibaddiff.diffusion.stable import load_latents

            settings = FinetuneSettings.from_config(settings_json.get("training", {}))
            stats = finetune_stable_diffusion(load_latents(args.train_data), settings_json.get("pretrained", {}),
                                              args.output, args.state_dir, settings, seed=args.seed,
                                              device=args.device, stop_after=args.stop_after)
        elif kind == "ddpm":
            settings = TrainSettings.from_config(settings_json.get("training", {}), settings_json.get("model", {}))
            stats = train_ddpm(read_dataset(args.train_data), args.output, args.state_dir, settings, seed=args.seed,
                               device=args.device, stop_after=args.stop_after)
        else:
            raise BibaddiffError(f"--settings: kind must be ddpm or stable_diffusion; got {kind!r}")
        if record is not None and stats["steps"] >= stats["target_steps"]:
            write_json(Path(args.output) / "params.json", record)
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if disk_full(error, args.state_dir):
            print(f"error: no space left on device ({error}); free space and rerun: training resumes from its last "
                  "saved state", file=sys.stderr)
        raise
    print(f"trained {stats['steps']} of {stats['target_steps']} steps at {stats['steps_per_second']} steps/s, "
          f"final loss {stats['final_loss']}", file=sys.stderr)
    print(f"{PEAK_MEMORY_PREFIX} {peak_memory_mb():.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
