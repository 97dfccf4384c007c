"""Replication scores: tau calibrated on held-out real images, and how many generations reach it, split by whether
the training image they copy is poisoned."""

from __future__ import annotations

from typing import Any

import numpy as np

from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import wilson_interval
from bibaddiff.replication.neighbours import nearest_neighbours

SIMILARITY_QUANTILES = (5, 25, 50, 75, 95)


def calibrate_tau(heldout_embeddings: np.ndarray, train_embeddings: np.ndarray, quantile: float = 0.99) -> float:
    """The similarity that only a (1 - quantile) share of held-out real images reach against their nearest
    training image: the ``quantile`` of held-out nearest-neighbour similarities."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float, np.floating)) or not 0.0 < quantile < 1.0:
        raise BibaddiffError(f"quantile must lie in (0, 1); got {quantile!r}")
    if len(np.asarray(heldout_embeddings)) == 0:
        raise BibaddiffError("heldout_embeddings is empty; tau needs held-out images")
    if len(np.asarray(train_embeddings)) == 0:
        raise BibaddiffError("train_embeddings is empty; tau needs training images")
    similarities, _ = nearest_neighbours(heldout_embeddings, train_embeddings, k=1)
    return float(np.quantile(similarities[:, 0].astype(np.float64), quantile))


def replication_report(generated_embeddings: np.ndarray, train_embeddings: np.ndarray, train_poisoned: np.ndarray,
                       tau: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Replication scores of generated images against the training set.

    Returns a JSON-ready summary, and each generated image's nearest-neighbour similarity and training index
    (arrays of length n_generated, for figures). Rates with a zero denominator are None.
    """
    train_poisoned = _check_replication_inputs(generated_embeddings, train_embeddings, train_poisoned, tau)
    tau = float(tau)
    similarities, indices = nearest_neighbours(generated_embeddings, train_embeddings, k=1)
    nn_similarity, nn_index = similarities[:, 0], indices[:, 0]
    replicating = nn_similarity >= tau
    nn_poisoned = train_poisoned[nn_index]
    n_generated, n_replicated = len(nn_similarity), int(replicating.sum())
    n_train_poisoned = int(train_poisoned.sum())
    n_train_clean = len(train_poisoned) - n_train_poisoned
    replicated_train = np.unique(nn_index[replicating])
    distinct_poisoned = int(train_poisoned[replicated_train].sum())
    distinct_clean = len(replicated_train) - distinct_poisoned

    overall = _rate_with_interval(n_replicated, n_generated)
    per_poisoned_image = _rate_with_interval(distinct_poisoned, n_train_poisoned)
    per_clean_image = _rate_with_interval(distinct_clean, n_train_clean)
    summary = {
        "n_generated": n_generated,
        "n_train": len(train_poisoned),
        "n_train_poisoned": n_train_poisoned,
        "n_train_clean": n_train_clean,
        "tau": tau,
        "n_replicating": n_replicated,
        "replication_rate": overall["rate"],
        "replication_rate_ci95": overall["ci95"],
        "nn_similarity_quantiles": {f"q{q:02d}": float(np.percentile(nn_similarity.astype(np.float64), q))
                                    for q in SIMILARITY_QUANTILES},
        "nn_similarity_mean": float(nn_similarity.astype(np.float64).mean()),
        # Generations that replicate, split by whether the training image they copy is poisoned.
        "replicating_nn_poisoned": int((replicating & nn_poisoned).sum()),
        "replicating_nn_clean": int((replicating & ~nn_poisoned).sum()),
        # Distinct training images copied at least once, and that count per training image of each kind,
        # which corrects for poisoned images being a small part of the training set.
        "distinct_poisoned_replicated": distinct_poisoned,
        "distinct_clean_replicated": distinct_clean,
        "poisoned_image_replication_rate": per_poisoned_image["rate"],
        "poisoned_image_replication_rate_ci95": per_poisoned_image["ci95"],
        "clean_image_replication_rate": per_clean_image["rate"],
        "clean_image_replication_rate_ci95": per_clean_image["ci95"],
    }
    return summary, nn_similarity, nn_index


def _check_replication_inputs(generated_embeddings: np.ndarray, train_embeddings: np.ndarray,
                              train_poisoned: np.ndarray, tau: float) -> np.ndarray:
    train_poisoned = np.asarray(train_poisoned)
    if train_poisoned.dtype != bool or train_poisoned.shape != (len(np.asarray(train_embeddings)),):
        raise BibaddiffError(
            f"train_poisoned must be a bool array with one entry per training image ({len(np.asarray(train_embeddings))}); "
            f"got {train_poisoned.dtype} {train_poisoned.shape}"
        )
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not -1.0 <= float(tau) <= 1.0:
        raise BibaddiffError(f"tau must be a cosine similarity in [-1, 1]; got {tau!r}")
    if len(np.asarray(generated_embeddings)) == 0:
        raise BibaddiffError("generated_embeddings is empty; nothing to score")
    if len(train_poisoned) == 0:
        raise BibaddiffError("train_embeddings is empty; nothing to compare against")
    return train_poisoned


def _rate_with_interval(successes: int, total: int) -> dict[str, Any]:
    """A rate and its Wilson 95% interval; both None when nothing was counted."""
    if total == 0:
        return {"rate": None, "ci95": None}
    low, high = wilson_interval(successes, total)
    return {"rate": successes / total, "ci95": [low, high]}
