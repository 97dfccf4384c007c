"""The whole DAG on the tiny config: outputs, no-op reruns, and reruns limited to what a change touches."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bibaddiff.config import load_schema, validate_config
from bibaddiff.data import read_dataset
from workflow_helpers import (REPO, TINY_CONFIG, cell_folder, fill_placeholders, model_folder, planned_jobs, snakemake, stage,
                              write_config)

# Runs snakemake (a DAG, minutes each): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_workflow")
    snakemake(workdir)
    return workdir


def test_outputs_of_every_stage(tiny_run):
    results = tiny_run / "results"
    config = yaml.safe_load(TINY_CONFIG.read_text())
    poisoned_stage = stage(results / "tiny/data", "patch-p0.1")
    poisoned = read_dataset(poisoned_stage / "train")
    clean = read_dataset(stage(results / "tiny/data", "clean") / "train")
    assert poisoned.poisoned.sum() == round(0.1 * len(clean))
    assert (poisoned.labels[poisoned.poisoned] == config["target"]).all()
    # Each stage folder says what it is.
    record = json.loads((poisoned_stage / "params.json").read_text())
    assert record["kind"] == "poisoned dataset" and record["ratio"] == 0.1 and record["trigger"]["pattern"] == "checker"
    for attack in ("patch-p0.1", "clean"):
        model = model_folder(results, "tiny", attack)
        assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert json.loads((model / "training.json").read_text())["steps"] == config["diffusion"]["training"]["steps"]
        record = json.loads((model / "params.json").read_text())
        assert record["kind"] == "diffusion model" and record["data"] == model.parents[1].name
        assert record["training"]["training"]["steps"] == config["diffusion"]["training"]["steps"]
        cells = cell_folder(results, "tiny", attack)
        assert json.loads((cells / "params.json").read_text())["sampling"]["num_images"] == 16
        for condition in (6, 1):
            for scale in (1, 2):
                images = np.load(cells / f"x0-none/c{condition}_s{scale}.npy")
                assert images.shape == (16, 8, 8, 1) and images.dtype == np.uint8
                assert (cells / f"x0-none/c{condition}_s{scale}.png").is_file()
        assert (cells / "x0-clip_recompute/c6_s2.npy").is_file()
    for judge in ("content", "trigger-patch"):
        assert json.loads((stage(results / "tiny/judges", judge) / "params.json").read_text())["data"] == clean_stage_name(results)
    for name in ("trigger_amplification.csv", "trigger_ratio_vs_guidance.png", "generation_groups.png", "samples_target.png",
                 "target_class_vs_guidance.png", "amplification_vs_ratio.csv", "amplification_vs_ratio.png"):
        assert (results / "experiments/tiny/summary" / name).stat().st_size > 0
    assert any((results / "tiny/benchmarks/train_diffusion").iterdir())
    [log] = (results / "tiny/logs/train_diffusion").glob(f"{poisoned_stage.name}_train-*_seed0.log")
    assert "trained" in log.read_text()


def test_generation_quality_in_judge_features(tiny_run):
    summary = tiny_run / "results/experiments/tiny/summary"
    table = pd.read_csv(summary / "generation_quality.csv")
    assert list(table.columns) == ["model", "attack", "trigger", "poison_ratio", "seed", "origin", "guidance", "n",
                                   "metric", "value", "low", "high", "kid_sd_over_subsets", "interval"]
    assert set(table.origin) == {"trained here"}
    # No Inception weights in the tiny config: judge-feature rows only, one FID and one KID per model.
    assert sorted(table.metric.unique()) == ["fid_judge", "kid_judge"]
    assert sorted(table.attack.unique()) == ["clean", "patch-p0.1"] and (table.guidance == 1).all()
    clean = read_dataset(stage(tiny_run / "results/tiny/data", "clean") / "train")
    assert (table.n == len(clean)).all()
    fid = table[table.metric == "fid_judge"]
    assert (fid.value > 0).all() and (fid.low <= fid.value).all() and (fid.value <= fid.high).all()
    kid = table[table.metric == "kid_judge"]  # KID's sd over subsets is not a 95% interval: no low/high
    assert kid.low.isna().all() and (kid.kid_sd_over_subsets >= 0).all() and fid.kid_sd_over_subsets.isna().all()
    assert (summary / "generation_quality_vs_ratio.png").stat().st_size > 0
    # The poisoned model's quality set is its defence's generated set (same balance, count, guidance and sampler);
    # the clean model, which has no generated set, gets all-class generations of its own.
    results = {path.parent.name: json.loads(path.read_text())
               for path in (tiny_run / "results/experiments/tiny/quality").glob("*/seed0.json")}
    assert results["patch-p0.1"]["generated"].endswith("defenses/generated_sets/patch-p0.1/seed0_s1")
    [own_set] = (stage(tiny_run / "results/tiny/generated", "clean")).glob("train-*/seed0/allclass-*")
    assert results["clean"]["generated"].endswith(own_set.relative_to(tiny_run).as_posix())
    assert np.bincount(read_dataset(own_set).labels, minlength=10).tolist() == np.bincount(clean.labels, minlength=10).tolist()


def test_detectors_are_calibrated_on_the_clean_models_own_draw(tiny_run):
    results, summary = tiny_run / "results", tiny_run / "results/experiments/tiny/summary"
    config = yaml.safe_load(TINY_CONFIG.read_text())
    # The calibration draw: every measured cell of the clean model, with a seed of its own, in a folder of its own.
    [calibration_cells] = (stage(results / "tiny/generated", "clean")).glob("train-*/seed0/cal-*")
    sampling = json.loads((calibration_cells / "params.json").read_text())["sampling"]
    measured = json.loads((cell_folder(results, "tiny", "clean") / "params.json").read_text())["sampling"]
    assert sampling["num_images"] == config["judges"]["calibration_images"] and sampling["seed"] == measured["seed"] + 2
    draw, measured_cell = (np.load(folder / "x0-none/c6_s1.npy") for folder in (calibration_cells, cell_folder(results, "tiny", "clean")))
    assert len(draw) == 150 and not np.array_equal(draw[:16], measured_cell)
    # The detector learned from the draw's training part.
    detector = json.loads((stage(results / "tiny/judges", "trigger-patch") / "judge.json").read_text())
    assert detector["metrics"]["generated_negatives"] == 8 * 50 and detector["metrics"]["dequantization"] == 8
    table = pd.read_csv(summary / "judge_calibration.csv")
    assert len(table) == 8 and set(table.source) == {"clean_generations"} and set(table.detector_negatives) == {"generated"}
    assert (table.n == 50).all() and ((table.fpr >= table.fpr_low) & (table.fpr <= table.fpr_high)).all()
    assert (summary / "judge_calibration.png").stat().st_size > 0
    amplification = pd.read_csv(summary / "trigger_amplification.csv")
    for row in amplification.itertuples():
        cell = table[(table.x0_clipping == row.x0_clipping) & (table.condition == row.condition) & (table.guidance == row.guidance)]
        assert row.detector_fpr == pytest.approx(cell.fpr.item()) and row.detector_tpr == pytest.approx(cell.tpr.item())
        if row.detector_tpr >= 0.5:
            expected = min(1.0, max(0.0, (row.trigger_ratio - row.detector_fpr) / (row.detector_tpr - row.detector_fpr)))
            assert row.trigger_ratio_corrected == pytest.approx(expected)
            assert row.trigger_ratio_corrected_low <= row.trigger_ratio_corrected + 1e-9
    assert {"clean_G1_ratio", "between_seed_sd", "heterogeneity_p", "amplified_raw", "amplification_corrected"} <= set(amplification.columns)


def test_a_poison_draw_per_training_seed_is_planned_on_request(tmp_path):
    shared = write_config(tmp_path / "shared.yaml", diffusion__training__seeds=[0, 1])
    per_seed = write_config(tmp_path / "per_seed.yaml", diffusion__training__seeds=[0, 1], poisoning__draw_per_seed=True)
    assert planned_jobs(snakemake(tmp_path / "a", "-n", configfile=shared))["poison"] == 1
    run = snakemake(tmp_path / "b", "-n", "-p", configfile=per_seed)
    assert planned_jobs(run)["poison"] == 2
    # Each model trains on its own draw.
    trainings = [line for line in run.stdout.splitlines() if "bibaddiff.diffusion.train_cli" in line and "patch-p0.1" in line]
    assert len({line.split("--train-data ")[1].split()[0] for line in trainings}) == 2


def clean_stage_name(results):
    return stage(results / "tiny/data", "clean").name


def test_experiment_folder_holds_provenance_and_report(tiny_run):
    experiment = tiny_run / "results/experiments/tiny"
    resolved = validate_config(yaml.safe_load(TINY_CONFIG.read_text()), load_schema())
    assert yaml.safe_load((experiment / "provenance/config.yaml").read_text()) == resolved
    environment = yaml.safe_load((experiment / "provenance/environment.yaml").read_text())
    assert environment["experiment"] == "tiny"
    assert re.fullmatch("[0-9a-f]{40}", environment["git"]["commit"])
    assert environment["packages"]["torch"] and environment["packages"]["snakemake"]
    assert "results/experiments/tiny/summary/trigger_amplification.csv" in environment["outputs"]
    # Nothing of the experiment's own is written outside its folder.
    assert not (tiny_run / "results/summary").exists()


def test_summary_table(tiny_run):
    table = pd.read_csv(tiny_run / "results/experiments/tiny/summary/trigger_amplification.csv")
    pooled = table[table.seed == "pooled"]
    # 2 attacks x 2 samplers x 2 conditions x 2 guidance scales, one trigger.
    assert len(pooled) == 16
    assert set(pooled.attack) == {"patch-p0.1", "clean"}
    assert set(pooled.x0_clipping) == {"none", "clip_recompute"}
    target = pooled[(pooled.attack == "patch-p0.1") & pooled.is_target]
    assert np.allclose(target.training_share, 20 / (20 + 20))  # 20 poisoned + 20 real sixes
    assert (pooled[pooled.attack == "clean"].training_share == 0).all()
    assert ((pooled.G1 + pooled.G2 + pooled.G3 + pooled.G4) == pooled.n).all()
    # One epoch of judges on 200 images cannot reach the floor: rows must be flagged, not silently reported.
    assert (table.judge_warning.fillna("") != "").all()


def test_amplification_vs_ratio_table(tiny_run):
    summary = tiny_run / "results/experiments/tiny/summary"
    by_ratio = pd.read_csv(summary / "amplification_vs_ratio.csv")
    table = pd.read_csv(summary / "trigger_amplification.csv")
    # Target class only: (clean p = 0, p = 0.1) x 2 samplers x 2 guidance scales.
    assert len(by_ratio) == 8
    assert sorted(by_ratio.poison_ratio.unique()) == [0.0, 0.1]
    for row in by_ratio.itertuples():
        pooled = table[(table.seed == "pooled") & table.is_target & (table.poison_ratio == row.poison_ratio)
                       & (table.x0_clipping == row.x0_clipping) & (table.guidance == row.guidance)].iloc[0]
        seeds = table[(table.seed != "pooled") & table.is_target & (table.poison_ratio == row.poison_ratio)
                      & (table.x0_clipping == row.x0_clipping) & (table.guidance == row.guidance)]
        assert row.trigger_ratio == pytest.approx(pooled.trigger_ratio)
        assert row.G1_ratio + row.G2_ratio == pytest.approx(row.trigger_ratio)
        assert row.trigger_ratio_seed_mean == pytest.approx(seeds.trigger_ratio.mean())
        assert row.num_seeds == len(seeds) == 1


def test_defense_tables(tiny_run):
    summary = tiny_run / "results/experiments/tiny/summary"
    detection = pd.read_csv(summary / "detection.csv", dtype={"seed": str})
    assert set(detection.detector) == {"strip", "spectral", "activation_clustering", "cognitive_distillation", "fct",
                                       "fct_frozen"}
    # Every row says which definition produced it; detectors with one definition leave it empty.
    one_definition = detection.detector.isin(["strip", "spectral", "activation_clustering"])
    assert detection[one_definition].variant.isna().all()
    variants = detection[~one_definition].groupby("detector").variant.unique().map(list).to_dict()
    assert variants == {"cognitive_distillation": ["probabilities"], "fct": ["published"], "fct_frozen": ["frozen"]}
    assert not [column for column in detection.columns if "envelope" in column or column == "auroc_gain"]
    assert (detection.auroc_training_low <= detection.auroc_training + 1e-12).all()
    assert (detection.auroc_training_high >= detection.auroc_training - 1e-12).all()
    assert detection.auroc_generated_higher.isin([True, False]).all()
    # Decided on the difference's own interval, not on two intervals' overlap.
    assert (detection.auroc_generated_higher == (detection.auroc_difference_low > 0)).all()
    scored = detection[detection.auroc_difference.notna()]
    assert (scored.auroc_difference_low <= scored.auroc_difference + 1e-12).all()
    assert (scored.auroc_difference <= scored.auroc_difference_high + 1e-12).all()
    assert detection.auroc_training.between(0, 1).all() and (detection.n_poisoned_training[detection.scope == "all"] == 20).all()
    # One training seed: a row for its generated set and a pooled row per detector and scope.
    assert sorted(detection.seed.unique()) == ["0", "pooled"] and (detection.generated_sets == 1).all()
    assert detection.screening_asr_training.between(0, 1).all() and detection.screening_asr_generated.between(0, 1).all()
    assert (detection.no_backdoor_to_detect == ((detection.screening_asr_training < 0.2)
                                                | (detection.screening_asr_generated < 0.2))).all()
    assert (detection.training_at_ceiling == (detection.auroc_training == 1)).all()
    training = pd.read_csv(summary / "defense_train_on_generated.csv")
    assert list(training.trainset) == ["clean", "poisoned", "generated_seed0_s1"]
    assert training.generated_guidance.isna().tolist() == [True, True, False]
    assert training.acc.between(0, 1).all() and training.asr.between(0, 1).all()
    # The last epoch's ACC and ASR beside the best over epochs (upstream's), measured after each of the one epoch.
    assert (training.acc_best_epoch >= training.acc).all() and (training.asr_best_epoch >= training.asr).all()
    assert (training.epochs == 1).all()
    dm = pd.read_csv(summary / "diffusion_classifier.csv")
    by_method = dm.groupby("method").size().to_dict()
    # 2 models x 2 p_filters, plus the standard classifier trained on the poisoned set.
    assert by_method == {"diffusion classifier": 4, "standard classifier (poisoned set)": 1}
    generated = read_dataset(tiny_run / "results/experiments/tiny/defenses/generated_sets/patch-p0.1/seed0_s1")
    clean = read_dataset(stage(tiny_run / "results/tiny/data", "clean") / "train")
    # The clean training set's balance, as upstream: one generation per clean training image.
    assert np.array_equal(np.bincount(generated.labels, minlength=10), np.bincount(clean.labels, minlength=10))
    assert json.loads((tiny_run / "results/experiments/tiny/defenses/generated_sets/patch-p0.1/seed0_s1/manifest.json").read_text()
                      )["config"]["balance"] == "clean"
    for name in ("detection_auroc.png", "defense_train_on_generated.png", "diffusion_classifier_asr.png"):
        assert (summary / name).stat().st_size > 0


def test_replication_table(tiny_run):
    table = pd.read_csv(tiny_run / "results/experiments/tiny/summary/replication.csv")
    # 2 models x 2 samplers x 2 conditions x 2 guidance scales.
    assert len(table) == 16 and table.tau_calibrated.all() and table.tau.nunique() == 1
    assert set(table.x0_clipping) == {"none", "clip_recompute"}
    assert table.replication_rate.between(0, 1).all()
    assert (table.n_train_poisoned[table.attack == "patch-p0.1"] == 20).all()
    for name in ("replication_similarity.png", "replication_pairs.png"):
        assert (tiny_run / "results/experiments/tiny/summary" / name).stat().st_size > 0


def test_duplicate_poisoning_compares_random_and_duplicated(tmp_path):
    config = write_config(tmp_path / "duplicates.yaml", defenses__enabled=False, replication__enabled=False, quality__enabled=False,
                          replication__duplicate_poisoning={"enabled": True, "design": "synthetic", "k": 5, "m": 4,
                                                            "ratio": 0.1},
                          generation__guidance_scales=[1], generation__other_conditions=[],
                          generation__x0_clipping="none", diffusion__training__clean_seeds=[])
    snakemake(tmp_path, configfile=config)
    results = tmp_path / "results"
    duplicated = read_dataset(stage(results / "tiny/data", "patch-p0.1-dup_duplicates") / "train")
    random = read_dataset(stage(results / "tiny/data", "patch-p0.1-dup_random") / "train")
    assert len(duplicated) == len(random) == 200 + 5 * 3
    assert duplicated.poisoned.sum() == random.poisoned.sum() == round(0.1 * 215)
    # Every copy of a poisoned duplicated image is poisoned: poisoned source images appear 4 times each.
    counts = np.unique(duplicated.source_index[duplicated.poisoned], return_counts=True)[1]
    assert (counts == 4).sum() == 5
    table = pd.read_csv(results / "experiments/tiny/summary/duplicate_poisoning.csv")
    assert sorted(table["mode"]) == ["duplicates", "duplicates - random", "random"]
    shares = table[table["mode"] != "duplicates - random"].set_index("mode")
    assert shares.trigger_ratio.between(0, 1).all() and (shares.G1_ratio_low <= shares.G1_ratio).all()
    difference = table[table["mode"] == "duplicates - random"].iloc[0]
    assert difference.G1_ratio == pytest.approx(shares.G1_ratio["duplicates"] - shares.G1_ratio["random"])


def test_natural_duplicate_poisoning_puts_the_most_duplicated_images_among_random_poison(tmp_path):
    config = write_config(tmp_path / "natural.yaml", defenses__enabled=False, quality__enabled=False, replication__tau=0.9,
                          replication__duplicate_poisoning={"enabled": True, "top_k": 6, "ratio": 0.1})
    snakemake(tmp_path, "--until", "poison_duplicates", configfile=config)
    data = tmp_path / "results/tiny/data"
    duplicates, random = (read_dataset(stage(data, f"patch-p0.1-dup_{mode}") / "train") for mode in ("duplicates", "random"))
    clean = read_dataset(stage(data, "clean") / "train")
    record = duplicates.manifest["poisoning"]
    chosen = np.asarray(record["duplicated"])
    assert 1 <= len(chosen) <= 6 and (clean.labels[chosen] != 6).all()
    # Upstream's design: the set is the clean one; the random poison set with picks replaced by the duplicated images.
    assert len(duplicates) == len(random) == len(clean)
    assert duplicates.poisoned.sum() == random.poisoned.sum() == round(0.1 * len(clean))
    assert duplicates.poisoned[chosen].all()
    assert set(np.flatnonzero(random.poisoned)) - set(np.flatnonzero(duplicates.poisoned)) == set(record["replaced"])


def test_injected_duplicates_are_swapped_into_a_random_poison_set(tmp_path):
    config = write_config(tmp_path / "injected.yaml", defenses__enabled=False, quality__enabled=False,
                          replication__duplicate_poisoning={"enabled": True, "design": "injected", "k": 5, "m": 4,
                                                            "top_k": 8, "ratio": 0.1})
    snakemake(tmp_path, "--until", "poison_duplicates", configfile=config)
    data = tmp_path / "results/tiny/data"
    duplicates, random = (read_dataset(stage(data, f"patch-p0.1-dup_{mode}") / "train") for mode in ("duplicates", "random"))
    # Both sets hold the 5 x 4 copies; the same number of images is poisoned in each.
    assert len(duplicates) == len(random) == 200 + 5 * 3
    assert duplicates.poisoned.sum() == random.poisoned.sum() == round(0.1 * 215)
    record = duplicates.manifest["poisoning"]
    assert record["design"] == "injected" and len(record["duplicated"]) == 8
    # top_k 8 = two whole groups of 4 copies; every other poisoned image is the random set's.
    chosen = np.asarray(record["duplicated"])
    assert duplicates.poisoned[chosen].all() and (np.unique(duplicates.source_index[chosen], return_counts=True)[1] == 4).all()
    assert set(np.flatnonzero(random.poisoned)) - set(np.flatnonzero(duplicates.poisoned)) == set(record["replaced"])


def test_two_experiments_keep_their_models_and_tables_side_by_side(tmp_path):
    """Experiment A, then B with other training settings in the same folder, then A again: A's rerun does nothing,
    and both experiments' models, tables and provenance are there."""
    small = dict(defenses__enabled=False, replication__enabled=False, quality__enabled=False, generation__guidance_scales=[1],
                 generation__x0_clipping="none", generation__other_conditions=[])
    first = write_config(tmp_path / "a.yaml", experiment="exp_a", **small)
    second = write_config(tmp_path / "b.yaml", experiment="exp_b", diffusion__training__steps=13, **small)
    workdir = tmp_path / "work"
    snakemake(workdir, configfile=first)
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=second))
    # Same data and judges (shared stages); new models, their cells and B's own tables.
    assert "prepare_data" not in jobs and "poison" not in jobs and "train_content_judge" not in jobs
    assert jobs["train_diffusion"] == 2 and jobs["generate"] == 2
    snakemake(workdir, configfile=second)
    assert planned_jobs(snakemake(workdir, "-n", configfile=first)) == {}
    results = workdir / "results"
    for attack in ("patch-p0.1", "clean"):
        trainings = sorted(path.parent.name for path in stage(results / "tiny/models", attack).glob("train-*/seed0"))
        assert len(trainings) == 2, trainings
    schema = load_schema()
    for name, config in (("exp_a", first), ("exp_b", second)):
        experiment = results / "experiments" / name
        assert (experiment / "summary/trigger_amplification.csv").stat().st_size > 0
        resolved = validate_config(yaml.safe_load(config.read_text()), schema)
        assert yaml.safe_load((experiment / "provenance/config.yaml").read_text()) == resolved
        environment = yaml.safe_load((experiment / "provenance/environment.yaml").read_text())
        models = [path for path in environment["stages"] if "/models/" in path]
        assert len(models) == 2 and all((workdir / path).is_dir() for path in models)
    models_a = {p for p in yaml.safe_load((results / "experiments/exp_a/provenance/environment.yaml").read_text())["stages"] if "/models/" in p}
    models_b = {p for p in yaml.safe_load((results / "experiments/exp_b/provenance/environment.yaml").read_text())["stages"] if "/models/" in p}
    assert not models_a & models_b


