"""Adapter: generate the cells of one generate job (each a uint8 .npy plus a PNG grid), loading the model once."""
import re
from pathlib import Path

from bibaddiff.diffusion.cells import Cell, CellSettings, generate_cells
from bibaddiff.diffusion.timesteps import sampler_options
from bibaddiff.errors import BibaddiffError
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.utils import run_logged, select_device, set_threads, write_json

# rules/common.smk's generated(): .../x0-{sampler}/c{condition}_s{guidance}.npy
CELL_FILE = re.compile(r"x0-(?P<sampler>[a-z_]+)/c(?P<condition>\d+)_s(?P<guidance>\d+(?:\.\d+)?)\.npy$")


def cell_of(images: str, grid: str) -> Cell:
    match = CELL_FILE.search(Path(images).as_posix())
    if match is None or Path(grid).with_suffix(".npy") != Path(images):
        raise BibaddiffError(f"{images}: not a generated cell's path (expected .../x0-<mode>/c<class>_s<scale>.npy)")
    return Cell(match["sampler"], int(match["condition"]), float(match["guidance"]), Path(images), Path(grid))


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    sampling = snakemake.params.sampling
    cells = [cell_of(images, grid) for images, grid in zip(snakemake.output.images, snakemake.output.grids)]
    settings = CellSettings(sampling["num_images"], sampling["ddim_steps"], sampling["seed"],
                            snakemake.resources.images_per_batch, **sampler_options(sampling))
    generate_cells(snakemake.input.model, cells, settings, select_device(snakemake.params.device))
    # The cells of one model and sampling settings share a folder; its params.json says what they are (every job
    # writes the same record, atomically).
    write_json(Path(cells[0].images).parents[1] / "params.json", snakemake.params.record)


run_logged(snakemake.log[0], main, snakemake)
