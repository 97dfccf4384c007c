"""Adapter: poison random images, or random images with the most duplicated ones among them, at one ratio.

design natural (upstream's): the most duplicated training images, found with the replication embedder and
threshold, replace random picks of the random poison set. design synthetic: k images are repeated m times and
whole duplicate groups are poisoned.
"""
from pathlib import Path

from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.poisoning import duplicate_images, most_duplicated, poison_duplicated_or_random, poison_with_duplicates
from bibaddiff.replication import build_embedder, calibrate_tau, near_duplicate_groups
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, write_json


def natural_duplicates(p, train, heldout, judge):
    embed = build_embedder(p.embedder, judge, p.device)
    train_embeddings = embed(train.images)
    tau = calibrate_tau(embed(heldout.images), train_embeddings, p.tau_quantile) if p.tau is None else float(p.tau)
    duplicated = most_duplicated(near_duplicate_groups(train_embeddings, tau), train.labels, p.target,
                                 p.duplicates["top_k"])
    if len(duplicated) == 0:
        raise BibaddiffError(f"no non-target near-duplicate training images at replication tau {tau:.4f}; lower "
                             "replication.tau or use replication.duplicate_poisoning.design: synthetic")
    return duplicated, tau


def main(snakemake):
    p, d = snakemake.params, snakemake.params.duplicates
    clean = read_dataset(snakemake.input.train)
    trigger = build_trigger(p.trigger_name, p.trigger, clean.image_size, clean.channels)
    if d["design"] == "natural":
        judge = snakemake.input.judge[0] if snakemake.input.judge else None
        duplicated, tau = natural_duplicates(p, clean, read_dataset(snakemake.input.heldout), judge)
        poisoned, positions = poison_with_duplicates(clean, duplicated, trigger, p.target, d["ratio"], d["seed"], p.mode)
        print(f"{p.mode}: {len(positions)} poisoned; the {len(duplicated)} most duplicated images (tau {tau:.4f}, "
              f"top_k {d['top_k']}) are {'among them' if p.mode == 'duplicates' else 'left as drawn'}")
    else:
        # The same duplicated set for both modes: only which images are poisoned differs.
        clean, groups = duplicate_images(clean, d["k"], d["m"], d["seed"], exclude_label=p.target)
        poisoned, positions = poison_duplicated_or_random(clean, groups, trigger, p.target, d["ratio"], p.mode, d["seed"])
        in_groups = set(groups.ravel().tolist())
        print(f"{p.mode}: {len(clean)} images ({d['k']} repeated {d['m']} times), {len(positions)} poisoned, "
              f"{sum(int(i) in in_groups for i in positions)} of them duplicates")
    manifest = write_dataset(snakemake.output.train, poisoned, config={"trigger_name": p.trigger_name, "mode": p.mode,
                                                                      "target": p.target, **dict(d)})
    print(f"{manifest['num_poisoned']} images flagged poisoned")
    write_json(Path(snakemake.output.train).parent / "params.json", p.record)


run_logged(snakemake.log[0], main, snakemake)