def test_second_run_does_nothing(tiny_run):
    assert planned_jobs(snakemake(tiny_run, "-n")) == {}


def test_new_guidance_scale_reruns_only_generation_and_after(tiny_run, tmp_path):
    config = write_config(tmp_path / "more_guidance.yaml", generation__guidance_scales=[1, 2, 3])
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    # One generate job per model makes its new cells (2 samplers x 2 conditions), and the clean model's calibration
    # draw its own; nothing upstream of generation reruns. The trigger detector learns from the calibration draw of
    # every measured cell, so it retrains, and what it judges (the defences' generated set, whose quality set is
    # the poisoned model's) follows.
    assert jobs == {"generate": 2, "generate_calibration": 1, "measure": 2, "replication": 2, "summarize": 1,
                    "summarize_replication": 1, "all": 1, "provenance": 1, "train_trigger_judge": 1, "calibrate_trigger_judge": 1, "generate_training_set": 1,
                    "train_defense_classifier": 1, "detect_poison": 1, "summarize_defenses": 1, "quality": 1,
                    "summarize_quality": 1}


def test_new_sampler_generates_only_its_own_cells(tiny_run, tmp_path):
    config = write_config(tmp_path / "third_sampler.yaml", generation__x0_clipping=["none", "clip_recompute", "clip"])
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    # Each model's job makes 2 conditions x 2 scales under the new sampler; the other samplers' cells are kept. The
    # calibration draw gains the new cells, so the detector retrains (as for a new guidance scale).
    assert jobs == {"generate": 2, "generate_calibration": 1, "measure": 2, "replication": 2, "summarize": 1,
                    "summarize_replication": 1, "all": 1, "provenance": 1, "train_trigger_judge": 1, "calibrate_trigger_judge": 1, "generate_training_set": 1,
                    "train_defense_classifier": 1, "detect_poison": 1, "summarize_defenses": 1, "quality": 1,
                    "summarize_quality": 1}


