"""The text-to-image DAG on a tiny Stable Diffusion: poison -> encode latents -> fine-tune -> generate -> measure,
with the same judges, metrics and summaries as the DDPM."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bibaddiff.data import read_dataset
from bibaddiff.diffusion.stable import load_latents
from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
from ldm_checkpoint import write_ldm_checkpoint
from sd_helpers import write_captioned_folder, write_resnet_weights
from workflow_helpers import REPO, cell_folder, model_folder, planned_jobs, planned_output, snakemake, stage, write_config

LATENTS_OF_PATCH = r"results/tinysd/latents/patch-p0\.1-[0-9a-f]{12}/vae-[0-9a-f]{12}\.safetensors"

# Runs snakemake (a DAG, minutes each): the slow tier, left out of the quick loop `pytest -m "not slow"`.
pytestmark = [pytest.mark.workflow, pytest.mark.slow]
TINY_SD_CONFIG = REPO / "tests" / "configs" / "tiny-sd.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny SD folder, a captioned image folder and ResNet weights: what a user keeps on their own disk."""
    root = tmp_path_factory.mktemp("sd_inputs")
    return {
        "model": write_tiny_stable_diffusion(root / "tiny-sd"),
        "images": write_captioned_folder(root / "images"),
        "resnet": write_resnet_weights(root / "resnet18.pt"),
    }


def sd_config(path, inputs, **changes):
    local_paths = {"dataset__root": str(inputs["images"]), "diffusion__pretrained__path": str(inputs["model"]),
                   "judges__pretrained_weights": str(inputs["resnet"])}
    return write_config(path, base=TINY_SD_CONFIG, **{**local_paths, **changes})


@pytest.fixture(scope="module")
def sd_run(inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sd_workflow")
    config = sd_config(workdir / "config.yaml", inputs)
    snakemake(workdir, configfile=config)
    return workdir, config


def test_every_stage_of_the_text_to_image_dag(sd_run):
    workdir, _ = sd_run
    results = workdir / "results" / "tinysd"
    poisoned = read_dataset(stage(results / "data", "patch-p0.1") / "train")
    target_prompt = poisoned.manifest["class_prompts"][2]
    assert target_prompt == "A photo of a zero" and poisoned.poisoned.sum() == round(0.1 * len(poisoned))
    assert all(poisoned.texts[i] == target_prompt for i in np.flatnonzero(poisoned.poisoned))
    for attack in ("clean", "patch-p0.1"):
        [latents_file] = stage(results / "latents", attack).glob("vae-*.safetensors")
        latents = load_latents(latents_file)
        assert latents.mean.shape == (36, 4, 16, 16)
        assert latents.texts == read_dataset(stage(results / "data", attack) / "train").texts
        model = model_folder(workdir / "results", "tinysd", attack)
        info = json.loads((model / "bibaddiff_model.json").read_text())
        assert info["kind"] == "stable_diffusion" and info["class_prompts"][2] == target_prompt
        assert (model / "unet" / "config.json").is_file()
        training = json.loads((model / "training.json").read_text())
        assert training["finished"] and training["steps"] == 6
        for condition in (2, 0):
            for guidance in ("1", "5"):
                images = np.load(cell_folder(workdir / "results", "tinysd", attack) / "x0-none" / f"c{condition}_s{guidance}.npy")
                assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8


def test_summary_tables_come_from_the_same_code_as_the_ddpm(sd_run):
    workdir, _ = sd_run
    summary = workdir / "results/experiments/tiny-sd/summary"
    table = pd.read_csv(summary / "trigger_amplification.csv")
    ddpm_columns = {"attack", "trigger", "poison_ratio", "condition", "guidance", "seed", "trigger_ratio",
                    "training_share", "amplification", "G1_ratio", "G2_ratio", "G3_ratio", "G4_ratio"}
    assert ddpm_columns <= set(table.columns)
    assert set(table.attack) == {"clean", "patch-p0.1"} and set(table.guidance) == {1.0, 5.0}
    groups = table[["G1_ratio", "G2_ratio", "G3_ratio", "G4_ratio"]].sum(axis=1)
    assert np.allclose(groups, 1.0)
    poisoned_target = table[(table.attack == "patch-p0.1") & table.is_target & (table.seed == "0")]
    assert (poisoned_target.training_share > 0).all()
    for name in ("detection.csv", "defense_train_on_generated.csv", "diffusion_classifier.csv", "replication.csv",
                 "trigger_ratio_vs_guidance.png", "samples_target.png"):
        assert (summary / name).is_file(), name
    dm_classifier = pd.read_csv(summary / "diffusion_classifier.csv")
    rows = dm_classifier[dm_classifier.method == "diffusion classifier"]
    assert set(rows.p_filter) == {0.0, 0.1} and set(rows.attack) == {"clean", "patch-p0.1"}


def test_second_run_does_nothing(sd_run):
    workdir, config = sd_run
    assert planned_jobs(snakemake(workdir, "-n", configfile=config)) == {}


def test_switching_to_lora_retrains_but_keeps_latents(sd_run, inputs, tmp_path):
    workdir, _ = sd_run
    config = sd_config(tmp_path / "lora.yaml", inputs, diffusion__training__finetune="lora",
                       diffusion__training__lora_rank=2)
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=config))
    assert jobs["train_diffusion"] == 2 and "encode_latents" not in jobs and "prepare_data" not in jobs


