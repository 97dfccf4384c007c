"""Adapter: a trigger detector's threshold, false- and true-positive counts per cell (rule calibrate_trigger_judge)."""
from bibaddiff.calibration import calibrate_on_generations, calibrate_on_heldout
from bibaddiff.data import read_dataset
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.judges import load_judge
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    params, trigger_name = snakemake.params, snakemake.wildcards.trigger
    heldout = read_dataset(snakemake.input.heldout)
    trigger = build_trigger(trigger_name, params.trigger, heldout.image_size, heldout.channels)
    model, _ = load_judge(snakemake.input.judge, params.device)
    if snakemake.input.cells:
        cells = [{**cell, "path": path} for cell, path in zip(params.cells, snakemake.input.cells)]
        rows = calibrate_on_generations(model, trigger, cells, params.target_fpr, params.seed)
    else:
        rows = calibrate_on_heldout(model, trigger, params.cells, heldout.images, params.seed)
    write_json(snakemake.output.calibration, {"trigger": trigger_name, "judge": snakemake.input.judge,
                                               "detector_negatives": params.negatives, "target_fpr": params.target_fpr,
                                               "rows": rows})
    for row in rows:
        print(f"{trigger_name} x0-{row['x0_clipping']} c{row['condition']} s{row['guidance']:g}: threshold "
              f"{row['threshold']:.3f}, FPR {row['false_positives']}/{row['n']}, TPR {row['true_positives']}/{row['n']} "
              f"({row['source']})")


run_logged(snakemake.log[0], main, snakemake)
