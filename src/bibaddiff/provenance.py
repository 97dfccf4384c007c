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
                     environment_path: str | Path, experiment_outputs: list[str] | None = None,
                     stages: list[str] | None = None, imported: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the resolved config (YAML, after defaults) and the environment record (JSON-compatible YAML: time, host,
    Python, package versions, git state, the outputs it describes, the shared stage folders (data, judges, models) it
    used and, for each imported model, what it is, the SHA-256 of each of its files and one of its own training set's
    files: :meth:`bibaddiff.plan.Plan.import_description`). Returns the environment record."""
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
        "stages": sorted(stages or []),
        "imported_models": {description["name"]: description for description in imported or []},
    }
    for path in (config_path, environment_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(config_path).write_text(yaml.safe_dump(config, sort_keys=True))
    Path(environment_path).write_text(yaml.safe_dump(environment, sort_keys=False))
    return environment


def list_experiments(results_dir: str | Path = "results") -> list[dict[str, Any]]:
    """The experiments under ``results_dir/experiments/``, each with when and from which commit its tables were made
    and the shared stages it used (models marked missing when their folder is gone)."""
    root = Path(results_dir) / "experiments"
    if not root.is_dir():
        raise BibaddiffError(f"{root} does not exist: no experiment has been run with this results folder")
    experiments = []
    for environment_path in sorted(root.glob("*/provenance/environment.yaml")):
        environment = yaml.safe_load(environment_path.read_text()) or {}
        stages = environment.get("stages", [])
        base = Path(results_dir).parent
        experiments.append({
            "experiment": environment.get("experiment", environment_path.parents[1].name),
            "written_at": environment.get("written_at"),
            "commit": (environment.get("git") or {}).get("commit"),
            "models": [{"path": stage, "exists": (base / stage).is_dir()} for stage in stages if "/models/" in stage],
            "stages": stages,
        })
    return experiments


def main(argv: list[str] | None = None) -> int:
    """``python -m bibaddiff.provenance [results]``: each experiment and the models it uses."""
    import argparse

    parser = argparse.ArgumentParser(description="List the experiments of a results folder and the models each uses.")
    parser.add_argument("results", nargs="?", default="results", help="the workflow's results folder (default: results)")
    args = parser.parse_args(argv)
    try:
        experiments = list_experiments(args.results)
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for experiment in experiments:
        commit = (experiment["commit"] or "no git commit")[:12]
        print(f"{experiment['experiment']}: tables of {experiment['written_at']} (commit {commit}), "
              f"{len(experiment['models'])} models")
        for model in experiment["models"]:
            print(f"  {model['path']}{'' if model['exists'] else '  (missing)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
