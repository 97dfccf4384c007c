"""DDPM training: resume after preemption gives the same model, including after SIGKILL, and multi-process runs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bibaddiff.data import load_source, write_dataset
from bibaddiff.diffusion.train import TrainSettings, train_ddpm
from bibaddiff.diffusion.trainer import STATE_FILE
from workflow_helpers import saved_step

MODEL = {"block_out_channels": [8, 16], "norm_num_groups": 4}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    train, _ = load_source({"source": "digits", "image_size": 8, "max_images_per_class": 10})
    folder = tmp_path_factory.mktemp("data") / "train"
    write_dataset(folder, train)
    return train, folder


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def test_resumed_training_equals_uninterrupted(tiny_data, tmp_path):
    dataset, _ = tiny_data
    settings = TrainSettings.from_config({"steps": 20, "batch_size": 8, "checkpoint_every": 4, "warmup_steps": 3}, MODEL)
    torch.set_num_threads(1)
    full = train_ddpm(dataset, tmp_path / "full", tmp_path / "full.state", settings, seed=3, progress=False)
    part = train_ddpm(dataset, tmp_path / "resumed", tmp_path / "resumed.state", settings, seed=3, stop_after=7, progress=False)
    assert not part["finished"] and not (tmp_path / "resumed").exists()
    rest = train_ddpm(dataset, tmp_path / "resumed", tmp_path / "resumed.state", settings, seed=3, progress=False)
    assert full["finished"] and rest["finished"] and rest["steps_this_run"] == 13
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")


def test_training_converts_one_batch_at_a_time_not_the_whole_set(tiny_data, tmp_path, monkeypatch):
    """The set stays uint8 in memory (as float32 it is 4x larger: 18 GB at the conversion's peak for 9,469 images at
    256 px, benchmarks/README.md); only each step's batch is converted."""
    import bibaddiff.diffusion.train as train_module

    converted = []
    original = train_module.to_model_space
    monkeypatch.setattr(train_module, "to_model_space", lambda images: converted.append(len(images)) or original(images))
    dataset, _ = tiny_data
    settings = TrainSettings.from_config({"steps": 3, "batch_size": 8, "warmup_steps": 1}, MODEL)
    train_ddpm(dataset, tmp_path / "model", tmp_path / "model.state", settings, seed=0, progress=False)
    assert converted == [8, 8, 8] and len(dataset) > 8


def test_state_of_another_setting_is_not_reused(tiny_data, tmp_path, caplog):
    dataset, _ = tiny_data
    first = TrainSettings.from_config({"steps": 6, "batch_size": 8, "checkpoint_every": 2}, MODEL)
    train_ddpm(dataset, tmp_path / "a", tmp_path / "state", first, seed=0, stop_after=4, progress=False)
    other = TrainSettings.from_config({"steps": 6, "batch_size": 8, "checkpoint_every": 2, "learning_rate": 0.01}, MODEL)
    with caplog.at_level(logging.WARNING):
        stats = train_ddpm(dataset, tmp_path / "a", tmp_path / "state", other, seed=0, progress=False)
    assert stats["steps_this_run"] == 6
    assert f"ignoring {tmp_path / 'state' / STATE_FILE}: it was written for other data" in caplog.text


