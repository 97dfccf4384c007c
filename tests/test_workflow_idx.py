"""The DAG on an IDX source: a tiny MNIST-style folder written here, and Fashion-MNIST's real files where installed."""

from __future__ import annotations

import numpy as np
import pytest

from bibaddiff.data import read_dataset
from idx_helpers import FASHION_MNIST_FILES, write_idx_set
from workflow_helpers import planned_jobs, snakemake, stage, write_config

# Runs snakemake (a DAG): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# 6 x 6 images padded into tiny.yaml's 8 px: a 1-pixel black border. 200 training images (20 per class, tiny.yaml's
# cap) and 60 held out (capped at 5 per class).
NATIVE_SIZE = 6


def idx_tiny_config(tmp_path, **changes):
    written = write_idx_set(tmp_path / "idx", num_train=200, num_heldout=60, rows=NATIVE_SIZE, cols=NATIVE_SIZE)
    config = write_config(tmp_path / "idx.yaml", dataset__name="tinyidx", dataset__source="idx",
                          dataset__root=str(tmp_path / "idx"), experiment="tinyidx", **changes)
    return config, written


def test_dry_run_on_an_idx_folder_plans_every_stage(tmp_path):
    config, _ = idx_tiny_config(tmp_path)
    jobs = planned_jobs(snakemake(tmp_path / "work", "-n", configfile=config))
    assert jobs["prepare_data"] == 1 and jobs["train_diffusion"] >= 2 and jobs["summarize"] == 1


@pytest.mark.skipif(not (FASHION_MNIST_FILES / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_dry_run_on_the_real_fashion_mnist_files(tmp_path):
    config = write_config(tmp_path / "fashion.yaml", dataset={"name": "fashion", "source": "fashion_mnist",
                                                              "image_size": 32}, target="Ankle boot",
                          experiment="fashion")
    result = snakemake(tmp_path / "work", "-n", configfile=config)
    jobs = planned_jobs(result)
    assert jobs["prepare_data"] == 1 and jobs["train_diffusion"] >= 2 and jobs["summarize"] == 1
    assert "/c9_s" in result.stdout + result.stderr  # the target, Ankle boot, is class 9


def test_fashion_mnist_without_its_files_stops_with_one_line(tmp_path):
    config = write_config(tmp_path / "fashion.yaml", dataset={"name": "fashion", "source": "fashion_mnist",
                                                              "root": str(tmp_path / "absent"), "image_size": 32})
    result = snakemake(tmp_path / "work", "-n", configfile=config, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid config:")]
    assert len(errors) == 1, result.stderr
    assert f"dataset.root: {tmp_path / 'absent'} is not a folder; install Debian's package dataset-fashion-mnist" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "work" / "results").exists()


def test_tiny_run_on_an_idx_folder(tmp_path):
    # The attack's stages only: tiny.yaml's own run covers the defences, replication and quality on the digits, and
    # the IDX source reaches them through the same clean folders.
    config, written = idx_tiny_config(tmp_path, generation__x0_clipping="none", defenses__enabled=False,
                                      replication__enabled=False, quality__enabled=False)
    snakemake(tmp_path / "work", configfile=config)
    results = tmp_path / "work" / "results"
    clean = stage(results / "tinyidx" / "data", "clean")
    train = read_dataset(clean / "train")
    assert train.images.shape == (200, 8, 8, 1) and train.manifest["source"] == "idx"
    np.testing.assert_array_equal(train.images[:, 1:7, 1:7, 0], written["train_images"][train.source_index])
    assert not train.images[:, 0].any() and not train.images[:, :, 0].any()
    heldout = read_dataset(clean / "heldout")
    np.testing.assert_array_equal(np.bincount(heldout.labels, minlength=10), [5] * 10)
    summary = results / "experiments" / "tinyidx" / "summary"
    for name in ("trigger_amplification.csv", "judge_calibration.csv", "samples_target.png"):
        assert (summary / name).stat().st_size > 0, name