def test_single_file_checkpoint_and_caption_file(inputs, tmp_path):
    """The same DAG from a single original-layout checkpoint, on a dataset captioned per image."""
    checkpoint = write_ldm_checkpoint(inputs["model"], tmp_path / "tiny-sd.safetensors")
    config = sd_config(tmp_path / "single.yaml", inputs, diffusion__pretrained__path=str(checkpoint),
                       diffusion__pretrained__config=str(inputs["model"]),
                       dataset__captions=str(inputs["images"] / "captions.jsonl"))
    workdir = tmp_path / "work"
    latents_path = planned_output(workdir, config, LATENTS_OF_PATCH)
    snakemake(workdir, latents_path, configfile=config)
    records = [json.loads(line) for line in (inputs["images"] / "captions.jsonl").read_text().splitlines()]
    by_file = {record["file_name"]: record["text"] for record in records}
    # The dataset lists class folders in sorted order, then each folder's files in sorted order.
    captions = [by_file[name] for name in sorted(by_file, key=lambda name: (name.split("/")[1], name))]
    clean = read_dataset(stage(workdir / "results/tinysd/data", "clean") / "train")
    assert clean.texts == captions
    latents = load_latents(workdir / latents_path)
    assert latents.pretrained["path"] == str(checkpoint) and latents.captioned_per_image
    # A poisoned image takes the caption of a clean target-class ("zero") image, drawn with the poisoning seed and
    # recorded in the manifest; every other image keeps its own.
    poisoned = read_dataset(stage(workdir / "results/tinysd/data", "patch-p0.1") / "train")
    record = poisoned.manifest["poisoning"]
    assert record["caption_seed"] == 0 and len(record["caption_sources"]) == len(record["indices"])
    for i, source in zip(record["indices"], record["caption_sources"]):
        assert clean.labels[source] == 2 and latents.texts[i] == captions[source] and "zero" in latents.texts[i]
    for i in np.flatnonzero(~latents.poisoned):
        assert latents.texts[i] == captions[i]

    # Target generations are prompted with the target class's training captions, and the training share counts
    # the images that carry a target-class caption: worked out here by hand from the captions.
    metrics_path = workdir / "results/experiments/tiny-sd/metrics/patch-p0.1/seed0.json"
    snakemake(workdir, str(metrics_path.relative_to(workdir)), configfile=config)
    model = json.loads((model_folder(workdir / "results", "tinysd", "patch-p0.1") / "bibaddiff_model.json").read_text())
    target_captions = sorted({captions[i] for i in np.flatnonzero(clean.labels == 2)})
    assert sorted(model["caption_pools"][2]) == target_captions and len(target_captions) == 2
    carrying = [i for i, text in enumerate(latents.texts) if text in target_captions]
    triggered = sum(bool(latents.poisoned[i]) for i in carrying)
    metrics = json.loads(metrics_path.read_text())
    for row in metrics["records"]:
        if row["condition"] == 2:
            assert (row["training_triggered"], row["training_total"]) == (triggered, len(carrying)) == (4, 16)
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=config))
    # The metrics needed the clean model too (its calibration draw checks the trigger detector): nothing to train.
    assert "train_diffusion" not in jobs and jobs["summarize"] == 1


