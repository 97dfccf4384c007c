"""Adapter: the replication table, the similarity distributions and the most similar (generated, training) pairs."""
from bibaddiff.report.replication import write_replication_summary
from bibaddiff.utils import run_logged


def main(snakemake):
    inputs, params = snakemake.input, snakemake.params
    write_replication_summary(inputs.summaries, inputs.neighbours, inputs.trains, inputs.cells, params.cells_per_model,
                              params.target, dict(snakemake.output.items()), params.origins)


run_logged(snakemake.log[0], main, snakemake)
