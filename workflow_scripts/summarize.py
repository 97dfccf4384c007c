"""Adapter: the trigger-amplification table, the detectors' calibration table and their figures."""
from bibaddiff.report.amplification import write_amplification_summary
from bibaddiff.utils import run_logged


def main(snakemake):
    params = snakemake.params
    write_amplification_summary(snakemake.input.metrics, snakemake.input.calibrations,
                                list(zip(params.grids, snakemake.input.grids, strict=True)), dict(snakemake.output.items()),
                                accuracy_floor=params.accuracy_floor, bootstrap_samples=params.bootstrap_samples,
                                seed=params.seed, target=params.target, duplicate_attacks=params.duplicate_attacks,
                                origins=params.origins)


run_logged(snakemake.log[0], main, snakemake)