def test_fewer_guidance_scales_rerun_no_generation(tiny_run, tmp_path):
    config = write_config(tmp_path / "less_guidance.yaml", generation__guidance_scales=[1])
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    # No cell is made; the detector learns from the remaining cells' calibration draw only, so it retrains.
    assert jobs == {"measure": 2, "replication": 2, "summarize": 1, "summarize_replication": 1, "all": 1, "provenance": 1,
                    "train_trigger_judge": 1, "calibrate_trigger_judge": 1, "generate_training_set": 1,
                    "train_defense_classifier": 1, "detect_poison": 1, "summarize_defenses": 1, "quality": 1,
                    "summarize_quality": 1}


def test_training_change_retrains_but_keeps_data_and_judges(tiny_run, tmp_path):
    config = write_config(tmp_path / "longer.yaml", diffusion__training__steps=13)
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    # Data and the content judge are kept; the trigger detector learns from the new clean model's calibration draw,
    # so it is trained anew (in a folder of its own) and calibrated again.
    assert jobs == {"train_diffusion": 2, "generate": 2, "measure": 2, "replication": 2, "summarize": 1,
                    "generate_calibration": 1, "train_trigger_judge": 1, "calibrate_trigger_judge": 1,
                    "generate_training_set": 1, "train_defense_classifier": 1, "detect_poison": 1,
                    "diffusion_classifier": 2, "summarize_defenses": 1, "summarize_replication": 1,
                    "generate_quality_set": 1, "quality": 2, "summarize_quality": 1, "all": 1, "provenance": 1}


