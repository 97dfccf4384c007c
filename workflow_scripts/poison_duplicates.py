"""Adapter: repeat k training images m times, then poison random images or the duplicated ones at one ratio."""
from bibaddiff.data import read_dataset, write_dataset
from bibaddiff.replication import duplicate_images, poison_duplicated_or_random
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged


def main(snakemake):
    p, d = snakemake.params, snakemake.params.duplicates
    clean = read_dataset(snakemake.input.train)
    trigger = build_trigger(p.trigger_name, p.trigger, clean.image_size, clean.channels)
    # The same duplicated set for both modes: only which images are poisoned differs.
    duplicated, groups = duplicate_images(clean, d["k"], d["m"], d["seed"], exclude_label=p.target)
    poisoned, positions = poison_duplicated_or_random(duplicated, groups, trigger, p.target, d["ratio"], p.mode, d["seed"])
    manifest = write_dataset(snakemake.output.train, poisoned, config={"trigger_name": p.trigger_name, "mode": p.mode,
                                                                      "target": p.target, **dict(d)})
    in_groups = set(groups.ravel().tolist())
    print(f"{p.mode}: {len(duplicated)} images ({d['k']} repeated {d['m']} times), {len(positions)} poisoned, "
          f"{sum(int(i) in in_groups for i in positions)} of them duplicates; {manifest['num_poisoned']} flagged")


run_logged(snakemake.log[0], main, snakemake)
