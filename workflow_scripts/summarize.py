"""Adapter: the trigger-amplification table and its figures from every model's metrics."""
from bibaddiff.report import (amplification_table, amplification_vs_ratio, calibration_table, plot_amplification_vs_ratio,
                              plot_calibration, plot_generation_groups, plot_sample_grids, plot_target_vs_guidance,
                              plot_trigger_ratio)
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    params = snakemake.params
    calibration = calibration_table([read_json(path) for path in snakemake.input.calibrations])
    calibration.to_csv(snakemake.output.calibration_table, index=False)
    plot_calibration(calibration, snakemake.output.calibration_figure)
    print(calibration[["detector", "source", "x0_clipping", "condition", "guidance", "n", "fpr", "fpr_high", "tpr",
                       "tpr_detector_range"]].to_string(index=False))
    for detector in sorted(set(calibration.loc[~calibration.correction_usable.astype(bool), "detector"])):
        print(f"WARNING: trigger detector {detector!r} has a TPR below 0.5 on generations in some cells: their "
              "trigger ratios are not corrected (flagged in correction_warning)")
    table = amplification_table([read_json(path) for path in snakemake.input.metrics], params.accuracy_floor,
                                params.bootstrap_samples, params.seed)
    table.to_csv(snakemake.output.table, index=False)
    plot_trigger_ratio(table, snakemake.output.ratio_figure)
    plot_generation_groups(table, snakemake.output.groups_figure)
    plot_target_vs_guidance(table, snakemake.output.guidance_figure)
    by_ratio = amplification_vs_ratio(table, params.duplicate_attacks)
    by_ratio.to_csv(snakemake.output.ratio_table, index=False)
    plot_amplification_vs_ratio(by_ratio, snakemake.output.by_ratio_figure)
    grids = {(shown["attack"], shown["guidance"]): path
             for shown, path in zip(params.grids, snakemake.input.grids, strict=True)}
    plot_sample_grids(grids, snakemake.output.samples, f"target class {snakemake.params.target}: first 64 generations")
    flagged = table[table.judge_warning != ""]
    if len(flagged):
        print(f"WARNING: {len(flagged)} summary rows are flagged: {sorted(set(flagged.judge_warning))}")
    pooled = table[(table.seed == "pooled") & table.is_target]
    print(pooled[["attack", "trigger", "x0_clipping", "guidance", "n", "trigger_ratio", "trigger_ratio_low", "trigger_ratio_high",
                  "trigger_ratio_corrected", "training_share", "amplification_corrected", "amplified", "G1_ratio",
                  "G2_ratio"]].to_string(index=False))


run_logged(snakemake.log[0], main, snakemake)
