"""Adapter: the three castle-wall tables and their figures."""
from bibaddiff.report.defenses import write_defense_summary
from bibaddiff.utils import run_logged


def main(snakemake):
    inputs, params = snakemake.input, snakemake.params
    write_defense_summary(inputs.detection, inputs.detection_items, inputs.classifiers, inputs.diffusion_classifier,
                          params.sets, params.attacks, dict(snakemake.output.items()), seed=params.seed,
                          origins=params.origins)


run_logged(snakemake.log[0], main, snakemake)
