"""Adapter: the three castle-wall tables and their figures."""
from bibaddiff.report import (defense_tables, plot_detection, plot_diffusion_classifier, plot_train_on_generated)
from bibaddiff.utils import read_json, run_logged


def main(snakemake):
    i, o = snakemake.input, snakemake.output
    detection, training, dm_classifier = defense_tables(
        [read_json(path) for path in i.detection], [read_json(f"{path}/judge.json") for path in i.classifiers],
        list(i.classifiers), [read_json(path) for path in i.diffusion_classifier], snakemake.params.attacks)
    detection.to_csv(o.detection, index=False)
    training.to_csv(o.train_on_generated, index=False)
    dm_classifier.to_csv(o.diffusion_classifier, index=False)
    plot_detection(detection, o.detection_figure)
    plot_train_on_generated(training, o.train_on_generated_figure)
    plot_diffusion_classifier(dm_classifier, o.diffusion_classifier_figure)
    for name, table in (("detection", detection), ("train on generated", training), ("diffusion classifier", dm_classifier)):
        print(f"== {name}\n{table.to_string(index=False)}")


run_logged(snakemake.log[0], main, snakemake)
