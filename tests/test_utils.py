"""Tests of bibaddiff.utils: what a rule's log holds when its job fails, and the device a job asks for."""

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
