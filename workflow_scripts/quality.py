"""Adapter: FID and KID (and the CLIP score for text-to-image models) of one model's all-class generations."""
from pathlib import Path

import numpy as np

from bibaddiff.data import read_dataset
from bibaddiff.diffusion.base import MODEL_INFO_FILE
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.judges import load_judge
from bibaddiff.quality import bootstrap_mean, clip_scores, distance_rows, load_clip, load_inception, quality_features
from bibaddiff.utils import read_json, run_logged, select_device, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    settings, inputs = snakemake.params.settings, snakemake.input
    device = select_device(snakemake.params.device)
    generated = read_dataset(inputs.generated)
    judge, _ = load_judge(inputs.judge, snakemake.params.device)
    inception = load_inception(inputs.inception_weights, device) if inputs.get("inception_weights") else None
    features = quality_features(generated.images, judge, inception, settings["batch_size"])
    with np.load(inputs.reference) as reference:
        real = {space: reference[space] for space in reference.files}
    rows = distance_rows(real, features, bootstrap_samples=settings["bootstrap_samples"],
                         kid_subsets=settings["kid_subsets"], kid_subset_size=settings["kid_subset_size"],
                         seed=settings["seed"])
    if settings["clip_model"]:
        prompts = read_json(Path(inputs.model) / MODEL_INFO_FILE)["class_prompts"]
        clip, processor = load_clip(settings["clip_model"], device)
        scores = clip_scores(clip, processor, generated.images, [prompts[label] for label in generated.labels],
                             settings["batch_size"])
        rows.append({"metric": "clip_score", **bootstrap_mean(scores, settings["bootstrap_samples"], settings["seed"])})
    attack = snakemake.params.attack
    write_json(snakemake.output.result, {
        "model": snakemake.params.model, "attack": snakemake.wildcards.attack, "trigger": attack["trigger"],
        "p": attack["ratio"], "seed": int(snakemake.wildcards.seed), "guidance": settings["guidance"],
        "n": len(generated), "generated": inputs.generated, "rows": rows})
    for row in rows:
        print(f"{row['metric']}: {row['value']:.4g} [{row['low']}, {row['high']}] ({row['interval']})")


run_logged(snakemake.log[0], main, snakemake)
