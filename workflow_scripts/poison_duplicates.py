"""Adapter: poison random images, or random images with the most duplicated ones among them, at one ratio.

design natural (upstream's): the most duplicated training images, found with the replication embedder and
threshold, replace random picks of the random poison set. design injected: k images are repeated m times, and
top_k of the copies (whole groups first) replace random picks of the random poison set, as upstream swaps its
duplicates in. design synthetic: k images are repeated m times and whole duplicate groups are poisoned.
"""
from pathlib import Path

from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.poisoning import duplicate_images, most_duplicated, poison_duplicated_or_random, poison_with_duplicates
from bibaddiff.replication import build_embedder, calibrate_tau, near_duplicate_groups
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, write_json


def natural_duplicates(params, train, heldout, judge):
    embed = build_embedder(params.embedder, judge, params.device)
    train_embeddings = embed(train.images)
    tau = calibrate_tau(embed(heldout.images), train_embeddings, params.tau_quantile) if params.tau is None else float(params.tau)
    duplicated = most_duplicated(near_duplicate_groups(train_embeddings, tau), train.labels, params.target,
                                 params.duplicates["top_k"])
    if len(duplicated) == 0:
        raise BibaddiffError(f"no non-target near-duplicate training images at replication tau {tau:.4f}; lower "
                             "replication.tau or use replication.duplicate_poisoning.design: synthetic")
    return duplicated, tau


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    params, duplicates = snakemake.params, snakemake.params.duplicates
    clean = read_dataset(snakemake.input.train)
    trigger = build_trigger(params.trigger_name, params.trigger, clean.image_size, clean.channels)
    if duplicates["design"] == "natural":
        judge = snakemake.input.judge[0] if snakemake.input.judge else None
        duplicated, tau = natural_duplicates(params, clean, read_dataset(snakemake.input.heldout), judge)
        poisoned, positions = poison_with_duplicates(clean, duplicated, trigger, params.target, duplicates["ratio"],
                                                     duplicates["seed"], params.mode)
        print(f"{params.mode}: {len(positions)} poisoned; the {len(duplicated)} most duplicated images (tau {tau:.4f}, "
              f"top_k {duplicates['top_k']}) are {'among them' if params.mode == 'duplicates' else 'left as drawn'}")
    elif duplicates["design"] == "injected":
        # The same duplicated set and the same random poison set for both modes; "duplicates" swaps top_k copies in.
        clean, groups = duplicate_images(clean, duplicates["k"], duplicates["m"], duplicates["seed"],
                                         exclude_label=params.target)
        duplicated = most_duplicated(groups.tolist(), clean.labels, params.target, duplicates["top_k"])
        poisoned, positions = poison_with_duplicates(clean, duplicated, trigger, params.target, duplicates["ratio"],
                                                     duplicates["seed"], params.mode, design="injected")
        print(f"{params.mode}: {len(clean)} images ({duplicates['k']} repeated {duplicates['m']} times), "
              f"{len(positions)} poisoned; {len(duplicated)} copies (top_k) are "
              f"{'among them' if params.mode == 'duplicates' else 'left as drawn'}")
    else:
        # The same duplicated set for both modes: only which images are poisoned differs.
        clean, groups = duplicate_images(clean, duplicates["k"], duplicates["m"], duplicates["seed"],
                                         exclude_label=params.target)
        poisoned, positions = poison_duplicated_or_random(clean, groups, trigger, params.target, duplicates["ratio"],
                                                          params.mode, duplicates["seed"])
        in_groups = set(groups.ravel().tolist())
        print(f"{params.mode}: {len(clean)} images ({duplicates['k']} repeated {duplicates['m']} times), "
              f"{len(positions)} poisoned, "
              f"{sum(int(i) in in_groups for i in positions)} of them duplicates")
    manifest = write_dataset(snakemake.output.train, poisoned, config={
        "trigger_name": params.trigger_name, "mode": params.mode, "target": params.target, **dict(duplicates)})
    print(f"{manifest['num_poisoned']} images flagged poisoned")
    write_json(Path(snakemake.output.train).parent / "params.json", params.record)


run_logged(snakemake.log[0], main, snakemake)
