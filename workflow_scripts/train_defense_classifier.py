"""Adapter: train the judge-architecture classifier on one set (clean, poisoned or generated); ACC and ASR."""
from bibaddiff.data import read_dataset
from bibaddiff.defenses.train_on_generated import evaluate_classifier
from bibaddiff.judges import JudgeSettings, save_judge, train_judge
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, set_threads


def main(snakemake):
    set_threads(snakemake.threads)
    params = snakemake.params
    train, heldout = read_dataset(snakemake.input.train), read_dataset(snakemake.input.heldout)
    settings = JudgeSettings.from_config(params.settings)
    model = train_judge(train.images, train.labels, train.num_classes, settings, params.settings["seed"], device=params.device,
                        desc=f"classifier on {snakemake.wildcards.trainset}")
    evaluation = {}
    for name, spec in params.triggers.items():
        trigger = build_trigger(name, spec, train.image_size, train.channels)
        evaluation[name] = evaluate_classifier(model, heldout.images, heldout.labels, trigger, params.target)
        print(f"{snakemake.wildcards.trainset} / {name}: {evaluation[name]}")
    save_judge(snakemake.output.classifier, model, {
        "kind": f"classifier:{snakemake.wildcards.trainset}", "architecture": settings.architecture,
        "channels": train.channels, "num_outputs": train.num_classes, "image_size": train.image_size,
        "class_names": train.class_names, "num_train": len(train), "evaluation": evaluation,
    })


run_logged(snakemake.log[0], main, snakemake)
