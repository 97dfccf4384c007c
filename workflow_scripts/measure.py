"""Adapter: judge every generated cell of one model and write its G1-G4 counts and training shares."""
from bibaddiff.data import read_records
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.measure import measure_cells
from bibaddiff.metrics import StatedShare
from bibaddiff.utils import read_json, run_logged, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    params = snakemake.params
    cells = [{**cell, "path": path} for cell, path in zip(params.cells, snakemake.input.cells)]
    # A trigger without a detector (the relabel-only control) is judged for content only.
    detectors = {name: None for name in params.triggers} | dict(zip(params.detected_triggers, snakemake.input.trigger_judges))
    calibrations = {name: read_json(path) for name, path in zip(params.detected_triggers, snakemake.input.calibrations)}
    if snakemake.input.train:
        training = read_records(snakemake.input.train)
    else:
        # An imported model whose training set is not at hand: the share its description states.
        stated = read_json(snakemake.input.imported[0])["training_data"]["training_share"]
        training = StatedShare(stated, params.target, params.ratio)
    records = measure_cells(cells, training, snakemake.input.content_judge, detectors, params.device, calibrations)
    write_json(snakemake.output.metrics, {
        "attack": snakemake.wildcards.attack, "seed": int(snakemake.wildcards.seed), "target": params.target,
        "poison_ratio": params.ratio, "records": records,
    })


run_logged(snakemake.log[0], main, snakemake)
