"""Adapter: encode one training set to VAE latents once, so that fine-tuning epochs do not rerun the VAE."""
from bibaddiff.data import read_dataset
from bibaddiff.diffusion.stable import encode_latents, load_components, save_latents
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.utils import run_logged, select_device, set_threads


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    params = snakemake.params
    dataset = read_dataset(snakemake.input.train)
    components = load_components(params.pretrained)
    latents = encode_latents(dataset, components, snakemake.resources.images_per_batch, select_device(params.device))
    save_latents(snakemake.output.latents, latents, dataset, params.pretrained)
    print(f"encoded {len(dataset)} images to latents of shape {tuple(latents['mean'].shape[1:])}")


run_logged(snakemake.log[0], main, snakemake)
