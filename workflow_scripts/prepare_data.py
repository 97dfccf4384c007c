"""Adapter: load the configured dataset source and write the clean train / held-out splits."""
from bibaddiff.data import load_source, write_dataset
from pathlib import Path

from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    train, heldout = load_source(snakemake.params.dataset)
    for part, path in ((train, snakemake.output.train), (heldout, snakemake.output.heldout)):
        manifest = write_dataset(path, part, config=snakemake.params.dataset)
        print(f"{path}: {manifest['num_images']} images, per class {manifest['counts_per_class']}")
    write_json(Path(snakemake.output.train).parent / "params.json", snakemake.params.record)


run_logged(snakemake.log[0], main, snakemake)