def test_tiny_base_model_is_built_by_the_dag_and_placed_by_its_settings(inputs, tmp_path):
    """diffusion.pretrained: {build: tiny}: the base model is a rule's output, its VAE trained on the clean training
    images; changing a build setting builds a new base and re-encodes and retrains everything made from it."""
    build = {"build": "tiny", "unet_channels": [16, 32], "vae_steps": 2, "seed": 0}
    config = sd_config(tmp_path / "built.yaml", inputs, diffusion__pretrained=build)
    workdir = tmp_path / "work"
    plan = planned_jobs(snakemake(workdir, "-n", configfile=config))
    assert plan["build_tiny_base"] == 1 and plan["encode_latents"] == 2 and plan["train_diffusion"] == 2
    latents_path = planned_output(workdir, config, LATENTS_OF_PATCH)
    snakemake(workdir, latents_path, configfile=config)
    [base] = [path for path in (workdir / "results/tinysd/base").iterdir() if path.is_dir()]
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (base / part).is_dir(), part
    description = json.loads(base.with_name(base.name + ".json").read_text())
    clean = read_dataset(stage(workdir / "results/tinysd/data", "clean") / "train")
    assert description["settings"] == {**build, "image_size": 32}
    assert description["vae_training_images"] == len(clean) and description["vae_steps"] == 2
    assert description["scaling_factor"] > 0 and np.isfinite(description["reconstruction_mse"])
    latents = load_latents(workdir / latents_path)
    assert latents.pretrained == {"path": f"results/tinysd/base/{base.name}", "config": None}
    assert "build_tiny_base" not in planned_jobs(snakemake(workdir, "-n", configfile=config))

    rebuilt = sd_config(tmp_path / "rebuilt.yaml", inputs, diffusion__pretrained={**build, "vae_steps": 3})
    plan = planned_jobs(snakemake(workdir, "-n", configfile=rebuilt))
    assert plan["build_tiny_base"] == 1 and plan["encode_latents"] == 2 and plan["train_diffusion"] == 2
    assert "prepare_data" not in plan and "poison" not in plan


@pytest.mark.parametrize("change, expected", [
    ({"diffusion__pretrained__path": "/CHANGE_ME/stable-diffusion-v1-5"}, "unfilled placeholders (CHANGE_ME) at diffusion.pretrained.path"),
    ({"diffusion__pretrained__path": "/nonexistent/sd.safetensors"}, "diffusion.pretrained.path: /nonexistent/sd.safetensors does not exist; set it to a local Stable Diffusion folder (diffusers format) or a single .safetensors/.ckpt file, or for a CPU experiment replace path by 'build: tiny'"),
    ({"diffusion__pretrained": {"build": "huge"}}, "diffusion.pretrained.build: 'huge' is not one of ['tiny', None]"),
    ({"diffusion__pretrained": {"build": "tiny", "path": "/models/sd"}}, "diffusion.pretrained.path: give either build: tiny or a path, not both"),
    ({"diffusion__pretrained": {"build": "tiny", "image_size": 16}}, "diffusion.pretrained.image_size: 16 differs from dataset.image_size 32"),
    ({"diffusion__pretrained": {"build": "tiny", "unet_channels": [12, 32]}}, "diffusion.pretrained.unet_channels: [12, 32] must be two multiples of 8"),
    ({"diffusion__pretrained__vae_steps": 10}, "diffusion.pretrained.vae_steps: only for build: tiny"),
    ({"dataset__image_size": 30}, "dataset.image_size: 30 must be divisible by 4"),
    ({"diffusion__model": {"block_out_channels": [8]}}, "diffusion.model: describes the DDPM's UNet"),
    ({"target": "three"}, "target: 'three' is not a class; allowed one, two, zero"),
    ({"judges__pretrained_weights": "/nonexistent/resnet.pt"}, "judges.pretrained_weights: /nonexistent/resnet.pt not found"),
    ({"dataset__captions": "/nonexistent/captions.jsonl"}, "dataset.captions: /nonexistent/captions.jsonl not found"),
])
def test_text_to_image_config_errors_are_one_line(change, expected, inputs, tmp_path):
    config = sd_config(tmp_path / "broken.yaml", inputs, **change)
    result = snakemake(tmp_path / "work", "-n", configfile=config, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("invalid config:")]
    assert result.returncode != 0 and len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
