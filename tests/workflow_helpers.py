"""Running snakemake on tiny configs in temporary folders, for the workflow tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake_command(workdir: Path, *args: str, configfile: Path | None) -> list[str]:
    """The repository's workflow run in ``workdir`` on 2 cores, as the tests start it."""
    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", "2", *args]
    return command + (["--configfile", str(configfile)] if configfile is not None else [])


def saved_step(state_dir: Path) -> int:
    """The step of the training state in ``state_dir``; 0 while none is written (or one is being written)."""
    import torch

    from bibaddiff.diffusion.trainer import STATE_FILE

    try:
        return int(torch.load(Path(state_dir) / STATE_FILE, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def snakemake(workdir: Path, *args: str, configfile: Path | None = TINY_CONFIG, timeout: int = 900,
              check: bool = True) -> subprocess.CompletedProcess:
    # timeout(1) rather than subprocess's timeout alone: it also ends snakemake's children (see shared notes).
    command = ["timeout", "-k", "10", str(timeout), *snakemake_command(workdir, *args, configfile=configfile)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def start_snakemake(workdir: Path, *args: str, configfile: Path = TINY_CONFIG,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    """A run in the background, in its own process group, so that a test can act while it works and kill snakemake
    together with its jobs, as a dying node or a scheduler's SIGKILL does."""
    command = snakemake_command(workdir, *args, configfile=configfile)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=None if env is None else {**os.environ, **env})


def wait_for(condition, what: str, run: subprocess.Popen, timeout: float = 600) -> None:
    """Poll ``condition()`` while ``run`` works; fail, killing the run, if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if run.poll() is not None:
            raise AssertionError(f"snakemake ended ({run.returncode}) before {what}:\n{run.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(run.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's "Job stats" table; empty when nothing is to be done."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def write_config(path: Path, base: Path = TINY_CONFIG, **changes) -> Path:
    """A copy of ``base`` with dotted keys changed, e.g. ``generation__guidance_scales=[1]``."""
    config = yaml.safe_load(base.read_text())
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config))
    return path


def stage(folder: Path, name: str) -> Path:
    """The one stage folder ``<name>-<12-hex settings digest>`` in ``folder`` (e.g. data/, models/)."""
    matches = [path for path in Path(folder).iterdir() if re.fullmatch(re.escape(name) + "-[0-9a-f]{12}", path.name)]
    assert len(matches) == 1, f"{folder}: expected one stage {name}-<digest>, found {[p.name for p in matches]}"
    return matches[0]


def model_folder(results: Path, dataset: str, attack: str, seed: int = 0) -> Path:
    """results/<dataset>/models/<attack>-<digest>/train-<digest>/seed<k> (one training setting in the folder)."""
    [model] = (stage(results / dataset / "models", attack)).glob(f"train-*/seed{seed}")
    return model


def cell_folder(results: Path, dataset: str, attack: str, seed: int = 0) -> Path:
    """The folder that holds the x0-<sampler>/ cell folders of one model (one sampling setting in the folder)."""
    [cells] = (stage(results / dataset / "generated", attack)).glob(f"train-*/seed{seed}/gen-*")
    return cells



def planned_output(workdir: Path, configfile: Path, pattern: str) -> str:
    """The path, as a dry run of ``configfile`` plans it, of the one output that matches ``pattern`` (a regular
    expression), so that a test can ask for one stage whose folder name carries a settings digest."""
    text = snakemake(workdir, "-n", configfile=configfile).stdout
    found = sorted({path for line in text.splitlines() if line.strip().startswith("output:")
                    for path in line.split(":", 1)[1].replace(",", " ").split() if re.fullmatch(pattern, path)})
    assert len(found) == 1, f"{pattern}: planned outputs {found}"
    return found[0]


def fill_placeholders(config: dict, tmp_path) -> dict:
    """The shipped config with its CHANGE_ME paths pointed at tiny local stand-ins."""
    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
    from idx_helpers import FASHION_MNIST_FILES, write_idx_set
    from sd_helpers import write_resnet_weights

    dataset = config["dataset"]
    if dataset["source"] == "cifar10":
        (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
        dataset["root"] = str(tmp_path / "cifar")
    elif dataset["source"] == "imagefolder":
        names = dataset.get("class_names") or {}
        target = config["target"]
        # Two empty-image classes, or every named class; a target given by name must be one of them.
        folders = list(names) or sorted({"a_control", target if isinstance(target, str) else "b"})
        for split in ("train", "val"):
            for name in folders:
                folder = tmp_path / "folder" / split / name
                folder.mkdir(parents=True)
                # Enough held-out images for STRIP's 100 published partners, and training images for the
                # published FCT's fine-tuning batch of 100.
                for i in range(50 if split == "train" else 60):
                    (folder / f"{i}.png").write_bytes(b"")
        dataset["root"] = str(tmp_path / "folder")
    elif dataset["source"] in ("fashion_mnist", "idx") and not Path(dataset.get("root", FASHION_MNIST_FILES)).is_dir():
        # Fashion-MNIST is an optional system package: where it is missing, a small IDX set stands in for it.
        write_idx_set(tmp_path / "idx")
        dataset["root"] = str(tmp_path / "idx")
    if config["diffusion"].get("kind") == "stable_diffusion" and not config["diffusion"]["pretrained"].get("build"):
        config["diffusion"]["pretrained"]["path"] = str(write_tiny_stable_diffusion(tmp_path / "tiny-sd"))
    if config["judges"].get("pretrained_weights"):
        path = tmp_path / f"{config['judges']['architecture']}.pt"
        config["judges"]["pretrained_weights"] = str(write_resnet_weights(path, config["judges"]["architecture"]))
    return config
