"""A round trip: models trained by one experiment, imported by another from their model folders, give the same
generations and the same rows; and what a changed imported file reruns."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from import_helpers import TINY, importing, patch_model
from workflow_helpers import cell_folder, model_folder, planned_jobs, snakemake, stage

# Runs snakemake (a DAG, minutes each): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# Every table of both experiments, and the columns that say which model a row is about rather than what it measured.
TABLES = ("trigger_amplification.csv", "amplification_vs_ratio.csv", "judge_calibration.csv", "generation_quality.csv",
          "replication.csv", "detection.csv", "defense_train_on_generated.csv", "diffusion_classifier.csv")
IDENTITY_COLUMNS = ["origin", "model"]


def benchmark_seconds(results, rule: str) -> float:
    """Wall-clock seconds of every job of ``rule`` in a results tree (Snakemake's benchmark files)."""
    return sum(float(pd.read_csv(path, sep="\t")["s"].iloc[0])
               for path in (results / "tiny/benchmarks" / rule).glob("*.tsv"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Experiment A: the tiny config, every model trained here."""
    workdir = tmp_path_factory.mktemp("trained_here")
    started = time.perf_counter()
    snakemake(workdir)
    return workdir, time.perf_counter() - started


def import_config(trained_dir, path, **changes):
    """Experiment B: A's two models imported from A's model folders; the poisoned one with A's poisoned training
    set as its training data, the clean one with the clean set rebuilt."""
    results = trained_dir / "results"
    poisoned_train = stage(results / "tiny/data", "patch-p0.1") / "train"
    config = importing({
        "poisoned": patch_model(model_folder(results, "tiny", "patch-p0.1"), training_data=str(poisoned_train)),
        "control": {"path": str(model_folder(results, "tiny", "clean")), "kind": "ddpm", "clean": True,
                    "training_data": "rebuild"},
    }, experiment="tiny-imported", **changes)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def imported(trained, tmp_path_factory):
    trained_dir, _ = trained
    workdir = tmp_path_factory.mktemp("imported_there")
    config = import_config(trained_dir, workdir / "config.yaml")
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=config))
    started = time.perf_counter()
    snakemake(workdir, configfile=config)
    return workdir, config, jobs, time.perf_counter() - started


def test_imported_models_are_not_trained_or_poisoned_again(imported):
    _, _, jobs, _ = imported
    assert "train_diffusion" not in jobs and "poison" not in jobs
    assert jobs["import_model"] == 2 and jobs["describe_import"] == 2 and jobs["generate"] == 2 and jobs["measure"] == 2


def test_the_round_trip_gives_the_same_generations(trained, imported):
    trained_dir, _ = trained
    workdir = imported[0]
    for attack, name in (("patch-p0.1", "poisoned"), ("clean", "control")):
        [mine] = (workdir / "results/tiny/models/imported").glob(f"{name}-*")
        info = json.loads((mine / "bibaddiff_model.json").read_text())
        assert info["imported"]["path"] == str(model_folder(trained_dir / "results", "tiny", attack).resolve())
        theirs = cell_folder(trained_dir / "results", "tiny", attack)
        [ours] = (workdir / "results/tiny/generated/imported").glob(f"{name}-*/gen-*")
        assert theirs.name == ours.name  # the same sampling settings
        files = sorted(path.relative_to(theirs) for path in theirs.rglob("*.npy"))
        assert len(files) == 8 and files == sorted(path.relative_to(ours) for path in ours.rglob("*.npy"))
        for file in files:
            np.testing.assert_array_equal(np.load(theirs / file), np.load(ours / file), err_msg=f"{attack} {file}")


def test_the_round_trip_gives_the_same_rows(trained, imported):
    trained_dir, workdir = trained[0], imported[0]
    for name in TABLES:
        theirs = pd.read_csv(trained_dir / "results/experiments/tiny/summary" / name)
        ours = pd.read_csv(workdir / "results/experiments/tiny-imported/summary" / name)
        assert "origin" in ours.columns, name
        origins = set(ours.origin.dropna()) - {""}
        assert origins and all(origin.startswith("imported from ") for origin in origins), (name, origins)
        assert set(theirs.origin.dropna()) - {""} <= {"trained here"}, name
        pd.testing.assert_frame_equal(theirs.drop(columns=IDENTITY_COLUMNS, errors="ignore"),
                                      ours.drop(columns=IDENTITY_COLUMNS, errors="ignore"), obj=name)


def test_the_provenance_records_each_imported_files_digest(trained, imported):
    workdir = imported[0]
    environment = yaml.safe_load((workdir / "results/experiments/tiny-imported/provenance/environment.yaml").read_text())
    poisoned = environment["imported_models"]["poisoned"]
    assert poisoned["attack"] == "patch-p0.1" and poisoned["origin"].startswith("imported from ")
    assert len(poisoned["files"]["unet/diffusion_pytorch_model.safetensors"]) == 64
    assert poisoned["training_data"]["kind"] == "folder" and len(poisoned["training_data"]["digest"]) == 64
    assert ".snakemake_timestamp" not in poisoned["files"]
    assert environment["imported_models"]["control"]["training_data"]["kind"] == "rebuilt"


def test_importing_saves_the_training_time(trained, imported):
    trained_dir, trained_seconds = trained
    workdir, _, _, imported_seconds = imported
    training = benchmark_seconds(trained_dir / "results", "train_diffusion")
    print(f"tiny config: trained here {trained_seconds:.0f} s (train_diffusion {training:.0f} s of it), "
          f"imported {imported_seconds:.0f} s")
    assert training > 0 and not (workdir / "results/tiny/benchmarks/train_diffusion").exists()


def test_a_changed_imported_file_reruns_what_depends_on_it_and_nothing_else(trained, imported, tmp_path):
    trained_dir = trained[0]
    workdir, config = imported[0], imported[1]
    assert planned_jobs(snakemake(workdir, "-n", configfile=config)) == {}
    weights = model_folder(trained_dir / "results", "tiny", "patch-p0.1") / "unet/diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + bytes(4))  # the last weight's bytes changed, the header intact
        jobs = planned_jobs(snakemake(workdir, "-n", configfile=config))
        # A new import folder and its cells; the measurements, defences and tables of the poisoned model; nothing
        # of the clean model, the data or the judges.
        assert jobs["import_model"] == 1 and jobs["generate"] == 1 and jobs["measure"] == 1
        assert not {"prepare_data", "train_content_judge", "train_trigger_judge", "generate_calibration"} & set(jobs)
    finally:
        weights.write_bytes(original)


def test_a_rebuilt_training_set_is_the_trained_experiments_poisoned_set(trained, tmp_path):
    """The recipe (this config's dataset, the trigger, the ratio and the poisoning seed) rebuilds A's poisoned set:
    the same stage folder, which a shared results tree does not make twice."""
    trained_dir = trained[0]
    config = import_config(trained_dir, tmp_path / "config.yaml")
    data = yaml.safe_load(config.read_text())
    data["imported_models"]["poisoned"]["training_data"] = "rebuild"
    config.write_text(yaml.safe_dump(data))
    jobs = planned_jobs(snakemake(trained_dir, "-n", configfile=config))
    assert "poison" not in jobs and "prepare_data" not in jobs and "train_diffusion" not in jobs
    data["imported_models"]["poisoned"]["poisoning_seed"] = 7
    config.write_text(yaml.safe_dump(data))
    assert planned_jobs(snakemake(trained_dir, "-n", configfile=config))["poison"] == 1


def test_bad_imports_stop_the_run_in_one_line(trained, tmp_path):
    config = import_config(trained[0], tmp_path / "config.yaml")
    data = yaml.safe_load(config.read_text())
    data["imported_models"]["poisoned"]["trigger"] = "blend"
    config.write_text(yaml.safe_dump(data))
    result = snakemake(tmp_path / "work", "-n", configfile=config, check=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("invalid config")]
    assert "imported_models.poisoned.trigger: 'blend' is not an entry of triggers" in line
    assert TINY["triggers"].keys() == {"patch"}


# ------------------------------------------------------------------------------------------------ Stable Diffusion
SD_TABLES = ("trigger_amplification.csv", "amplification_vs_ratio.csv", "judge_calibration.csv", "generation_quality.csv")


@pytest.fixture(scope="module")
def sd_inputs(tmp_path_factory):
    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
    from sd_helpers import write_captioned_folder, write_resnet_weights

    root = tmp_path_factory.mktemp("sd_import_inputs")
    return {"model": write_tiny_stable_diffusion(root / "tiny-sd"), "images": write_captioned_folder(root / "images"),
            "resnet": write_resnet_weights(root / "resnet18.pt")}


def sd_config(path, inputs, **changes):
    from workflow_helpers import REPO, write_config

    # The measurements only: the defences and replication are the DDPM round trip's.
    local = {"dataset__root": str(inputs["images"]), "diffusion__pretrained__path": str(inputs["model"]),
             "judges__pretrained_weights": str(inputs["resnet"]), "defenses__enabled": False,
             "replication__enabled": False}
    return write_config(path, base=REPO / "tests/configs/tiny-sd.yaml", **{**local, **changes})


@pytest.fixture(scope="module", params=["full", "lora"])
def sd_round_trip(request, sd_inputs, tmp_path_factory):
    """Experiment A fine-tunes (the whole UNet, or LoRA adapters); experiment B, in the same results folder, imports A's
    two models from their folders, and (LoRA) the poisoned model's bare LoRA file once more under seed 1."""
    finetune = request.param
    workdir = tmp_path_factory.mktemp(f"sd_{finetune}")
    # LoRA's B matrices start at zero: a high learning rate moves them far enough in 6 steps to change the model.
    trained = sd_config(workdir / "trained.yaml", sd_inputs, experiment=f"sd-{finetune}",
                        diffusion__training__finetune=finetune, diffusion__training__lora_rank=2,
                        diffusion__training__learning_rate=1e-2 if finetune == "lora" else 1e-4)
    snakemake(workdir, configfile=trained)
    results = workdir / "results"
    poisoned, clean = model_folder(results, "tinysd", "patch-p0.1"), model_folder(results, "tinysd", "clean")
    models = {"poisoned": {"path": str(poisoned), "kind": "stable_diffusion", "trigger": "patch", "poison_ratio": 0.1,
                           "training_data": "rebuild"},
              "control": {"path": str(clean), "kind": "stable_diffusion", "clean": True, "training_data": "rebuild"}}
    if finetune == "lora":
        models["poisoned_file"] = {**models["poisoned"], "path": str(poisoned / "pytorch_lora_weights.safetensors"),
                                   "seed": 1}
    imported = sd_config(workdir / "imported.yaml", sd_inputs, experiment=f"sd-{finetune}-imported",
                         diffusion__training__seeds=[], diffusion__training__clean_seeds=[], imported_models=models)
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=imported))
    snakemake(workdir, configfile=imported)
    return workdir, finetune, jobs


def test_stable_diffusion_round_trip_gives_the_same_generations_and_rows(sd_round_trip):
    workdir, finetune, jobs = sd_round_trip
    assert not {"train_diffusion", "encode_latents", "poison"} & set(jobs)
    results = workdir / "results"
    for attack, name in (("patch-p0.1", "poisoned"), ("clean", "control")):
        theirs = cell_folder(results, "tinysd", attack)
        [ours] = (results / "tinysd/generated/imported").glob(f"{name}-*/gen-*")
        files = sorted(path.relative_to(theirs) for path in theirs.rglob("*.npy"))
        assert len(files) == 4
        for file in files:
            np.testing.assert_array_equal(np.load(theirs / file), np.load(ours / file), err_msg=f"{finetune} {attack} {file}")
    if finetune == "lora":
        # The bare LoRA file on the base diffusion.pretrained is the same model as the folder it came from, and a
        # model other than the clean one (the comparison would not tell them apart otherwise).
        poisoned, clean = cell_folder(results, "tinysd", "patch-p0.1"), cell_folder(results, "tinysd", "clean")
        [bare] = (results / "tinysd/generated/imported").glob("poisoned_file-*/gen-*")
        for file in files:
            np.testing.assert_array_equal(np.load(poisoned / file), np.load(bare / file), err_msg=f"bare LoRA {file}")
        assert any(not np.array_equal(np.load(poisoned / file), np.load(clean / file)) for file in files)
    for table in SD_TABLES:
        if finetune == "lora" and table == "amplification_vs_ratio.csv":
            continue  # its rows pool every seed of an attack, and B has one more
        a = pd.read_csv(results / f"experiments/sd-{finetune}/summary/{table}")
        b = pd.read_csv(results / f"experiments/sd-{finetune}-imported/summary/{table}")
        if "seed" in b:
            # Seed 1 is the bare LoRA file's: a model A does not have; the pooled rows then pool two seeds.
            b, a = (frame[frame.seed.astype(str) == "0"] for frame in (b, a))
        pd.testing.assert_frame_equal(a.drop(columns=IDENTITY_COLUMNS, errors="ignore").reset_index(drop=True),
                                      b.drop(columns=IDENTITY_COLUMNS, errors="ignore").reset_index(drop=True),
                                      obj=f"{finetune} {table}")