class CodeInAState:
    """What a malicious or foreign state file may hold: an object whose unpickling calls a function."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_state_holding_code_is_ignored_without_running_it(tiny_data, tmp_path, caplog):
    dataset, _ = tiny_data
    settings = TrainSettings.from_config({"steps": 4, "batch_size": 8, "checkpoint_every": 2}, MODEL)
    (tmp_path / "state").mkdir()
    marker = tmp_path / "the-state-ran-code"
    torch.save({"step": 2, "losses": CodeInAState(marker)}, tmp_path / "state" / STATE_FILE)
    with caplog.at_level(logging.WARNING):
        stats = train_ddpm(dataset, tmp_path / "model", tmp_path / "state", settings, seed=0, progress=False)
    assert not marker.exists()
    assert stats["steps_this_run"] == 4 and "cannot be read as a training state" in caplog.text


def cli(data: Path, out: Path, state: Path, steps: int, *extra: str, launcher: list[str] | None = None) -> list[str]:
    settings = json.dumps({"training": {"steps": steps, "batch_size": 8, "checkpoint_every": 10, "warmup_steps": 5},
                           "model": MODEL})
    return [*(launcher or [sys.executable]), "-m", "bibaddiff.diffusion.train_cli", "--train-data", str(data),
            "--output", str(out), "--state-dir", str(state), "--settings", settings, "--seed", "1",
            "--device", "cpu", "--threads", "1", *extra]


@pytest.mark.slow  # about a minute or more of CPU: the slow tier, not the quick loop
def test_sigkill_then_rerun_continues_from_last_state(tiny_data, tmp_path):
    _, data = tiny_data
    steps = 400
    reference = subprocess.run(cli(data, tmp_path / "reference", tmp_path / "reference.state", steps),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    job = subprocess.Popen(cli(data, tmp_path / "model", tmp_path / "model.state", steps),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while saved_step(tmp_path / "model.state") < 40 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    killed_at = saved_step(tmp_path / "model.state")
    assert 40 <= killed_at < steps, f"the job was not killed part-way (state at step {killed_at})"
    assert not (tmp_path / "model" / "unet").exists()

    rerun = subprocess.run(cli(data, tmp_path / "model", tmp_path / "model.state", steps),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from step {killed_at}" in rerun.stderr
    stats = json.loads((tmp_path / "model" / "training.json").read_text())
    assert stats["steps"] == steps and stats["steps_this_run"] == steps - killed_at
    assert_same_weights(tmp_path / "reference", tmp_path / "model")


def test_bad_settings_give_one_line_error(tiny_data, tmp_path):
    _, data = tiny_data
    command = cli(data, tmp_path / "m", tmp_path / "s", 5)
    command[command.index("--settings") + 1] = '{"training": {"steps": 5, "label_dropout": 1.5}}'
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: diffusion.training.label_dropout must lie in [0, 1); got 1.5"


def test_two_processes_under_accelerate_launch(tiny_data, tmp_path):
    _, data = tiny_data
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    result = subprocess.run(cli(data, tmp_path / "ddp", tmp_path / "ddp.state", 12, launcher=launcher),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert stats["processes"] == 2 and stats["steps"] == 12


def test_trainer_defaults_are_the_schemas():
    from bibaddiff.schema import training_defaults
    from bibaddiff.diffusion.finetune import FinetuneSettings

    for settings, kind in ((TrainSettings(), "ddpm"), (FinetuneSettings(), "stable_diffusion")):
        defaults = training_defaults(kind)
        fields = {name for name in settings.__dataclass_fields__ if name not in ("steps", "model", "max_grad_norm")}
        assert fields <= set(defaults), fields - set(defaults)
        for name in fields:
            assert getattr(settings, name) == defaults[name], (kind, name)
    assert FinetuneSettings().learning_rate == 1e-4 and TrainSettings().learning_rate == 1e-3


def test_settings_without_steps_are_refused():
    from bibaddiff.diffusion.finetune import FinetuneSettings
    from bibaddiff.errors import BibaddiffError

    for cls in (TrainSettings, FinetuneSettings):
        with pytest.raises(BibaddiffError, match=r"diffusion\.training\.steps is missing"):
            cls.from_config({"batch_size": 8})


def test_a_model_folder_with_missing_cut_or_pickled_weights_stops_the_loader_in_one_line(tiny_data, tmp_path):
    from bibaddiff.diffusion.model import load_diffusion_model
    from bibaddiff.errors import BibaddiffError

    dataset, _ = tiny_data
    settings = TrainSettings.from_config({"steps": 2, "batch_size": 8}, MODEL)
    train_ddpm(dataset, tmp_path / "model", tmp_path / "state", settings, seed=0, progress=False)
    load_diffusion_model(tmp_path / "model")
    weights_file = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    complete = weights_file.read_bytes()

    weights_file.write_bytes(complete[: len(complete) // 2])  # a node died while the file was written
    with pytest.raises(BibaddiffError, match=r"diffusion_pytorch_model.safetensors: not a complete safetensors file"):
        load_diffusion_model(tmp_path / "model")

    weights_file.unlink()
    torch.save({}, tmp_path / "model" / "unet" / "diffusion_pytorch_model.bin")  # pickled weights run code when loaded
    with pytest.raises(BibaddiffError, match=r"unet: no .safetensors weights \(found: config.json, diffusion_pytorch_model.bin\)"):
        load_diffusion_model(tmp_path / "model")