def test_new_sampling_value_regenerates_every_cell_and_nothing_upstream(tiny_run, tmp_path):
    config = write_config(tmp_path / "fewer_images.yaml", generation__num_images=8)
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    assert jobs == {"generate": 2, "measure": 2, "replication": 2, "summarize": 1, "summarize_replication": 1, "all": 1, "provenance": 1}


def test_generation_batch_size_reruns_nothing_but_the_provenance(tiny_run, tmp_path):
    # A cell's noise is drawn for the whole cell, so how it is cut into batches changes no image.
    config = write_config(tmp_path / "bigger_batches.yaml", generation__batch_size=3)
    assert planned_jobs(snakemake(tiny_run, "-n", configfile=config)) == {"provenance": 1, "all": 1}


def test_adding_a_relabel_control_retrains_no_judge(tiny_run, tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config = write_config(tmp_path / "with_relabel.yaml", triggers={**config["triggers"], "relabel": {"type": "relabel"}})
    jobs = planned_jobs(snakemake(tiny_run, "-n", configfile=config))
    assert "train_content_judge" not in jobs and "train_trigger_judge" not in jobs
    assert jobs["train_diffusion"] == 1  # the relabel-p0.1 model


def test_forcerun_of_judges_does_not_retrain_diffusion_models(tiny_run):
    jobs = planned_jobs(snakemake(tiny_run, "-n", "--forcerun", "train_content_judge", "train_trigger_judge"))
    # The generated training set is labelled by the trigger detector, so it and what uses it follow the judges; the
    # quality stage measures in the content judge's features, so its scores (not its generations) follow too.
    assert jobs == {"train_content_judge": 1, "train_trigger_judge": 1, "calibrate_trigger_judge": 1, "measure": 2,
                    "summarize": 1, "generate_training_set": 1, "train_defense_classifier": 1, "detect_poison": 1,
                    "summarize_defenses": 1, "quality_reference": 1, "quality": 2, "summarize_quality": 1, "all": 1,
                    "provenance": 1}


def test_removing_one_generated_file_regenerates_only_that_cell(tiny_run):
    folder = cell_folder(tiny_run / "results", "tiny", "clean")
    cell = folder / "x0-none/c6_s2.npy"
    files = {path: path.stat() for path in folder.rglob("*") if path.suffix in (".npy", ".png")}
    original = np.load(cell)
    cell.unlink()
    jobs = planned_jobs(snakemake(tiny_run, "-n"))
    assert jobs == {"generate": 1, "measure": 1, "replication": 1, "summarize": 1, "summarize_replication": 1, "all": 1, "provenance": 1}
    # The model's job runs (asked for the cell alone, to spare the measurement) and makes only the missing cell.
    snakemake(tiny_run, str(cell.relative_to(tiny_run)))
    # A job's log is placed as its model is: logs/generate/<stage>/train-<d>/seed<k>_gen-<d>.log.
    [log] = (tiny_run / "results/tiny/logs/generate" / folder.parents[2].name).glob("train-*/seed0_*.log")
    others = [path for path in files if path.suffix == ".npy" and path != cell]
    assert f"{len(others)} of {len(others) + 1} cells are current and kept; generating 1" in log.read_text()
    # Kept cells are the same files (a rewrite replaces the file, with a new inode); Snakemake only touches them.
    assert all(path.stat().st_ino == files[path].st_ino for path in others)
    np.testing.assert_array_equal(np.load(cell), original)
    # Back to the finished run's times, for the tests after this one.
    for path, stat in files.items():
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(snakemake(tiny_run, "-n")) == {}


def test_report_is_self_contained_html(tiny_run):
    report = tiny_run / "results/experiments/tiny/report.html"
    snakemake(tiny_run, "--report", str(report))
    html = report.read_text(errors="replace")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    for name in ("trigger_amplification.csv", "trigger_ratio_vs_guidance.png", "generation_groups.png",
                 "samples_target.png", "detection.csv", "diffusion_classifier_asr.png"):
        assert name in html


# The one lint we keep on purpose: the venv is the environment (README, "Install"), so no rule names a conda
# environment or container that no test would run.
NO_CONDA_LINT = "Specify a conda environment or container for each rule."


def test_lint_passes_but_for_the_deliberate_absence_of_conda_environments(tmp_path):
    result = snakemake(tmp_path, "--lint", configfile=REPO / "config.yaml", check=False)
    text = result.stdout + result.stderr
    assert "Lints for snakefile" not in text, text
    lints = {line.strip()[2:].rstrip(":") for line in text.splitlines() if line.startswith("    * ")}
    assert lints <= {NO_CONDA_LINT}, text
    assert result.returncode == 0 or lints == {NO_CONDA_LINT}, text


def test_results_summary_of_the_older_layout_is_named_not_used(tmp_path):
    (tmp_path / "results/summary").mkdir(parents=True)
    result = snakemake(tmp_path, "-n")
    assert "results/summary/ is from an older layout" in result.stderr
    assert "results/experiments/tiny/summary/" in result.stderr
    assert "results/summary/" not in result.stdout.replace("results/experiments/tiny/summary/", "")


def test_every_rule_that_reads_the_device_asks_for_a_gpu_under_cuda(tmp_path):
    """On SLURM a job lands on a GPU node only when it asks for one; a rule that may run on the device must ask."""
    device_rules = set()
    for path in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=\s*rule \w+:)", path.read_text()):
            name = re.match(r"\s*rule (\w+):", block)
            if name and 'device=config["device"]' in block:
                device_rules.add(name.group(1))
    assert {"train_diffusion", "generate", "measure", "replication", "poison_duplicates"} <= device_rules
    config = write_config(tmp_path / "cuda.yaml", device="cuda",
                          replication__duplicate_poisoning={"enabled": True, "ratio": 0.1, "top_k": 2})
    text = snakemake(tmp_path / "work", "-n", configfile=config).stdout
    planned = {}
    for block in text.split("\n\n"):
        rule = re.search(r"^rule (\w+):", block.strip(), re.M)
        resources = re.search(r"resources: (.*)", block)
        if rule and resources:
            planned[rule.group(1)] = resources.group(1)
    missing = device_rules - set(planned)
    assert missing <= {"build_tiny_base", "encode_latents"}, missing  # Stable Diffusion only
    for rule in device_rules & set(planned):
        assert "gpu=1" in planned[rule], (rule, planned[rule])


