"""Does a trigger survive a Stable Diffusion VAE? Stamp it on held-out images, encode and decode them with the VAE,
and compare the pixels the trigger changed with their reconstruction.

A latent diffusion model can only learn a trigger that its VAE can represent, so this is the first check when a
trigger is not learned. Example (the base model that configs/digits-sd-cpu.yaml builds):

    python benchmarks/trigger_survival.py --pretrained results/digits-sd/base/tiny-<digest> \
        --images results/digits-sd/data/clean-<digest>/heldout --config configs/digits-sd-cpu.yaml \
        --trigger 'checker3={"type": "patch", "pattern": "checker", "size": 3}'

Prints a Markdown table: per trigger, the mean absolute error (0-255) inside the trigger's pixels and elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from bibaddiff.data import read_dataset
from bibaddiff.images import to_model_space, to_uint8
from bibaddiff.diffusion.stable import load_components
from bibaddiff.errors import BibaddiffError
from bibaddiff.triggers import build_trigger


def round_trip(images: np.ndarray, vae: torch.nn.Module, batch_size: int = 128) -> np.ndarray:
    """uint8 images through the VAE's posterior mean and decoder, back to uint8."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = to_model_space(images[start:start + batch_size])
            out.append(to_uint8(vae.decode(vae.encode(pixels).latent_dist.mean).sample))
    return np.concatenate(out)


def survival(images: np.ndarray, trigger, vae: torch.nn.Module) -> dict[str, float]:
    stamped = trigger.apply(images)
    changed = np.any(stamped != images, axis=-1)
    if not changed.any():
        raise BibaddiffError(f"trigger {trigger.name} changes no pixel of these images")
    error = np.abs(round_trip(stamped, vae).astype(np.int16) - stamped.astype(np.int16)).mean(axis=-1)
    return {"inside": float(error[changed].mean()), "outside": float(error[~changed].mean()),
            "pixels": float(changed.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="a diffusers Stable Diffusion folder")
    parser.add_argument("--images", required=True, help="a dataset folder written by the workflow (RGB)")
    parser.add_argument("--config", help="a workflow config: its triggers are measured")
    parser.add_argument("--trigger", action="append", default=[], help="NAME=JSON spec of a further trigger")
    parser.add_argument("--max-images", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        dataset = read_dataset(args.images)
        images = dataset.images[:args.max_images]
        specs = dict(yaml.safe_load(Path(args.config).read_text())["triggers"]) if args.config else {}
        for item in args.trigger:
            name, _, spec = item.partition("=")
            specs[name] = json.loads(spec)
        if not specs:
            raise BibaddiffError("no trigger to measure: give --config or --trigger")
        vae = load_components({"path": args.pretrained}).vae.eval()
        rows = {name: survival(images, build_trigger(name, spec, dataset.image_size, dataset.channels), vae)
                for name, spec in specs.items() if spec.get("type") != "relabel"}
    except (BibaddiffError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(images)} images from {args.images}, VAE of {args.pretrained}")
    print("| trigger | share of pixels | error inside the trigger (of 255) | error elsewhere (of 255) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['pixels']:.1%} | {row['inside']:.1f} | {row['outside']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
