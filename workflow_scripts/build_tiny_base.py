"""Adapter: build the tiny Stable Diffusion base model of diffusion.pretrained: {build: tiny}, its VAE trained on
the clean training images."""
import json
import time

from bibaddiff.data import read_dataset
from bibaddiff.diffusion.tiny import build_tiny_base
from bibaddiff.utils import run_logged, set_threads


def main(snakemake):
    set_threads(snakemake.threads)
    started = time.perf_counter()
    dataset = read_dataset(snakemake.input.train)
    description = build_tiny_base(snakemake.output.model, snakemake.params.settings, dataset.images)
    description["seconds"] = round(time.perf_counter() - started, 1)
    with open(snakemake.output.description, "w") as handle:
        json.dump({"settings": snakemake.params.settings, **description}, handle, indent=2)
    print(f"wrote {snakemake.output.model}: VAE reconstruction MSE {description.get('reconstruction_mse', 'n/a')}, "
          f"scaling factor {description.get('scaling_factor', 'n/a')}, {description['seconds']} s")


run_logged(snakemake.log[0], main, snakemake)
