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
    assert plan.trigger_judge("patch") == "results/tiny/judges/trigger-patch-0fb35db48e84"
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
        files = [pattern.format(stage="S", seed=0, **wildcards) for pattern in patterns]
        cells = plan.generation_job_cells(wildcards)
        assert [P.parse_cell_file(path).as_params() for path in files] == cells
        made += files
    # The jobs make every cell of the model once.
    assert sorted(made) == sorted(plan.generated("S", 0, *cell) for cell in plan.cells)


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
    assert plan.quality_generations_of("clean", 0) == plan.quality_set(plan.clean_stage, 0)
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


def test_notes_name_an_older_layout(tmp_path):
    plan = tiny_plan()
    assert plan.notes(tmp_path) == []
    (tmp_path / "results/summary").mkdir(parents=True)
    (tmp_path / "results/tiny/data/clean").mkdir(parents=True)
    notes = plan.notes(tmp_path)
    assert len(notes) == 2 and "results/summary/ is from an older layout" in notes[0]
    assert f"data/{plan.clean_stage}/" in notes[1]
