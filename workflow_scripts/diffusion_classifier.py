"""Adapter: the diffusion model as a classifier of clean and triggered held-out images, for every p_filter."""
import time

import numpy as np

from bibaddiff.data import read_dataset
from bibaddiff.defenses.diffusion_classifier import diffusion_classify
from bibaddiff.diffusion import load_diffusion_model
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.metrics import accuracy, attack_success_rate
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, select_device, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    params, settings = snakemake.params, snakemake.params.settings
    heldout = read_dataset(snakemake.input.heldout)
    model = load_diffusion_model(snakemake.input.model, select_device(params.device))
    rng = np.random.default_rng(params.seed)
    clean = rng.permutation(len(heldout))[:settings["max_images"]]
    victims = rng.permutation(np.flatnonzero(heldout.labels != params.target))[:settings["max_images"]]
    images = [heldout.images[clean]]
    for name, spec in params.triggers.items():
        images.append(build_trigger(name, spec, heldout.image_size, heldout.channels).apply(heldout.images[victims]))
    started = time.perf_counter()
    predictions = diffusion_classify(model.denoiser, model.scheduler, np.concatenate(images), model.info.num_classes,
                                     settings["num_draws"], settings["p_filters"], (settings["t_min"], settings["t_max"]),
                                     params.seed, settings["batch_size"],
                                     encode=None if model.kind == "ddpm" else model.encode, weighting=settings["weighting"],
                                     fresh_draws=settings["fresh_draws"],
                                     **{k: settings[k] for k in ("p_mean", "p_std", "sigma_data")})
    seconds = time.perf_counter() - started
    rows = []
    for p_filter, predicted in predictions.items():
        acc = accuracy(predicted[:len(clean)], heldout.labels[clean])
        for k, name in enumerate(params.triggers):
            attacked = predicted[len(clean) + k * len(victims):len(clean) + (k + 1) * len(victims)]
            rows.append({"p_filter": float(p_filter), "trigger": name, "acc": acc,
                         "asr": attack_success_rate(attacked, heldout.labels[victims], params.target)})
    print("\n".join(str(row) for row in rows))
    write_json(snakemake.output.result, {"attack": snakemake.wildcards.attack, "seed": int(snakemake.wildcards.seed),
                                         "n_clean": len(clean), "n_triggered": len(victims), "seconds": seconds,
                                         "settings": dict(settings), "rows": rows})


run_logged(snakemake.log[0], main, snakemake)
