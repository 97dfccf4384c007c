"""Tests of bibaddiff.provenance: what an experiment's provenance folder records."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from bibaddiff.errors import BibaddiffError
from bibaddiff.provenance import git_state, package_versions, write_provenance


def test_records_config_versions_commit_and_time(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    (source / "Snakefile").write_text("# v1\n")
    subprocess.run(["git", "-C", str(source), "add", "Snakefile"], check=True)
    subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"], check=True)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (source / "Snakefile").write_text("# v2, not committed\n")
    config = {"experiment": "demo", "dataset": {"name": "digits", "image_size": 16}}

    environment = write_provenance(config, source, tmp_path / "p/config.yaml", tmp_path / "p/environment.yaml", ["b.csv", "a.csv"])

    assert yaml.safe_load((tmp_path / "p/config.yaml").read_text()) == config
    written = yaml.safe_load((tmp_path / "p/environment.yaml").read_text())
    assert written == environment
    assert written["experiment"] == "demo"
    assert written["git"] == {"commit": commit, "modified_files": ["Snakefile"]}
    assert written["packages"]["numpy"] and written["packages"]["bibaddiff"]
    assert written["outputs"] == ["a.csv", "b.csv"]
    assert written["written_at"].endswith("+00:00")


def test_a_folder_outside_git_has_no_commit(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "modified_files": None}


def test_missing_packages_are_recorded_as_none():
    assert package_versions(("numpy", "no-such-package-bibaddiff")) == {
        "numpy": package_versions(("numpy",))["numpy"], "no-such-package-bibaddiff": None}


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(BibaddiffError, match="does not exist"):
        git_state(tmp_path / "missing")
    with pytest.raises(BibaddiffError, match="'experiment'"):
        write_provenance({"dataset": {}}, tmp_path, tmp_path / "c.yaml", tmp_path / "e.yaml")


def test_list_experiments_names_each_experiments_models(tmp_path, capsys):
    from bibaddiff.provenance import list_experiments, main

    results = tmp_path / "results"
    (tmp_path / "results/d/models/patch-p0.1-aaa/train-bbb/seed0").mkdir(parents=True)
    for name, models in (("a", ["results/d/models/patch-p0.1-aaa/train-bbb/seed0"]),
                         ("b", ["results/d/models/patch-p0.1-aaa/train-ccc/seed0"])):
        write_provenance({"experiment": name}, tmp_path, results / f"experiments/{name}/provenance/config.yaml",
                         results / f"experiments/{name}/provenance/environment.yaml",
                         stages=["results/d/data/clean-x", *models])
    listed = list_experiments(results)
    assert [e["experiment"] for e in listed] == ["a", "b"]
    assert listed[0]["models"] == [{"path": "results/d/models/patch-p0.1-aaa/train-bbb/seed0", "exists": True}]
    assert listed[1]["models"][0]["exists"] is False
    assert main([str(results)]) == 0
    out = capsys.readouterr().out
    assert "a: tables of" in out and "train-ccc/seed0  (missing)" in out
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "no experiment has been run" in capsys.readouterr().err
