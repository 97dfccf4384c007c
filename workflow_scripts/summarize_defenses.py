"""Adapter: the three castle-wall tables and their figures."""
from bibaddiff.defenses.detectors import load_detection_items
from bibaddiff.report import (defense_tables, plot_detection, plot_diffusion_classifier, plot_train_on_generated)
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    inputs, outputs, sets = snakemake.input, snakemake.output, snakemake.params.sets
    # Each result with what its set is and its per-image scores, which the AUROC differences are bootstrapped from.
    detections = [{**read_json(path), **described, "items": load_detection_items(items)}
                  for path, items, described in zip(inputs.detection, inputs.detection_items, sets["detection"],
                                                     strict=True)]
    detection, training, dm_classifier = defense_tables(
        detections, [read_json(f"{path}/judge.json") for path in inputs.classifiers], sets["classifiers"],
        [read_json(path) for path in inputs.diffusion_classifier], snakemake.params.attacks,
        seed=snakemake.params.seed)
    detection.to_csv(outputs.detection, index=False)
    training.to_csv(outputs.train_on_generated, index=False)
    dm_classifier.to_csv(outputs.diffusion_classifier, index=False)
    plot_detection(detection, outputs.detection_figure)
    plot_train_on_generated(training, outputs.train_on_generated_figure)
    plot_diffusion_classifier(dm_classifier, outputs.diffusion_classifier_figure)
    for name, table in (("detection", detection), ("train on generated", training), ("diffusion classifier", dm_classifier)):
        print(f"== {name}\n{table.to_string(index=False)}")


run_logged(snakemake.log[0], main, snakemake)
