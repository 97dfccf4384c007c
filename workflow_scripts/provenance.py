"""Adapter: the experiment's provenance (resolved config, package versions, git commit, time) next to its tables."""
from bibaddiff.provenance import write_provenance
from bibaddiff.utils import run_logged


def main(snakemake):
    environment = write_provenance(snakemake.params.config, snakemake.params.source_dir, snakemake.output.config,
                                   snakemake.output.environment, experiment_outputs=list(snakemake.input),
                                   stages=snakemake.params.stages)
    print(f"experiment {environment['experiment']}: commit {environment['git']['commit']}, {environment['written_at']}")


run_logged(snakemake.log[0], main, snakemake)
