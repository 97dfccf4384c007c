"""Adapter: one model's all-class generations for the quality stage, in the clean training set's class balance."""
from pathlib import Path

from bibaddiff.data import scaled_class_counts, write_dataset
from bibaddiff.diffusion import load_diffusion_model
from bibaddiff.diffusion.timesteps import sampler_options
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.quality import all_class_generations
from bibaddiff.utils import read_json, run_logged, select_device, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    sampling = snakemake.params.sampling
    # The counts are in the manifest: no need to decode the clean set's images.
    clean_counts = read_json(Path(snakemake.input.balance) / "manifest.json")["counts_per_class"]
    counts = scaled_class_counts(clean_counts, sampling["num_images"] or sum(clean_counts))
    model = load_diffusion_model(snakemake.input.model, select_device(snakemake.params.device))
    model.use_sampler(**sampler_options(sampling))
    dataset = all_class_generations(model, counts.tolist(), sampling["guidance"], sampling["ddim_steps"],
                                    sampling["seed"], snakemake.resources.images_per_batch,
                                    x0_clipping=sampling["x0_clipping"])
    manifest = write_dataset(snakemake.output.dataset, dataset, config={**sampling, "counts": counts.tolist()})
    write_json(Path(snakemake.output.dataset) / "params.json", {**sampling, "model": snakemake.input.model})
    print(f"generated {manifest['num_images']} images at s = {sampling['guidance']}: {manifest['counts_per_class']}")


run_logged(snakemake.log[0], main, snakemake)