@pytest.mark.parametrize("cells_per_job, generate_jobs", [("model", 2), ("condition", 8), ("cell", 16)])
def test_cells_per_job_sets_how_many_generate_jobs_make_the_same_cells(cells_per_job, generate_jobs, tmp_path):
    """2 models x 2 samplers x 2 conditions x 2 scales: one job per model, per (sampler, condition) or per cell,
    and the same 16 cell files either way (beside the clean model's 8 calibration cells, one job)."""
    config = write_config(tmp_path / "cells.yaml", generation__cells_per_job=cells_per_job)
    result = snakemake(tmp_path / "work", "-n", configfile=config)
    assert planned_jobs(result)["generate"] == generate_jobs
    cells = {path for line in result.stdout.splitlines() if line.strip().startswith("output:")
             for path in line.split(":", 1)[1].replace(",", " ").split() if "/generated/" in path and path.endswith(".npy")}
    assert len([cell for cell in cells if "/cal-" not in cell]) == 16 and len(cells) == 16 + 8


def test_dry_run_shows_multi_process_training_command(tmp_path):
    config = write_config(tmp_path / "ddp.yaml", diffusion__training__processes=2, device="cuda")
    # The workstation profile allows one GPU; say there are two, or the request is scaled down to 1.
    text = snakemake(tmp_path / "work", "-n", "-p", "--resources", "gpu=2", configfile=config).stdout
    train = text[text.index("rule train_diffusion:"):]
    train = train[:train.index("\n\n")]
    assert "-m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes 2" in train
    assert "--main_process_port $(" in train and "-m bibaddiff.diffusion.train_cli" in train
    assert "gpu=2" in train
    # Before accelerate starts: a card of its own for each of the two processes (bibaddiff.gpu_slots).
    assert "-m bibaddiff.gpu_slots --device cuda --cards 2 -- " in train.split("-m accelerate.commands.launch")[0]


