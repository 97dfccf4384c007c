"""Adapter: random vs duplicated-image poisoning, from the trigger-amplification table (same judges, intervals)."""
from bibaddiff.report.replication import write_duplicate_poisoning_table
from bibaddiff.utils import run_logged


def main(snakemake):
    write_duplicate_poisoning_table(snakemake.input.table, snakemake.params.attacks, snakemake.output.table)


run_logged(snakemake.log[0], main, snakemake)
