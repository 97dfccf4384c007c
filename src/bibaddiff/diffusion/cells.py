"""Generate many cells (one condition, guidance scale and x0-clipping mode each) of one model in one process.

A cell is kept when its files are complete and newer than the model, so that a job asked for all cells of a model
loads the model once and generates only the cells that are missing, cut short or older than the model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bibaddiff.diffusion.imported import verify_import
from bibaddiff.diffusion.timesteps import DEFAULT_PRECISION, DEFAULT_TIMESTEPS
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import write_atomically


@dataclass(frozen=True)
class Cell:
    x0_clipping: str
    condition: int
    guidance: float
    images: Path
    grid: Path


@dataclass(frozen=True)
class CellSettings:
    num_images: int
    ddim_steps: int
    seed: int
    batch_size: int
    timesteps: str = DEFAULT_TIMESTEPS  # generation.timesteps (bibaddiff.diffusion.timesteps)
    precision: str = DEFAULT_PRECISION  # generation.precision


def newest_file_time(directory: str | os.PathLike) -> float:
    """The newest modification time of any file in a folder (a model is as new as its newest weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BibaddiffError(f"{directory}: model folder not found")
    times = [path.stat().st_mtime for path in directory.rglob("*") if path.is_file()]
    if not times:
        raise BibaddiffError(f"{directory}: model folder is empty")
    return max(times)


def cell_is_current(cell: Cell, num_images: int, model_time: float) -> bool:
    """Both files exist, are newer than the model, and the images are a whole uint8 array of ``num_images``."""
    if not (cell.images.is_file() and cell.grid.is_file()):
        return False
    if min(cell.images.stat().st_mtime, cell.grid.stat().st_mtime) < model_time:
        return False
    try:
        # Memory-mapping reads only the header, and fails when the file is shorter than the header says.
        images = np.load(cell.images, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError):
        return False
    return images.dtype == np.uint8 and images.ndim == 4 and len(images) == num_images


def generate_cells(model_dir: str | os.PathLike, cells: Sequence[Cell], settings: CellSettings, device,
                   log: Callable[[str], None] = print) -> dict[str, list[Cell]]:
    """Generate every cell that is not current, loading the model only if one is needed. Each cell's images and its
    PNG grid are written atomically, so a job stopped part-way leaves whole cells that the next job keeps.

    Returns the cells generated and the cells kept."""
    if not cells:
        raise BibaddiffError(f"{model_dir}: no cells to generate")
    if settings.num_images < 1 or settings.ddim_steps < 1 or settings.batch_size < 1:
        raise BibaddiffError(f"generation settings must be positive; got {settings}")
    model_time = newest_file_time(model_dir)
    missing = [cell for cell in cells if not cell_is_current(cell, settings.num_images, model_time)]
    kept = [cell for cell in cells if cell not in missing]
    log(f"{model_dir}: {len(kept)} of {len(cells)} cells are current and kept; generating {len(missing)}")
    if missing:
        from bibaddiff.diffusion.model import load_diffusion_model
        from bibaddiff.images import image_grid

        model = load_diffusion_model(model_dir, device).use_sampler(settings.timesteps, settings.precision)
        scale = max(1, 64 // model.info.image_size)
        for number, cell in enumerate(missing, 1):
            started = time.perf_counter()
            images = model.generate(cell.condition, cell.guidance, settings.num_images, settings.ddim_steps,
                                    settings.seed, settings.batch_size, x0_clipping=cell.x0_clipping)
            write_atomically(cell.images, lambda tmp: np.save(tmp, images))
            grid = image_grid(images, columns=8, max_images=64, scale=scale)
            write_atomically(cell.grid, lambda tmp: grid.save(tmp, format="PNG"))
            log(f"[{number}/{len(missing)}] wrote {len(images)} images to {cell.images} "
                f"({time.perf_counter() - started:.1f} s)")
        try:
            # An imported model's files may have changed while it generated: then these cells are not of the files
            # the run placed them by, and go.
            verify_import(model_dir)
        except BibaddiffError:
            for cell in missing:
                cell.images.unlink(missing_ok=True)
                cell.grid.unlink(missing_ok=True)
            raise
    return {"generated": missing, "kept": kept}
