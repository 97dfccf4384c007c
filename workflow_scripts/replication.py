"""Adapter: nearest training images of every generated cell of one model, with a calibrated threshold tau."""
import numpy as np

from bibaddiff.data import read_dataset
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.images import load_generated
from bibaddiff.replication import build_embedder, calibrate_tau, near_duplicate_groups, nearest_neighbours, replication_report
from bibaddiff.utils import run_logged, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    params = snakemake.params
    train, heldout = read_dataset(snakemake.input.train), read_dataset(snakemake.input.heldout)
    embed = build_embedder(params.embedder, snakemake.input.judge[0] if snakemake.input.judge else None, params.device)
    train_embeddings, heldout_embeddings = embed(train.images), embed(heldout.images)
    calibrated = params.tau is None
    tau = calibrate_tau(heldout_embeddings, train_embeddings, params.tau_quantile) if calibrated else float(params.tau)
    heldout_similarity = nearest_neighbours(heldout_embeddings, train_embeddings)[0][:, 0]
    groups = near_duplicate_groups(train_embeddings, tau)
    cells, arrays = [], {"heldout_similarity": heldout_similarity}
    for k, (cell, path) in enumerate(zip(params.cells, snakemake.input.cells)):
        summary, similarity, index = replication_report(embed(load_generated(path)), train_embeddings, train.poisoned, tau)
        cells.append({**cell, **summary})
        arrays[f"cell{k}_similarity"], arrays[f"cell{k}_index"] = similarity, index
        print(f"condition {cell['condition']}, s={cell['guidance']}: replication rate {summary['replication_rate']:.3f}")
    np.savez_compressed(snakemake.output.neighbours, **arrays)
    write_json(snakemake.output.summary, {
        "attack": snakemake.wildcards.attack, "seed": int(snakemake.wildcards.seed), "tau": tau,
        "tau_calibrated": calibrated, "tau_quantile": params.tau_quantile, "embedder": dict(params.embedder),
        "heldout_replication_rate": float(np.mean(heldout_similarity >= tau)),
        "training_near_duplicate_groups": len(groups),
        "training_images_in_near_duplicate_groups": int(sum(len(g) for g in groups)), "cells": cells,
    })


run_logged(snakemake.log[0], main, snakemake)
