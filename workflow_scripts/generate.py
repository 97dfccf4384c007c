"""Adapter: generate one (model, condition, guidance) cell of images, as uint8 .npy plus a PNG grid."""
import numpy as np

from bibaddiff.diffusion import load_diffusion_model
from bibaddiff.report import image_grid
from pathlib import Path

from bibaddiff.utils import run_logged, select_device, set_threads, write_json


def main(snakemake):
    set_threads(snakemake.threads)
    sampling = snakemake.params.sampling
    model = load_diffusion_model(snakemake.input.model, select_device(snakemake.params.device))
    cell = snakemake.wildcards
    images = model.generate(int(cell.condition), float(cell.guidance), sampling["num_images"], sampling["ddim_steps"],
                            sampling["seed"], snakemake.resources.images_per_batch, x0_clipping=cell.sampler)
    np.save(snakemake.output.images, images)
    # The cells of one model and sampling settings share a folder; its params.json says what they are (every cell's
    # job writes the same record, atomically).
    write_json(Path(snakemake.output.images).parents[1] / "params.json", snakemake.params.record)
    image_grid(images, columns=8, max_images=64, scale=max(1, 64 // model.info.image_size)).save(snakemake.output.grid)
    print(f"wrote {len(images)} images to {snakemake.output.images}")


run_logged(snakemake.log[0], main, snakemake)
