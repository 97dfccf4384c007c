"""What produced an experiment's tables: the resolved config, the package versions, the code's git commit, a time.

Written next to the summary tables (results/experiments/<experiment>/provenance/) each time they are made, so a
table found later says which settings and which code made it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bibaddiff.errors import BibaddiffError

# The packages whose versions decide the numbers (and the workflow engine that ran them).
RECORDED_PACKAGES = ("bibaddiff", "torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "peft",
                     "numpy", "scipy", "scikit-learn", "pandas", "pillow", "jsonschema", "snakemake")


def package_versions(packages: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package; None for one that is not installed."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(source_dir: str | Path) -> dict[str, Any]:
    """The commit of the workflow's source folder and whether its tracked files differ from it; commit None when
    the folder is not a git checkout (e.g. a release archive) or git is missing."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise BibaddiffError(f"workflow source folder {source_dir} does not exist")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        # Only line ends are stripped: `status --porcelain` lines begin with a space-padded two-letter code.
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    commit = commit.strip() if commit else None
    if commit is None:
        return {"commit": None, "modified_files": None}
    changes = git("status", "--porcelain", "--untracked-files=no")
    modified = [line[3:] for line in changes.splitlines()] if changes else []
    return {"commit": commit, "modified_files": modified}


def write_provenance(config: dict[str, Any], source_dir: str | Path, config_path: str | Path,
                     environment_path: str | Path, experiment_outputs: list[str] | None = None) -> dict[str, Any]:
    """Write the resolved config (YAML, after defaults) and the environment record (JSON-compatible YAML: time, host,
    Python, package versions, git state, the outputs it describes). Returns the environment record."""
    if not isinstance(config, dict) or "experiment" not in config:
        raise BibaddiffError("provenance: the config must be the resolved experiment config (a mapping with 'experiment')")
    environment = {
        "experiment": config["experiment"],
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_state(source_dir),
        "outputs": sorted(experiment_outputs or []),
    }
    for path in (config_path, environment_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(config_path).write_text(yaml.safe_dump(config, sort_keys=True))
    Path(environment_path).write_text(yaml.safe_dump(environment, sort_keys=False))
    return environment
