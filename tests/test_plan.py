"""The experiment's plan: every name's formatter and parser, and the plan of the tiny config."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from bibaddiff import plan as P
from bibaddiff.config import load_schema, validate_config
from bibaddiff.errors import BibaddiffError
from import_helpers import importing, patch_model, write_ddpm

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())


def tiny_plan(**changes) -> P.Plan:
    """The plan of the tiny config with dotted keys changed, e.g. ``generation__cells_per_job="cell"``."""
    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return P.Plan(validate_config(config, load_schema()))


# ------------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("value, text", [(0.1, "0.1"), (2.0, "2"), (2, "2"), (5e-05, "0.00005"), (7.5, "7.5"),
                                         (0, "0"), (10.0, "10")])
def test_numbers_are_written_without_exponents_and_read_back(value, text):
    assert P.number(value) == text
    assert P.parse_number(text) == float(value)
    assert re.fullmatch(P.WILDCARD_CONSTRAINTS["guidance"], text)


def test_a_malformed_number_is_refused():
    for text in ("1e-5", "-1", "", "1."):
        with pytest.raises(BibaddiffError):
            P.parse_number(text)


@pytest.mark.parametrize("trigger, ratio, duplicates, name", [
    ("patch", 0.1, None, "patch-p0.1"), ("blend_2", 0.00005, None, "blend_2-p0.00005"),
    ("patch", 0.1, "random", "patch-p0.1-dup_random"), ("patch", 0.05, "duplicates", "patch-p0.05-dup_duplicates"),
    (None, 0.0, None, "clean"),
])
def test_attack_names_round_trip(trigger, ratio, duplicates, name):
    assert P.attack_name(trigger, ratio, duplicates) == name
    assert P.parse_attack(name) == P.AttackName(trigger, float(ratio), duplicates)
    assert re.fullmatch(P.WILDCARD_CONSTRAINTS["attack"], name)
    assert P.attack_series(name) == (name if trigger is None else trigger + (f"-dup_{duplicates}" if duplicates else ""))


def test_attack_names_refuse_what_they_cannot_read():
    with pytest.raises(BibaddiffError):
        P.attack_name("patch", 0.1, "sideways")
    for name in ("patch", "patch-p", "pa-tch-p0.1", "patch-p0.1-dup_other"):
        with pytest.raises(BibaddiffError):
            P.parse_attack(name)


def test_stage_names_round_trip_and_split_poison_from_duplicate_stages():
    record = {"kind": "poisoned dataset", "ratio": 0.1}
    digest = P.settings_digest(record)
    assert re.fullmatch("[0-9a-f]{12}", digest) and digest == P.settings_digest(dict(reversed(record.items())))
    for attack in ("clean", "patch-p0.1", "patch-p0.1-dup_random"):
        name = P.stage_name(attack, record)
        assert P.parse_stage(name) == (attack, digest)
        assert re.fullmatch(P.WILDCARD_CONSTRAINTS["stage"], name)
    assert re.fullmatch(P.POISONED_STAGE, P.stage_name("patch-p0.1", record))
    assert not re.fullmatch(P.POISONED_STAGE, P.stage_name("patch-p0.1-dup_random", record))
    assert re.fullmatch(P.DUPLICATE_STAGE, P.stage_name("patch-p0.1-dup_duplicates", record))
    with pytest.raises(BibaddiffError):
        P.parse_stage("patch-p0.1")


def test_cell_files_round_trip():
    for sampler, condition, guidance in (("none", 6, 1.0), ("clip_recompute", 12, 7.5), ("clip", 0, 0.00005)):
        path = f"results/x/generated/s/train-0/seed0/gen-0/{P.cell_file(sampler, condition, guidance)}"
        assert P.parse_cell_file(path) == P.Cell(sampler, condition, guidance)
        assert P.parse_cell_file(Path(path).with_suffix(".png")) == P.Cell(sampler, condition, guidance)
    assert P.cell_file("{sampler}", "{condition}", "{guidance}", "png") == "x0-{sampler}/c{condition}_s{guidance}.png"
    with pytest.raises(BibaddiffError, match="not a generated cell"):
        P.parse_cell_file("x0-none/c6.npy")
    assert P.Cell("none", 6, 2.0).as_params() == {"x0_clipping": "none", "condition": 6, "guidance": 2.0}


def test_training_set_names_round_trip():
    name = P.generated_set_name(3, 1.5)
    assert name == "generated_seed3_s1.5" and P.parse_trainset(name) == P.TrainsetName("generated", 3, 1.5)
    for kind in ("clean", "poisoned", "training"):
        assert P.parse_trainset(kind) == P.TrainsetName(kind)
    assert re.fullmatch(P.WILDCARD_CONSTRAINTS["trainset"], name) and re.fullmatch(P.WILDCARD_CONSTRAINTS["detset"], name)
    assert P.generated_set_folder(3, 1.5) == "seed3_s1.5"
    with pytest.raises(BibaddiffError):
        P.parse_trainset("generated_seed_s1")


def test_seed_and_judge_names_round_trip():
    assert P.parse_seed_name(P.seed_name(4)) == 4
    name = P.judge_name("patch", {"kind": "trigger judge"})
    assert P.parse_judge_name(name) == ("patch", P.settings_digest({"kind": "trigger judge"}))
    assert re.fullmatch(P.WILDCARD_CONSTRAINTS["judge"], name)


def test_detectors_that_learn_from_different_calibration_scales_get_different_folders():
    # Configs that share a results folder but not their guidance scales must not retrain one detector in turn.
    base, wider = tiny_plan(), tiny_plan(generation__guidance_scales=[1, 2, 6])
    assert base.calibration_id == wider.calibration_id and base.detector_negatives == "generated"
    assert base.trigger_judge("patch") != wider.trigger_judge("patch")
    assert base.trigger_judge("patch") == tiny_plan().trigger_judge("patch")


def test_a_jobs_log_names_its_rule_even_below_a_models_folders():
    plan = tiny_plan()
    nested = plan.log_file("generate", plan.model_name("clean", 0), plan.sampling_id)
    assert nested.startswith(f"results/tiny/logs/generate/{plan.clean_stage}/{plan.training_id}/seed0_gen-")
    for path, rule in ((nested, "generate"), (plan.experiment_benchmark("measure", "clean", "seed0"), "measure"),
                       ("/home/me/logs/work/" + plan.log_file("prepare_data", plan.clean_stage), "prepare_data")):
        assert P.rule_of_job_file(path) == rule
    with pytest.raises(BibaddiffError, match="not a job's log"):
        P.rule_of_job_file("results/tiny/models/x.log")


def test_training_launcher():
    assert P.training_launcher("/usr/bin/python3", 1) == "/usr/bin/python3"
    launcher = P.training_launcher("/my env/python", 2)
    assert launcher.startswith("'/my env/python' -m accelerate.commands.launch --multi_gpu") and "--num_processes 2" in launcher
    # A job that may use a GPU holds its cards first, one per process.
    assert P.training_launcher("/usr/bin/python3", 2, "cuda").startswith(
        "/usr/bin/python3 -m bibaddiff.gpu_slots --device cuda --cards 2 -- /usr/bin/python3 -m accelerate")


# ------------------------------------------------------------------------------------------------------ the plan
def test_the_tiny_plan_places_its_stages_where_it_always_did():
    """Digests name folders that hold trained models: a change of a record or its digest retrains everything."""
    plan = tiny_plan()
    assert list(plan.attacks) == ["patch-p0.1", "clean"]
    assert plan.clean_stage == "clean-64a5c2111171"
    assert plan.stage_of("patch-p0.1") == plan.stage_of("patch-p0.1", 0) == "patch-p0.1-67252a5c66f5"
    assert plan.training_id == "train-9fbbc1246d7e" and plan.sampling_id == "gen-4e8352c77331"
    assert plan.calibration_id == "cal-ddaae2cb14aa"
    assert plan.content_judge == "results/tiny/judges/content-f0ff67c3222b"
    # Detectors (seconds to retrain, no diffusion model) moved when their key gained the calibration cells.
    assert plan.trigger_judge("patch") == "results/tiny/judges/trigger-patch-c5da3ef26a27"
    assert plan.model_of("patch-p0.1", 0) == "results/tiny/models/patch-p0.1-67252a5c66f5/train-9fbbc1246d7e/seed0"
    assert plan.cells_of("clean", 0)[0] == \
        "results/tiny/generated/clean-64a5c2111171/train-9fbbc1246d7e/seed0/gen-4e8352c77331/x0-none/c6_s1.npy"
    assert plan.stage_attack("patch-p0.1-67252a5c66f5") == "patch-p0.1"
    with pytest.raises(BibaddiffError, match="not a stage of this config"):
        plan.stage_attack("patch-p0.2-67252a5c66f5")


def test_every_cell_is_a_path_its_parser_reads_back():
    plan = tiny_plan()
    # 2 samplers x 2 conditions x 2 scales, the same order as the cell params.
    cells = plan.cells_of("patch-p0.1", 0)
    assert len(cells) == 8 == len(plan.model_cells())
    for path, params in zip(cells, plan.model_cells(), strict=True):
        assert P.parse_cell_file(path).as_params() == params
    assert len(plan.all_cells()) == 2 * 8 + 8  # two models and the clean model's calibration draw


@pytest.mark.parametrize("cells_per_job, jobs", [("model", 1), ("condition", 4), ("cell", 8)])
def test_each_generate_job_gets_the_cells_of_its_files_as_params(cells_per_job, jobs):
    plan = tiny_plan(generation__cells_per_job=cells_per_job)
    patterns = plan.generation_job_files("npy")
    names = plan.generation_job_wildcards
    # Every job of one model: the cells' values of its wildcards.
    job_values = list(dict.fromkeys(tuple((name, value) for name, value in zip(("sampler", "condition", "guidance"), cell)
                                          if name in names) for cell in plan.cells))
    assert len(job_values) == jobs
    made = []
    for values in job_values:
        wildcards = {name: str(value) for name, value in values}
        files = [pattern.format(model="S", **wildcards) for pattern in patterns]
        cells = plan.generation_job_cells(wildcards)
        assert [P.parse_cell_file(path).as_params() for path in files] == cells
        made += files
    # The jobs make every cell of the model once.
    assert sorted(made) == sorted(plan.generated("S", *cell) for cell in plan.cells)


def test_defence_sets_are_described_by_the_plan_not_by_their_names():
    plan = tiny_plan(defenses__generated_set_guidance=[1, 2.5])
    inputs, described = plan.defense_inputs(), plan.defense_descriptions()
    assert len(inputs["detection"]) == len(described["detection"]) == 3
    assert described["detection"][0] == {"attack": "patch-p0.1", "set": "training", "seed": "", "guidance": None}
    assert described["detection"][2] == {"attack": "patch-p0.1", "set": "generated_seed0_s2.5", "seed": "0",
                                         "guidance": 2.5}
    assert inputs["detection"][2].endswith("defenses/detection/patch-p0.1/generated_seed0_s2.5.json")
    assert inputs["detection_items"][2].endswith("defenses/detection/patch-p0.1/generated_seed0_s2.5_items.npz")
    assert [d["set"] for d in described["classifiers"]] == ["poisoned", "generated_seed0_s1", "generated_seed0_s2.5",
                                                            "clean"]
    assert inputs["classifiers"][-1].endswith("defenses/classifiers/clean/clean")
    assert plan.trainset_data("patch-p0.1", "generated_seed0_s2.5").endswith(
        "defenses/generated_sets/patch-p0.1/seed0_s2.5")
    assert plan.trainset_data("patch-p0.1", "poisoned") == plan.stage_data(plan.stage_of("patch-p0.1"))
    assert plan.detection_inputs("patch-p0.1", "training")["classifier"].endswith("classifiers/patch-p0.1/poisoned")


def test_the_quality_stage_reuses_a_defences_generated_set_when_it_is_the_same_set():
    plan = tiny_plan()
    assert plan.quality_generations_of("patch-p0.1", 0).endswith("defenses/generated_sets/patch-p0.1/seed0_s1")
    assert plan.quality_generations_of("clean", 0) == plan.quality_set(plan.model_name("clean", 0)) == \
        f"results/tiny/generated/{plan.clean_stage}/{plan.training_id}/seed0/{plan.quality_set_id}"
    assert tiny_plan(quality__guidance=2).quality_generations_of("patch-p0.1", 0).startswith("results/tiny/generated/")
    assert plan.model_name("clean", 0) == f"{plan.clean_stage}/{plan.training_id}/seed0"


def test_duplicate_poisoning_and_draws_per_seed():
    plan = tiny_plan(replication__duplicate_poisoning={"enabled": True, "design": "synthetic", "k": 5, "m": 4,
                                                       "ratio": 0.1},
                     diffusion__training__seeds=[0, 1], poisoning__draw_per_seed=True)
    assert plan.duplicate_attacks() == {"patch-p0.1-dup_random": "random", "patch-p0.1-dup_duplicates": "duplicates"}
    assert plan.series()["patch-p0.1-dup_random"] == "patch-dup_random" and plan.series()["patch-p0.1"] == "patch"
    # A draw per seed for the plain attack; the duplicate pair shares its draw.
    assert plan.stage_of("patch-p0.1", 0) != plan.stage_of("patch-p0.1", 1)
    assert plan.stage_of("patch-p0.1-dup_random", 0) == plan.stage_of("patch-p0.1-dup_random", 1)
    assert re.fullmatch(P.DUPLICATE_STAGE, plan.stage_of("patch-p0.1-dup_random", 0))
    assert "patch-p0.1-dup_random" not in plan.poisoned_attacks


def test_target_grids_say_what_they_show():
    files, shown = tiny_plan().target_grids()
    assert len(files) == len(shown) == 4
    assert shown[0] == {"attack": "patch-p0.1", "guidance": 1.0} and files[0].endswith("x0-none/c6_s1.png")


def test_model_places_round_trip():
    trained = P.trained_model_name("patch-p0.1-67252a5c66f5", "train-9fbbc1246d7e", 3)
    assert P.parse_model_name(trained) == P.ModelName("patch-p0.1-67252a5c66f5", "train-9fbbc1246d7e", 3)
    imported = P.imported_model_name("paper_badnet", {"files": {"model.ckpt": "0" * 64}})
    assert P.parse_model_name(imported) == P.ModelName(imported=imported.removeprefix("imported/"))
    for name in (trained, imported):
        assert re.fullmatch(P.WILDCARD_CONSTRAINTS["model"], name)
    assert re.fullmatch(P.WILDCARD_CONSTRAINTS["imported"], imported.removeprefix("imported/"))
    for name in ("imported/a-b", "patch-p0.1-67252a5c66f5/seed0", "imported/pa-per-0123456789ab"):
        with pytest.raises(BibaddiffError):
            P.parse_model_name(name)


@pytest.fixture(scope="module")
def imported_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan_imports")
    return {"poisoned": write_ddpm(folder / "poisoned"), "clean": write_ddpm(folder / "clean", seed=1)}


def import_plan(models: dict, **changes) -> P.Plan:
    return P.Plan(validate_config(importing(models, **changes), load_schema()))


def test_imported_models_are_models_of_the_plan_without_training(imported_models):
    plan = import_plan({"mine": patch_model(imported_models["poisoned"]),
                        "control": {"path": str(imported_models["clean"]), "kind": "ddpm", "clean": True,
                                    "training_data": "rebuild"}})
    assert plan.models() == [("patch-p0.1", 0), ("clean", 0)] and list(plan.attacks) == ["patch-p0.1", "clean"]
    mine = plan.imported_model("patch-p0.1", 0)
    assert mine.name == "mine" and plan.imported_model("clean", 0).name == "control"
    # Its folder is placed by its record, which holds the digest of each file; it is no train_diffusion output.
    assert re.fullmatch(rf"results/tiny/models/imported/mine-{P.DIGEST}", plan.model_of("patch-p0.1", 0))
    assert plan.model_of("patch-p0.1", 0) == plan.import_folder(mine.model.removeprefix("imported/"))
    assert mine.record["files"]["unet/diffusion_pytorch_model.safetensors"]
    assert plan.cells_of("patch-p0.1", 0)[0] == f"results/tiny/generated/{mine.model}/{plan.sampling_id}/x0-none/c6_s1.npy"
    # The rebuilt training set is the poisoned stage a model trained here with the same settings learns from.
    assert plan.training_data_of("patch-p0.1", 0) == tiny_plan().training_data_of("patch-p0.1", 0)
    assert plan.stage_attack(plan.stage_of("patch-p0.1", 0)) == "patch-p0.1"
    # The clean import draws the detectors' calibration generations.
    assert plan.calibration_cells[0].startswith(f"results/tiny/generated/{plan.imported_model('clean', 0).model}/cal-")
    assert plan.origin("patch-p0.1", 0) == f"imported from {Path(imported_models['poisoned']).resolve()}"
    assert plan.origins()["clean"] == {"0": f"imported from {Path(imported_models['clean']).resolve()}"}
    assert tiny_plan().origins() == {"patch-p0.1": {"0": "trained here"}, "clean": {"0": "trained here"}}
    assert plan.import_descriptions_of("patch-p0.1", 0) == [f"{plan.experiment_dir}/imported/mine.json"]
    assert plan.import_description("mine")["training_data"] == {"kind": "rebuilt",
                                                                "folder": plan.training_data_of("patch-p0.1", 0)}
    assert plan.model_of("patch-p0.1", 0) in plan.experiment_stages()


def test_a_changed_file_moves_the_import_and_everything_made_from_it(imported_models, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(imported_models["poisoned"], model)
    before = import_plan({"mine": patch_model(model)})
    (model / "training.json").write_text("{}")
    after = import_plan({"mine": patch_model(model)})
    assert before.model_of("patch-p0.1", 0) != after.model_of("patch-p0.1", 0)
    assert not set(before.cells_of("patch-p0.1", 0)) & set(after.cells_of("patch-p0.1", 0))


def test_an_import_beside_trained_models_and_with_stated_or_own_training_data(imported_models, tmp_path):
    import json


    plan = import_plan({"mine": patch_model(imported_models["poisoned"], seed=1, training_data=None,
                                            training_share=0.5)},
                       diffusion__training__seeds=[0], diffusion__training__clean_seeds=[0])
    assert plan.training_seeds("patch-p0.1") == [0, 1] and plan.origin("patch-p0.1", 0) == "trained here"
    assert plan.model_of("patch-p0.1", 0) == tiny_plan().model_of("patch-p0.1", 0)
    assert plan.training_data_of("patch-p0.1", 1) is None and plan.training_data_of("patch-p0.1") is not None
    assert plan.replication_models() == [("patch-p0.1", 0), ("clean", 0)]
    assert plan.import_description("mine")["training_data"] == {"kind": "stated", "training_share": 0.5}
    alone = import_plan({"mine": patch_model(imported_models["poisoned"], training_data=None, training_share=0.5)})
    # Without its training set: no poisoned-set classifier, no screening of it, no replication.
    assert alone.defense_trainsets("patch-p0.1") == ["generated_seed0_s1"]
    assert [s for a, s in alone.defense_sets()["detection"]] == ["generated_seed0_s1"]
    assert alone.replication_models() == [] and alone.calibration_cells == [] and alone.detector_negatives == "real"
    # A training set of its own: its files are digested with the import.
    (tmp_path / "train").mkdir()
    (tmp_path / "train/manifest.json").write_text(json.dumps({"class_names": [str(i) for i in range(10)],
                                                              "image_size": 8, "channels": 1}))
    (tmp_path / "train/metadata.jsonl").write_text("")
    own = import_plan({"mine": patch_model(imported_models["poisoned"], training_data=str(tmp_path / "train"))})
    assert own.training_data_of("patch-p0.1", 0) == str(tmp_path / "train") and own.replication_models()
    described = own.import_description("mine")["training_data"]
    assert described["kind"] == "folder" and described["num_files"] == 2 and len(described["digest"]) == 64
    assert own.detection_sets("patch-p0.1")[0] == "training" and "patch-p0.1" not in own.attack_of_stage.values()


def test_notes_name_an_older_layout(tmp_path):
    plan = tiny_plan()
    assert plan.notes(tmp_path) == []
    (tmp_path / "results/summary").mkdir(parents=True)
    (tmp_path / "results/tiny/data/clean").mkdir(parents=True)
    notes = plan.notes(tmp_path)
    assert len(notes) == 2 and "results/summary/ is from an older layout" in notes[0]
    assert f"data/{plan.clean_stage}/" in notes[1]
