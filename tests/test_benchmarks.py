"""The GPU benchmark script must keep running: its tiny CPU variant exercises every code path it times."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from workflow_helpers import REPO


def test_sd_throughput_tiny_run_writes_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_throughput.py"), "--size", "tiny",
                             "--device", "cpu", "--out", str(out), "--steps", "1", "--warmup", "1",
                             "--gen-steps", "2", "--gen-images", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    text = json.dumps(report)
    assert "OOM" not in text and '"error"' not in text
    assert "| Fine-tuning |" in result.stdout and "| Generation |" in result.stdout


def test_trigger_survival_reports_the_error_inside_and_outside_each_trigger(tmp_path):
    from bibaddiff.data import ImageDataset, write_dataset
    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion

    model = write_tiny_stable_diffusion(tmp_path / "tiny-sd", image_size=16)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    write_dataset(tmp_path / "images", ImageDataset(images, np.arange(6) % 2, ["a", "b"]))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trigger_survival.py"), "--pretrained",
                             str(model), "--images", str(tmp_path / "images"),
                             "--trigger", 'white={"type": "patch", "pattern": "white", "size": 4}',
                             "--trigger", 'none={"type": "relabel"}'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| white |")]
    assert len(rows) == 1 and "| none |" not in result.stdout
    share, inside, outside = (float(cell.strip().rstrip("%")) for cell in rows[0].strip("|").split("|")[1:])
    # A 4x4 square of a 16x16 image, where random pixels are almost never already white.
    assert abs(share - 6.2) < 0.2 and 0 <= inside <= 255 and 0 <= outside <= 255


def test_trigger_survival_without_a_trigger_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trigger_survival.py"), "--pretrained",
                             str(tmp_path), "--images", str(tmp_path / "missing")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_planning_time_prints_one_row_per_try_with_the_job_count():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "planning_time.py"),
                             str(REPO / "tests" / "configs" / "tiny.yaml"), "--tries", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-1].split("|")
    jobs, wall, cpu, rss = int(row[3]), float(row[4]), float(row[5]), float(row[6])
    assert jobs > 10 and wall > 0 and cpu > 0 and rss > 50
