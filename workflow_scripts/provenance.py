"""Adapter: the experiment's provenance (resolved config, package versions, git commit, time) next to its tables."""
from bibaddiff.provenance import write_provenance
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    imported = list(snakemake.input.imported)
    environment = write_provenance(snakemake.params.config, snakemake.params.source_dir, snakemake.output.config,
                                   snakemake.output.environment,
                                   experiment_outputs=[path for path in snakemake.input if path not in imported],
                                   stages=snakemake.params.stages, imported=[read_json(path) for path in imported])
    print(f"experiment {environment['experiment']}: commit {environment['git']['commit']}, {environment['written_at']}")


run_logged(snakemake.log[0], main, snakemake)
