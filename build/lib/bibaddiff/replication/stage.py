"""The replication stage of one model: nearest training images of every generated cell, with a calibrated tau."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bibaddiff.data import read_dataset
from bibaddiff.images import load_generated
from bibaddiff.replication.embedders import build_embedder
from bibaddiff.replication.neighbours import near_duplicate_groups, nearest_neighbours
from bibaddiff.replication.scores import calibrate_tau, replication_report
from bibaddiff.utils import write_json


def model_replication(cells: list[tuple[dict[str, Any], str | Path]], train_dir: str | Path, heldout_dir: str | Path,
                      embedder: dict[str, Any], judge: str | None, tau: float | None, tau_quantile: float,
                      device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Replication of every cell (what it is, e.g. ``x0_clipping``, ``condition``, ``guidance``; its file) against
    the model's training set. tau is ``tau``, or calibrated on the held-out images at ``tau_quantile``.

    Returns the summary (tau, held-out replication rate, near-duplicate groups of the training set, and per cell
    its :func:`~bibaddiff.replication.scores.replication_report` with the cell's description) and the arrays
    (``heldout_similarity``, ``cell<k>_similarity``, ``cell<k>_index``)."""
    train, heldout = read_dataset(train_dir), read_dataset(heldout_dir)
    embed = build_embedder(embedder, judge, device)
    train_embeddings, heldout_embeddings = embed(train.images), embed(heldout.images)
    calibrated = tau is None
    tau = calibrate_tau(heldout_embeddings, train_embeddings, tau_quantile) if calibrated else float(tau)
    heldout_similarity = nearest_neighbours(heldout_embeddings, train_embeddings)[0][:, 0]
    groups = near_duplicate_groups(train_embeddings, tau)
    summaries, arrays = [], {"heldout_similarity": heldout_similarity}
    for k, (cell, path) in enumerate(cells):
        summary, similarity, index = replication_report(embed(load_generated(path)), train_embeddings, train.poisoned, tau)
        summaries.append({**cell, **summary})
        arrays[f"cell{k}_similarity"], arrays[f"cell{k}_index"] = similarity, index
        print(f"condition {cell['condition']}, s={cell['guidance']}: replication rate {summary['replication_rate']:.3f}")
    return {
        "tau": tau, "tau_calibrated": calibrated, "tau_quantile": tau_quantile, "embedder": dict(embedder),
        "heldout_replication_rate": float(np.mean(heldout_similarity >= tau)),
        "training_near_duplicate_groups": len(groups),
        "training_images_in_near_duplicate_groups": int(sum(len(g) for g in groups)), "cells": summaries,
    }, arrays


def write_model_replication(summary_path: str | Path, neighbours_path: str | Path, about: dict[str, Any],
                            *args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`model_replication`, written: the summary (after ``about``, e.g. the attack and seed) as JSON, the
    arrays as a compressed npz."""
    summary, arrays = model_replication(*args, **kwargs)
    np.savez_compressed(neighbours_path, **arrays)
    write_json(summary_path, {**about, **summary})
    return summary
