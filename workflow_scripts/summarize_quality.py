"""Adapter: the generation-quality table of every model and the figure of FID against the poisoning ratio."""
from bibaddiff.report import plot_quality_vs_ratio, quality_table
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    table = quality_table([read_json(path) for path in snakemake.input.results])
    table.to_csv(snakemake.output.table, index=False)
    plot_quality_vs_ratio(table, snakemake.output.figure, snakemake.params.series)
    print(table.to_string(index=False))


run_logged(snakemake.log[0], main, snakemake)
