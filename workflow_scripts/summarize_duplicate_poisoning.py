"""Adapter: random vs duplicated-image poisoning, from the trigger-amplification table (same judges, intervals)."""
import pandas as pd

from bibaddiff.report import duplicate_poisoning_table
from bibaddiff.utils import run_logged


def main(snakemake):
    table = duplicate_poisoning_table(pd.read_csv(snakemake.input.table), snakemake.params.attacks)
    table.to_csv(snakemake.output.table, index=False)
    print(table.to_string(index=False))


run_logged(snakemake.log[0], main, snakemake)
