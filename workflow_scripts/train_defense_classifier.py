"""Adapter: train the judge-architecture classifier on one set (clean, poisoned or generated); ACC and ASR after every
epoch on the held-out set (the last epoch's, and the best over epochs, upstream's)."""
from bibaddiff.data import read_dataset
from bibaddiff.defenses.train_on_generated import train_and_evaluate_by_epoch
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.judges import JudgeSettings, save_judge
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, set_threads


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    params = snakemake.params
    train, heldout = read_dataset(snakemake.input.train), read_dataset(snakemake.input.heldout)
    settings = JudgeSettings.from_config(params.settings)
    triggers = {name: build_trigger(name, spec, train.image_size, train.channels) for name, spec in params.triggers.items()}
    model, evaluation = train_and_evaluate_by_epoch(
        train.images, train.labels, train.num_classes, settings, params.settings["seed"], heldout.images,
        heldout.labels, triggers, params.target, device=params.device,
        desc=f"classifier on {snakemake.wildcards.trainset}")
    for name, scores in evaluation.items():
        print(f"{snakemake.wildcards.trainset} / {name}: {scores}")
    save_judge(snakemake.output.classifier, model, {
        "kind": f"classifier:{snakemake.wildcards.trainset}", "architecture": settings.architecture,
        "channels": train.channels, "num_outputs": train.num_classes, "image_size": train.image_size,
        "class_names": train.class_names, "num_train": len(train), "evaluation": evaluation,
    })


run_logged(snakemake.log[0], main, snakemake)
