"""Adapter: the trigger-amplification table and its figures from every model's metrics."""
from bibaddiff.report import (amplification_table, amplification_vs_ratio, plot_amplification_vs_ratio,
                              plot_generation_groups, plot_sample_grids, plot_target_vs_guidance, plot_trigger_ratio)
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    table = amplification_table([read_json(path) for path in snakemake.input.metrics], snakemake.params.accuracy_floor)
    table.to_csv(snakemake.output.table, index=False)
    plot_trigger_ratio(table, snakemake.output.ratio_figure)
    plot_generation_groups(table, snakemake.output.groups_figure)
    plot_target_vs_guidance(table, snakemake.output.guidance_figure)
    by_ratio = amplification_vs_ratio(table)
    by_ratio.to_csv(snakemake.output.ratio_table, index=False)
    plot_amplification_vs_ratio(by_ratio, snakemake.output.by_ratio_figure)
    grids = {}
    for key, path in zip(snakemake.params.grid_keys, snakemake.input.grids):
        attack, scale = key.split("|")
        grids[(attack, float(scale))] = path
    plot_sample_grids(grids, snakemake.output.samples, f"target class {snakemake.params.target}: first 64 generations")
    flagged = table[table.judge_warning != ""]
    if len(flagged):
        print(f"WARNING: {len(flagged)} summary rows are flagged: {sorted(set(flagged.judge_warning))}")
    pooled = table[(table.seed == "pooled") & table.is_target]
    print(pooled[["attack", "trigger", "x0_clipping", "guidance", "n", "trigger_ratio", "trigger_ratio_low", "trigger_ratio_high",
                  "training_share", "amplification", "G1_ratio", "G2_ratio"]].to_string(index=False))


run_logged(snakemake.log[0], main, snakemake)
