"""Adapter: poison the clean training set with one trigger at one ratio."""
from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.poisoning import poison_dataset
from bibaddiff.triggers import build_trigger
from pathlib import Path

from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    clean = read_dataset(snakemake.input.train)
    p = snakemake.params
    trigger = build_trigger(p.trigger_name, p.trigger, clean.image_size, clean.channels)
    poisoned, indices = poison_dataset(clean, trigger, p.target, p.ratio, p.seed)
    config = {"trigger_name": p.trigger_name, "trigger": dict(p.trigger), "ratio": p.ratio, "target": p.target, "seed": p.seed}
    manifest = write_dataset(snakemake.output.train, poisoned, config=config)
    write_json(Path(snakemake.output.train).parent / "params.json", p.record)
    share = manifest["poisoned_per_class"][p.target] / manifest["counts_per_class"][p.target]
    print(f"poisoned {len(indices)} of {len(clean)} images; {share:.1%} of class {p.target} carry the trigger")


run_logged(snakemake.log[0], main, snakemake)
