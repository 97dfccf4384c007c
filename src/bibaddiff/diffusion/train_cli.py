"""Command line for training one DDPM: ``python -m bibaddiff.diffusion.train_cli`` (or under ``accelerate launch``).

The workflow's train_diffusion rule runs this through a shell command, so that the same command line works for
one process and, under ``accelerate launch --num_processes N``, for N GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bibaddiff.data import read_dataset
from bibaddiff.diffusion.train import TrainSettings, train_ddpm
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import set_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", required=True, help="dataset folder written by bibaddiff (PNG + metadata.jsonl)")
    parser.add_argument("--output", required=True, help="model folder to write (unet/, scheduler/, training.json)")
    parser.add_argument("--state-dir", required=True, help="resumable training state; kept across preempted runs")
    parser.add_argument("--settings", required=True, help='JSON: {"training": {...}, "model": {...}}')
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (state is saved)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            settings_json = json.loads(args.settings)
        except json.JSONDecodeError as error:
            raise BibaddiffError(f"--settings is not valid JSON ({error.msg})") from None
        set_threads(args.threads)
        settings = TrainSettings.from_config(settings_json.get("training", {}), settings_json.get("model", {}))
        stats = train_ddpm(read_dataset(args.train_data), args.output, args.state_dir, settings, seed=args.seed,
                           device=args.device, stop_after=args.stop_after)
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"trained {stats['steps']} of {stats['target_steps']} steps at {stats['steps_per_second']} steps/s, "
          f"final loss {stats['final_loss']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
