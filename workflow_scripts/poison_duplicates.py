"""Adapter: poison random images, or random images with the most duplicated ones among them, at one ratio
(bibaddiff.poisoning.duplicate_poisoning: designs natural, injected and synthetic)."""
from pathlib import Path

from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.poisoning import duplicate_poisoning
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    params, duplicates = snakemake.params, snakemake.params.duplicates
    clean = read_dataset(snakemake.input.train)
    trigger = build_trigger(params.trigger_name, params.trigger, clean.image_size, clean.channels)
    poisoned, described = duplicate_poisoning(
        clean, read_dataset(snakemake.input.heldout), trigger, params.target, params.mode, duplicates,
        embedder=params.embedder, judge=snakemake.input.judge[0] if snakemake.input.judge else None, tau=params.tau,
        tau_quantile=params.tau_quantile, device=params.device)
    print(described)
    manifest = write_dataset(snakemake.output.train, poisoned, config={
        "trigger_name": params.trigger_name, "mode": params.mode, "target": params.target, **dict(duplicates)})
    print(f"{manifest['num_poisoned']} images flagged poisoned")
    write_json(Path(snakemake.output.train).parent / "params.json", params.record)


run_logged(snakemake.log[0], main, snakemake)