# Shipped configs without placeholders plan as they are in the test after this one (scale-plan alone takes 30-45 s).
@pytest.mark.parametrize("config_name", ["config.yaml", *sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                                                if "CHANGE_ME" in p.read_text())])
def test_dry_run_of_shipped_configs(config_name, tmp_path):
    path = REPO / config_name if config_name == "config.yaml" else REPO / "configs" / config_name
    config = fill_placeholders(yaml.safe_load(path.read_text()), tmp_path)
    filled = tmp_path / "config.yaml"
    filled.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path / "work", "-n", configfile=filled)
    jobs = planned_jobs(result)
    assert jobs["train_diffusion"] >= 2 and jobs["summarize"] == 1
    if config["diffusion"].get("kind") == "stable_diffusion":
        # One latent file per training set: the clean one and every (trigger, ratio).
        assert jobs["encode_latents"] == jobs["poison"] + 1
        assert jobs["generate"] == jobs["train_diffusion"]  # one job per model makes all its cells


@pytest.mark.parametrize("config_name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                                if "CHANGE_ME" not in p.read_text()))
def test_shipped_configs_without_placeholders_plan_the_whole_dag_as_they_are(config_name, tmp_path):
    """What a user gets from a fresh clone: nothing to prepare by hand before the dry run plans every stage (but the
    Fashion-MNIST package for a config that reads it)."""
    from idx_helpers import FASHION_MNIST_FILES

    source = yaml.safe_load((REPO / "configs" / config_name).read_text())["dataset"]["source"]
    if source == "fashion_mnist" and not FASHION_MNIST_FILES.is_dir():
        pytest.skip(f"{FASHION_MNIST_FILES} is not installed (setup.sh installs it where apt-get works)")
    jobs = planned_jobs(snakemake(tmp_path / "work", "-n", configfile=REPO / "configs" / config_name))
    assert jobs["prepare_data"] == 1 and jobs["generate"] == jobs["train_diffusion"] and jobs["measure"] >= 2 and jobs["summarize"] == 1
    if yaml.safe_load((REPO / "configs" / config_name).read_text())["diffusion"].get("kind") == "stable_diffusion":
        assert jobs["build_tiny_base"] == 1 and jobs["encode_latents"] >= 2


@pytest.mark.parametrize("config_name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                                if "CHANGE_ME" in p.read_text()))
def test_unfilled_placeholders_give_one_line_naming_every_key(config_name, tmp_path):
    result = snakemake(tmp_path / "work", "-n", configfile=REPO / "configs" / config_name, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid config:")]
    assert len(errors) == 1, result.stderr
    assert "dataset.root" in errors[0] and "CHANGE_ME" in errors[0]
    if config_name.endswith("-sd.yaml"):
        assert "diffusion.pretrained.path" in errors[0] and "judges.pretrained_weights" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_small_ratios_and_scales_name_their_folders_without_exponents(tmp_path):
    config = write_config(tmp_path / "small.yaml", poisoning__ratios=[0.00005, 0.1], generation__guidance_scales=[1, 10.0])
    result = snakemake(tmp_path / "work", "-n", configfile=config)
    text = result.stdout + result.stderr
    assert re.search(r"results/tiny/data/patch-p0\.00005-[0-9a-f]{12}/train", text) and "/c6_s10.npy" in text and "e-05" not in text
    assert planned_jobs(result)["poison"] == 2


@pytest.mark.parametrize("change, expected", [
    ({"triggers__patch__type": "warpy"}, "triggers.patch.type: 'warpy' is not one of ['patch', 'blend', 'stamp', 'wanet', 'additive', 'relabel']"),
    ({"poisoning__ratios": [1.0]}, "poisoning.ratios.0: 1.0 is greater than or equal to the maximum of 1"),
    ({"target": 10}, "target: 10 is not a class of tiny; allowed 0..9"),
    ({"poisoning__ratios": [0.95]}, "poisoning.ratios: 0.95 asks for 190 poisoned images but only 180"),
    ({"generation__guidance_scales": []}, "generation.guidance_scales: [] should be non-empty"),
    ({"dataset__source": "cifar10"}, "dataset.root must name a local folder for source cifar10"),
    ({"dataset__source": "imagefolder", "dataset__root": "/nonexistent/images"}, "/nonexistent/images/train is not a folder"),
])
def test_config_errors_stop_before_any_job_with_one_line(change, expected, tmp_path):
    config = write_config(tmp_path / "broken.yaml", **change)
    result = snakemake(tmp_path / "work", "-n", configfile=config, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid config:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "work" / "results").exists()


def test_relabel_only_control_is_judged_for_content_only(tmp_path):
    config = write_config(tmp_path / "relabel.yaml", triggers={"patch": {"type": "patch", "pattern": "white", "size": 2},
                                                              "relabel": {"type": "relabel"}},
                          generation__x0_clipping="none", generation__guidance_scales=[1],
                          generation__other_conditions=[], defenses__enabled=False, replication__enabled=False,
                          quality__enabled=False)
    workdir = tmp_path / "work"
    snakemake(workdir, configfile=config)
    table = pd.read_csv(workdir / "results/experiments/tiny/summary/trigger_amplification.csv")
    relabel = table[table.trigger == "relabel"]
    assert set(relabel.attack) == {"relabel-p0.1", "clean"}
    # No pixel carries a relabelling: its trigger columns are empty, not zero; G1 is the wrong-content share.
    for column in ("trigger_ratio", "trigger_ratio_low", "amplification", "amplified", "G2", "G3"):
        assert relabel[column].isna().all(), column
    assert (relabel.G1 + relabel.G4 == relabel.n).all()
    assert np.allclose(relabel.G1_ratio, relabel.mismatch_ratio)
    assert np.allclose(relabel[relabel.attack == "relabel-p0.1"].training_share, 20 / 40)  # 20 relabelled + 20 sixes
    patch = table[table.trigger == "patch"]
    assert patch.trigger_ratio.notna().all()
    assert not list((workdir / "results/tiny/judges").glob("trigger-relabel*"))
    assert stage(workdir / "results/tiny/judges", "trigger-patch").is_dir()


# Last in this module: it adds another experiment's cells and judges to tiny_run's results (the tests above expect
# the tiny config's alone).
def test_compare_samplers_pairs_each_cell_image_for_image(tiny_run, tmp_path):
    """benchmarks/compare_samplers.py on the tiny run and a variant of its sampler, image for image."""
    import csv
    import subprocess
    import sys

    workdir = tiny_run

    def variant(name: str, **generation) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"experiment": f"tiny-{name}",
                                        "generation": {"x0_clipping": ["none"], **generation},
                                        "defenses": {"enabled": False}, "replication": {"enabled": False},
                                        "quality": {"enabled": False}}))
        return path

    def compare(*variants: Path, out: str = "out") -> subprocess.CompletedProcess:
        arguments = [arg for path in variants for arg in ("--variant", str(path))]
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_samplers.py"), "--configfile",
                               str(TINY_CONFIG), *arguments, "--out", str(tmp_path / out), "--directory", str(workdir)],
                              capture_output=True, text=True, timeout=600)

    # The same sampler under another experiment's name: the same files, so nothing may change.
    same = compare(variant("same"), out="same")
    assert same.returncode == 0, same.stderr[-3000:]
    same_rows = list(csv.DictReader(open(tmp_path / "same" / "samplers.csv")))
    # Two models (poisoned, clean) x one detector x (2 conditions x 2 scales under x0 none); one seed: no pooled row.
    assert len(same_rows) == 8 and {row["seed"] for row in same_rows} == {"0"}
    for row in same_rows:
        assert row["trigger_only_base"] == row["trigger_only_variant"] == row["content_changed"] == "0"
        assert float(row["trigger_change_p"]) == 1.0 and row["trigger_ratio_base"] == row["trigger_ratio_variant"]

    # Upstream's timesteps: the variant's DAG makes its own cells from the same models and noise.
    quadratic = variant("quadratic", timesteps="quadratic")
    snakemake(workdir, "--configfile", str(TINY_CONFIG), str(quadratic), configfile=None)
    # The poisoned model's cell under each sampler: same model and noise, other pixels.
    [leading, upstream] = [np.load(path) for path in sorted(
        (workdir / "results").glob("tiny/generated/patch-p0.1-*/train-*/seed0/gen-*/x0-none/c1_s2.npy"),
        key=lambda path: "quadratic" in json.dumps(json.load(open(path.parents[1] / "params.json"))))]
    assert leading.shape == upstream.shape and not np.array_equal(leading, upstream)
    compared = compare(quadratic)
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "samplers.csv")))
    assert len(rows) == 8 and all(row["variant"] == "quadratic (tiny-quadratic)" for row in rows)
    # The experiment's side is judged as before.
    key = ("attack", "condition", "guidance")
    assert {tuple(row[k] for k in key): row["trigger_ratio_base"] for row in rows} == \
        {tuple(row[k] for k in key): row["trigger_ratio_base"] for row in same_rows}
    assert "| quadratic (tiny-quadratic) |" in (tmp_path / "out" / "samplers.md").read_text()

    # A variant that changes the models is not a sampler variant.
    retrained = tmp_path / "retrained.yaml"
    retrained.write_text(yaml.safe_dump({"experiment": "tiny-retrained", "diffusion": {"training": {"steps": 3}}}))
    refused = compare(retrained, out="refused")
    assert refused.returncode == 1 and "a variant must keep the models" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
