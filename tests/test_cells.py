"""Many cells per generate job: the model is loaded once, current cells are kept, missing, cut or stale ones made."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bibaddiff.diffusion.base import ModelInfo
from bibaddiff.diffusion.cells import Cell, CellSettings, cell_is_current, generate_cells, newest_file_time
from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model
from bibaddiff.errors import BibaddiffError

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = CellSettings(num_images=3, ddim_steps=2, seed=7, batch_size=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    unet = build_unet(8, 1, 3, block_out_channels=[8, 16], norm_num_groups=4)
    save_model(directory, unet, build_scheduler(), ModelInfo(3, ["a", "b", "c"], 8, 1))
    return directory


def cells_in(folder: Path) -> list[Cell]:
    return [Cell("none", condition, guidance, folder / f"c{condition}_s{guidance:g}.npy",
                 folder / f"c{condition}_s{guidance:g}.png")
            for condition in (0, 2) for guidance in (0.0, 1.5)]


def age(path: Path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_all_cells_made_then_kept_and_equal_to_one_cell_jobs(model_dir, tmp_path):
    cells = cells_in(tmp_path / "many")
    logged = []
    first = generate_cells(model_dir, cells, SETTINGS, "cpu", log=logged.append)
    assert first == {"generated": cells, "kept": []}
    assert all(cell_is_current(cell, SETTINGS.num_images, newest_file_time(model_dir)) for cell in cells)
    # One job per cell, as cells_per_job: cell runs it, gives the same images: each cell's noise has its own seed.
    for cell in cells:
        alone = Cell(cell.x0_clipping, cell.condition, cell.guidance, tmp_path / "alone.npy", tmp_path / "alone.png")
        generate_cells(model_dir, [alone], SETTINGS, "cpu")
        np.testing.assert_array_equal(np.load(alone.images), np.load(cell.images))
        alone.images.unlink()
    second = generate_cells(model_dir, cells, SETTINGS, "cpu", log=logged.append)
    assert second == {"generated": [], "kept": cells}
    assert logged[-1].endswith("4 of 4 cells are current and kept; generating 0")
    assert not list((tmp_path / "many").glob("*.tmp*"))


def test_only_missing_cut_and_stale_cells_are_made_again(model_dir, tmp_path):
    cells = cells_in(tmp_path)
    generate_cells(model_dir, cells, SETTINGS, "cpu")
    before = {cell.images: (cell.images.stat().st_mtime_ns, np.load(cell.images)) for cell in cells}
    cells[0].images.unlink()                                          # deleted
    cells[1].images.write_bytes(cells[1].images.read_bytes()[:200])  # cut short by a dying node
    cells[2].grid.unlink()                                            # half of a cell
    for path in (cells[3].images, cells[3].grid):                     # older than the model: it was retrained
        age(path, 10 ** 6)
    result = generate_cells(model_dir, cells, SETTINGS, "cpu")
    assert result["generated"] == cells and result["kept"] == []
    for cell in cells:
        np.testing.assert_array_equal(np.load(cell.images), before[cell.images][1])
    # A current cell is left as it is, not rewritten.
    mtime = cells[0].images.stat().st_mtime_ns
    cells[1].images.unlink()
    assert generate_cells(model_dir, cells, SETTINGS, "cpu")["generated"] == [cells[1]]
    assert cells[0].images.stat().st_mtime_ns == mtime


def test_wrong_number_of_images_is_not_current(model_dir, tmp_path):
    cell = cells_in(tmp_path)[0]
    generate_cells(model_dir, [cell], SETTINGS, "cpu")
    more = CellSettings(num_images=4, ddim_steps=2, seed=7, batch_size=2)
    assert not cell_is_current(cell, more.num_images, newest_file_time(model_dir))
    assert generate_cells(model_dir, [cell], more, "cpu")["generated"] == [cell]
    assert np.load(cell.images).shape[0] == 4


def test_bad_input_names_the_problem(model_dir, tmp_path):
    with pytest.raises(BibaddiffError, match="no cells"):
        generate_cells(model_dir, [], SETTINGS, "cpu")
    with pytest.raises(BibaddiffError, match="model folder not found"):
        generate_cells(tmp_path / "nothing", cells_in(tmp_path), SETTINGS, "cpu")
    with pytest.raises(BibaddiffError, match="must be positive"):
        generate_cells(model_dir, cells_in(tmp_path), CellSettings(0, 2, 7, 2), "cpu")
