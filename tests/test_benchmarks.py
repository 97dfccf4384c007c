"""The GPU benchmark script must keep running: its tiny CPU variant exercises every code path it times."""

from __future__ import annotations

import json
import subprocess
import sys

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
