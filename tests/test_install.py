"""A non-editable install: the wheel carries everything the package reads (the config schema above all), so that
`pip install .` validates configs and plans the workflow without the source checkout on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from workflow_helpers import REPO

pytestmark = pytest.mark.slow

SHIPPED_CONFIGS = sorted([REPO / "config.yaml", *(REPO / "configs").glob("*.yaml"),
                          *(REPO / "tests" / "configs").glob("*.yaml")])

# Prints, per config, "ok" or the one-line error; both installs must say the same.
VALIDATE = """
import json, sys, yaml, bibaddiff
from bibaddiff.config import validate_config
from bibaddiff.errors import BibaddiffError
outcomes = {"package": bibaddiff.__file__}
for path in sys.argv[1:]:
    try:
        validate_config(yaml.safe_load(open(path)))
        outcomes[path] = "ok"
    except BibaddiffError as error:
        outcomes[path] = str(error)
print(json.dumps(outcomes))
"""


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # No PYTHONPATH: a source tree on it would stand in for the installed package (and pip would take its
    # metadata for an installed bibaddiff).
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": "", **(env or {})})
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with the package installed from its wheel. The dependencies (torch, diffusers, snakemake) come
    from this interpreter's site-packages through a .pth file; its editable-install hook is not read from there
    (.pth files are processed only in site directories), so `bibaddiff` can only come from the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and egg-info into the folder it builds, which must not be the
    # checkout.
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(root / "dist"), str(source)], cwd=root)
    wheels = list((root / "dist").glob("bibaddiff-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    # Installed before the dependencies' path is added: pip would otherwise find this interpreter's (editable)
    # bibaddiff and call the requirement satisfied.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         str(wheels[0])], cwd=root)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=root).stdout.strip())
    assert (site / "bibaddiff" / "config.schema.yaml").is_file(), sorted(p.name for p in site.iterdir())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_carries_the_schema_and_validates_every_shipped_config_as_the_checkout_does(wheel_venv, tmp_path):
    configs = [str(path) for path in SHIPPED_CONFIGS]
    # Run outside the checkout, so that nothing can reach the source tree.
    installed = json.loads(run([str(wheel_venv / "bin" / "python"), "-c", VALIDATE, *configs], cwd=tmp_path).stdout)
    checkout = json.loads(run([sys.executable, "-c", VALIDATE, *configs], cwd=tmp_path,
                              env={"PYTHONPATH": str(REPO / "src")}).stdout)
    assert Path(installed.pop("package")).is_relative_to(wheel_venv)
    assert Path(checkout.pop("package")).is_relative_to(REPO)
    assert installed == checkout
    assert installed[str(REPO / "config.yaml")] == "ok"
    assert installed[str(REPO / "tests" / "configs" / "tiny.yaml")] == "ok"


def test_the_wheel_plans_the_tiny_workflow(wheel_venv, tmp_path):
    result = run([str(wheel_venv / "bin" / "python"), "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                  "--directory", str(tmp_path), "--configfile", str(REPO / "tests" / "configs" / "tiny.yaml"),
                  "--cores", "1", "--dry-run"], cwd=tmp_path)
    assert "train_diffusion" in result.stdout


def test_setup_stops_in_one_line_on_python_older_than_3_11(tmp_path):
    """An interpreter that reports 3.10 (a stand-in script, since the machine may have no real 3.10)."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then case "$2" in *version_info*) exit 1;; '
                    '*platform*) echo 3.10.12; exit 0;; esac; fi\nexit 1\n')
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "setup.sh")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": str(fake), "VENV": str(tmp_path / "venv")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"setup: {fake} is Python 3.10.12; bibaddiff needs Python 3.11 or newer (set PYTHON=python3.11)"]
    assert not (tmp_path / "venv").exists()
