"""Adapter: FID and KID (and the CLIP score for text-to-image models) of one model's all-class generations."""
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.quality import model_quality
from bibaddiff.utils import run_logged, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    inputs, params = snakemake.input, snakemake.params
    result = model_quality(inputs.generated, inputs.reference, inputs.judge, params.settings, params.device,
                           inputs.get("inception_weights"), inputs.get("model"))
    write_json(snakemake.output.result, {
        "model": params.model, "attack": snakemake.wildcards.attack, "trigger": params.attack["trigger"],
        "poison_ratio": params.attack["ratio"], "seed": int(snakemake.wildcards.seed),
        "guidance": params.settings["guidance"], "n": result["n"], "generated": inputs.generated,
        "rows": result["rows"]})


run_logged(snakemake.log[0], main, snakemake)
