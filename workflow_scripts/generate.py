"""Adapter: generate the cells of one generate job (each a uint8 .npy plus a PNG grid), loading the model once."""
from pathlib import Path

from bibaddiff.diffusion.cells import Cell, CellSettings, generate_cells
from bibaddiff.diffusion.timesteps import sampler_options
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.utils import run_logged, select_device, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    sampling = snakemake.params.sampling
    # The job's cells come as params, in the order of its files.
    cells = [Cell(cell["x0_clipping"], cell["condition"], cell["guidance"], Path(images), Path(grid))
             for cell, images, grid in zip(snakemake.params.cells, snakemake.output.images, snakemake.output.grids,
                                           strict=True)]
    settings = CellSettings(sampling["num_images"], sampling["ddim_steps"], sampling["seed"],
                            snakemake.resources.images_per_batch, **sampler_options(sampling))
    generate_cells(snakemake.input.model, cells, settings, select_device(snakemake.params.device))
    # The cells of one model and sampling settings share a folder; its params.json says what they are (every job
    # writes the same record, atomically).
    write_json(Path(cells[0].images).parents[1] / "params.json", snakemake.params.record)


run_logged(snakemake.log[0], main, snakemake)
