"""Adapter: nearest training images of every generated cell of one model, with a calibrated threshold tau."""
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.replication.stage import write_model_replication
from bibaddiff.utils import run_logged


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    params, inputs = snakemake.params, snakemake.input
    write_model_replication(
        snakemake.output.summary, snakemake.output.neighbours,
        {"attack": snakemake.wildcards.attack, "seed": int(snakemake.wildcards.seed)},
        list(zip(params.cells, inputs.cells, strict=True)), inputs.train, inputs.heldout, params.embedder,
        inputs.judge[0] if inputs.judge else None, params.tau, params.tau_quantile, params.device)


run_logged(snakemake.log[0], main, snakemake)
