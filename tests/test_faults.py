"""Faults a cluster user meets, each survived with nothing lost: the whole snakemake process killed mid-stage, a
second run started in the same folder, a results disk that fills up, and files changed after they were written.
Every test runs the real workflow in a subprocess on a tiny config (no defences, replication or quality: the
stages they add are tested in test_workflow.py) and compares tables with an uninterrupted run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflow_helpers import cell_folder, snakemake, stage, start_snakemake, wait_for, write_config

# Runs snakemake (a DAG, minutes each): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def fault_config(path: Path) -> Path:
    return write_config(path, defenses__enabled=False, replication__enabled=False, quality__enabled=False,
                        generation__guidance_scales=[1], generation__other_conditions=[1],
                        generation__x0_clipping="none")


def job_started(workdir: Path, rule: str) -> bool:
    """A job of ``rule`` is running: its log (results/**/logs/<rule>/) exists."""
    return any((workdir / "results").glob(f"**/logs/{rule}/*"))


def tables(workdir: Path) -> dict[str, str]:
    summary = workdir / "results" / "experiments" / "tiny" / "summary"
    return {path.name: path.read_text() for path in sorted(summary.glob("*.csv"))}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return fault_config(tmp_path_factory.mktemp("faults") / "faults.yaml")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config):
    """One run that nothing interrupts, and a second run started in its folder while it works."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    first = start_snakemake(workdir, configfile=config)
    wait_for(lambda: any((workdir / ".snakemake" / "locks").glob("*")), "the first run locked its folder", first)
    second = snakemake(workdir, configfile=config, check=False, timeout=300)
    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output[-4000:]
    return workdir, second


def test_a_second_run_in_the_same_folder_stops_at_the_lock_and_the_first_finishes(uninterrupted):
    workdir, second = uninterrupted
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr
    assert {"trigger_amplification.csv", "amplification_vs_ratio.csv"} <= set(tables(workdir))


def test_sigkill_during_generation_measurement_and_summary_then_rerun_gives_the_same_tables(uninterrupted, config,
                                                                                           tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "killed"
    # From the finished data, judges and models on: the stages under test are made anew, and killed on the way.
    shutil.copytree(reference, workdir, symlinks=True)
    shutil.rmtree(workdir / "results" / "tiny" / "generated")
    shutil.rmtree(workdir / "results" / "experiments" / "tiny" / "summary")
    for rule in ("generate", "measure", "summarize"):
        for logs in (workdir / "results").glob(f"**/logs/{rule}"):
            shutil.rmtree(logs)
    for rule in ("generate", "measure", "summarize"):
        run = start_snakemake(workdir, configfile=config)
        wait_for(lambda: job_started(workdir, rule), f"a {rule} job started", run)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        # The README's commands after a kill: remove the dead run's lock, then the same command again.
        snakemake(workdir, "--unlock", configfile=config)
    rerun = snakemake(workdir, configfile=config)
    assert "Nothing to be done" not in rerun.stdout + rerun.stderr
    assert tables(workdir) == tables(reference)
    assert "Nothing to be done" in snakemake(workdir, "-n", configfile=config).stdout


def test_a_cut_generated_cell_or_an_edited_dataset_image_is_named_not_measured(uninterrupted, config, tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "edited"
    shutil.copytree(reference, workdir, symlinks=True)
    cell = next(cell_folder(workdir / "results", "tiny", "patch-p0.1").glob("x0-none/*.npy"))
    cell.write_bytes(cell.read_bytes()[:200])  # a node died while the file was written, after Snakemake saw it
    result = snakemake(workdir, "--forcerun", "measure", configfile=config, check=False)
    assert result.returncode != 0 and f"{cell.name}" in result.stdout + result.stderr

    shutil.rmtree(workdir)
    shutil.copytree(reference, workdir, symlinks=True)
    image = sorted((stage(workdir / "results" / "tiny" / "data", "patch-p0.1") / "train").glob("*.png"))[7]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0xFF  # one pixel changed by hand or by a faulty copy: still a valid PNG
    Image.fromarray(pixels).save(image)
    result = snakemake(workdir, "--forcerun", "train_diffusion", "--until", "train_diffusion", configfile=config,
                       check=False)
    assert result.returncode != 0
    assert f"{image.name} changed after the folder was written" in result.stdout + result.stderr


def mount_small_disk(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"mounting a tmpfs is refused in CI: {mounted.stderr.strip()}")
        pytest.skip(f"mounting a small file system is not allowed here: {mounted.stderr.strip()}")


def test_a_full_results_disk_names_the_rule_leaves_no_finished_corrupt_output_and_the_rerun_completes(
        uninterrupted, config, tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "full"
    results = workdir / "results"
    mount_small_disk(results, "16m")
    try:
        # Room for the data (1.9 MB on this file system), not for the judges and models: the disk fills mid-run.
        filler = results / "filler"
        free = os.statvfs(results).f_bavail * os.statvfs(results).f_frsize
        with open(filler, "wb") as handle:
            handle.truncate(0)
            for _ in range((free - 3_000_000) // 65536):
                handle.write(b"\1" * 65536)
        full = snakemake(workdir, configfile=config, check=False)
        text = full.stdout + full.stderr
        assert full.returncode != 0
        assert "Error in rule " in text and "error: no space left on device" in text
        # What a failed job wrote is removed by Snakemake, so no half-written file counts as done.
        assert "Nothing to be done" not in snakemake(workdir, "-n", configfile=config).stdout
        filler.unlink()
        snakemake(workdir, configfile=config)
        assert tables(workdir) == tables(reference)
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)
