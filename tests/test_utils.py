"""What a job does with bad inputs it did not make: its log when it fails, the device it was handed, a cell cut short."""

from __future__ import annotations

import pytest

from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import run_logged, select_device


def test_a_user_error_ends_the_job_with_one_line_in_its_log(tmp_path, capsys):
    def bad_config():
        raise BibaddiffError("generation.ddim_steps must be at least 1; got 0")

    with pytest.raises(SystemExit):
        run_logged(tmp_path / "rule.log", bad_config)
    assert (tmp_path / "rule.log").read_text() == "error: generation.ddim_steps must be at least 1; got 0\n"
    assert "ddim_steps" in capsys.readouterr().err


def test_any_other_failure_leaves_its_traceback_in_the_rules_log(tmp_path):
    def broken():
        print("started")
        raise RuntimeError("out of memory on the node")

    with pytest.raises(RuntimeError):
        run_logged(tmp_path / "rule.log", broken)
    text = (tmp_path / "rule.log").read_text()
    assert text.startswith("started\n")
    assert "Traceback" in text and "RuntimeError: out of memory on the node" in text


def test_cuda_without_a_usable_device_says_what_the_scheduler_handed_the_job(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(BibaddiffError, match=r"no CUDA device \(CUDA_VISIBLE_DEVICES=3\)"):
        select_device("cuda")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(BibaddiffError, match=r"CUDA_VISIBLE_DEVICES=unset"):
        select_device("cuda")
    assert select_device("auto").type == "cpu"
    with pytest.raises(BibaddiffError, match="device must be one of auto, cpu, cuda; got 'gpu'"):
        select_device("gpu")


def test_a_generated_cell_cut_short_or_of_the_wrong_kind_is_named_not_measured(tmp_path):
    import numpy as np

    from bibaddiff.images import load_generated

    cell = tmp_path / "c6_s1.npy"
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.save(cell, images)
    np.testing.assert_array_equal(load_generated(cell), images)
    whole = cell.read_bytes()
    cell.write_bytes(whole[: len(whole) - 100])  # the node died while the cell was written
    with pytest.raises(BibaddiffError, match=r"c6_s1.npy: unreadable or cut short"):
        load_generated(cell)
    np.save(cell, images.astype(np.float32))
    with pytest.raises(BibaddiffError, match=r"c6_s1.npy: expected uint8 images \(N, H, W, 1 or 3\); got float32"):
        load_generated(cell)
    with pytest.raises(BibaddiffError, match=r"missing.npy: generated images not found"):
        load_generated(tmp_path / "missing.npy")


def test_a_full_disk_is_told_from_other_errors(tmp_path, monkeypatch):
    import errno

    import bibaddiff.utils as utils

    assert utils.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("failed to save")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert utils.disk_full(wrapped)
    assert utils.disk_full(RuntimeError("IoError(Os { code: 28, kind: StorageFull })"))
    assert not utils.disk_full(RuntimeError("iostream error"), tmp_path / "not" / "yet" / "made")
    monkeypatch.setattr(utils, "FULL_DISK_BYTES", 1 << 62)  # every disk counts as full
    assert utils.disk_full(RuntimeError("iostream error"), tmp_path / "not" / "yet" / "made")


def test_fail_once_fails_only_the_first_job_of_the_named_rule(tmp_path, monkeypatch):
    from bibaddiff.utils import FAIL_ONCE_VARIABLE, run_logged

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ONCE_VARIABLE, f"measure:{marker}")
    assert run_logged(tmp_path / "logs" / "generate" / "a.log", lambda: "ran") == "ran"
    with pytest.raises(RuntimeError, match="on purpose"):
        run_logged(tmp_path / "logs" / "measure" / "a.log", lambda: "ran")
    assert marker.exists() and run_logged(tmp_path / "logs" / "measure" / "a.log", lambda: "ran") == "ran"


def test_a_logged_job_ends_its_log_with_its_peak_memory(tmp_path):
    from bibaddiff.utils import PEAK_MEMORY_PREFIX

    def hold_memory():
        block = bytearray(300 * 1024 * 1024)  # 300 MB, touched so that it is resident
        block[::4096] = b"x" * len(block[::4096])
        return len(block)

    run_logged(tmp_path / "rule.log", hold_memory)
    last = (tmp_path / "rule.log").read_text().splitlines()[-1]
    assert last.startswith(PEAK_MEMORY_PREFIX) and last.endswith(" MB")
    assert float(last.removeprefix(PEAK_MEMORY_PREFIX).removesuffix(" MB")) >= 300


# ------------------------------------------------------------------------------------------ running moments


def test_running_moments_equal_the_all_at_once_statistics():
    import numpy as np

    from bibaddiff.utils import RunningMoments

    rng = np.random.default_rng(0)
    # A mean far from zero beside a small spread: sums of x and x^2 would lose the spread to cancellation.
    values = 1e4 + rng.normal(0, 0.5, size=(37, 3, 5, 5)).astype(np.float32)
    moments = RunningMoments()
    for start, stop in ((0, 1), (1, 1), (1, 8), (8, 30), (30, 37)):  # uneven batches, one of them empty
        moments.update(values[start:stop])
    everything = values.astype(np.float64)
    assert moments.count == values.size
    assert moments.mean == pytest.approx(everything.mean(), rel=1e-14)
    assert moments.std() == pytest.approx(everything.std(ddof=1), rel=1e-12)
    assert moments.std(ddof=0) == pytest.approx(everything.std(), rel=1e-12)


def test_running_moments_name_bad_values_and_too_few():
    import numpy as np

    from bibaddiff.utils import RunningMoments

    moments = RunningMoments("the latents")
    with pytest.raises(BibaddiffError, match="the latents hold NaN"):
        moments.update(np.array([1.0, np.nan]))
    moments.update([2.0])
    with pytest.raises(BibaddiffError, match="needs more than 1 value"):
        moments.std()
    assert moments.std(ddof=0) == 0.0
    with pytest.raises(BibaddiffError, match="ddof"):
        moments.std(ddof=-1)
