"""Adapter: the replication table, the similarity distributions and the most similar (generated, training) pairs."""
import numpy as np

from bibaddiff.data import read_records
from bibaddiff.report import plot_replication_pairs, plot_replication_similarity, replication_table
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    inputs, params = snakemake.input, snakemake.params
    summaries = [read_json(path) for path in inputs.summaries]
    neighbours = [dict(np.load(path)) for path in inputs.neighbours]
    table = replication_table(summaries)
    table.to_csv(snakemake.output.table, index=False)
    plot_replication_similarity(summaries, neighbours, params.target, snakemake.output.similarity)
    per_model = params.cells_per_model
    cells = [list(inputs.cells[k * per_model:(k + 1) * per_model]) for k in range(len(summaries))]
    trains = {path: read_records(path) for path in dict.fromkeys(inputs.trains)}
    plot_replication_pairs(summaries, neighbours, cells, [trains[path] for path in inputs.trains], params.target,
                           snakemake.output.pairs)
    print(table.to_string(index=False))


run_logged(snakemake.log[0], main, snakemake)
