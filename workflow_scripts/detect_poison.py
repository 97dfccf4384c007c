"""Adapter: score one set (the poisoned training set or a generated set) with every configured detector."""
import time

from bibaddiff.data import read_dataset
from bibaddiff.defenses.detectors import detector_variant, evaluate_detection, run_detector, save_detection_items
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.judges import load_judge
from bibaddiff.utils import run_logged, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    params = snakemake.params
    data = read_dataset(snakemake.input.data)
    heldout = read_dataset(snakemake.input.heldout).images  # clean images: STRIP's partners, as published
    model, _ = load_judge(snakemake.input.classifier, params.device)
    in_target = data.labels == params.target
    # Ground truth: the stamped images of a real set, the trigger detector's verdict on a generated one.
    carries_trigger = data.poisoned
    results, item_scores = {}, {}
    for name in params.detectors:
        started = time.perf_counter()
        settings = params.detector_settings.get(name)
        scores = run_detector(name, model, data.images, data.labels, settings, params.seed, heldout=heldout)
        item_scores[name] = scores
        results[name] = {
            # Which definition produced the scores (None for detectors with one), and the settings it ran with.
            "variant": detector_variant(name, settings), "settings": settings or {},
            "all": evaluate_detection(scores, carries_trigger, seed=params.seed),
            "target_class": evaluate_detection(scores[in_target], carries_trigger[in_target], seed=params.seed),
            "seconds": time.perf_counter() - started,
        }
        print(f"{name}: {results[name]}")
    # Per-image scores and flags: the summary bootstraps the AUROC difference between this set and the others.
    save_detection_items(snakemake.output.item_scores, carries_trigger, in_target, item_scores)
    write_json(snakemake.output.detection, {"attack": snakemake.wildcards.attack, "set": snakemake.wildcards.detset,
                                            "n": len(data), "n_flagged": int(carries_trigger.sum()), "detectors": results})


run_logged(snakemake.log[0], main, snakemake)
