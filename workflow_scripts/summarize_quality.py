"""Adapter: the generation-quality table of every model and the figure of FID against the poisoning ratio."""
from bibaddiff.report.quality import write_quality_summary
from bibaddiff.utils import run_logged


def main(snakemake):
    write_quality_summary(snakemake.input.results, dict(snakemake.output.items()), snakemake.params.series,
                          snakemake.params.origins)


run_logged(snakemake.log[0], main, snakemake)
