"""Adapter: what the experiment imported (its attack, origin, the digests of its files, its training data)."""
from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    write_json(snakemake.output.description, snakemake.params.description)
    print(f"{snakemake.params.description['name']}: {snakemake.params.description['origin']}")


run_logged(snakemake.log[0], main, snakemake)
