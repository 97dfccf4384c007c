"""Adapter: poison the clean training set with one trigger at one ratio."""
from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger
from pathlib import Path

from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    clean = read_dataset(snakemake.input.train)
    params = snakemake.params
    trigger = build_trigger(params.trigger_name, params.trigger, clean.image_size, clean.channels)
    poisoned, indices = poison_dataset(clean, trigger, params.target, params.ratio, params.seed)
    config = {"trigger_name": params.trigger_name, "trigger": dict(params.trigger), "ratio": params.ratio,
              "target": params.target, "seed": params.seed}
    manifest = write_dataset(snakemake.output.train, poisoned, config=config)
    write_json(Path(snakemake.output.train).parent / "params.json", params.record)
    share = manifest["poisoned_per_class"][params.target] / manifest["counts_per_class"][params.target]
    print(f"poisoned {len(indices)} of {len(clean)} images; {share:.1%} of class {params.target} carry the trigger")


run_logged(snakemake.log[0], main, snakemake)
