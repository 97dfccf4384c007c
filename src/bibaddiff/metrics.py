"""Metrics of generated images: G1-G4, trigger ratio, mismatch, training share, amplification, intervals.

For generations conditioned on class c:
  G1 trigger and wrong content, G2 trigger and right content, G3 no trigger and wrong content, G4 correct.
The trigger ratio is (G1 + G2) / N; the mismatch ratio is (G1 + G3) / N. The training share is the share of
triggered images among the training images a sample of that condition imitates: those labelled c, or, for the
unconditional sampler (guidance 0), the whole training set. (With per-image captions, poisoned images take
target-class captions, so the images labelled c are those whose captions the class-c prompts are drawn from.)
Amplification is trigger ratio / training share;
the share is a known property of the training set, so its interval is the trigger ratio's divided by it.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Iterable

import numpy as np

from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError

GROUPS = ("G1", "G2", "G3", "G4")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise BibaddiffError(f"need 0 <= successes <= n; got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise BibaddiffError(f"confidence must lie in (0, 1); got {confidence}")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At the boundaries the exact bound is 0 or 1; rounding would otherwise leave a tiny positive lower bound.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def generation_groups(content_pred: np.ndarray, trigger_pred: np.ndarray, condition: int) -> dict[str, int]:
    """Counts of G1-G4 among generations conditioned on ``condition``."""
    content_pred = np.asarray(content_pred)
    trigger_pred = np.asarray(trigger_pred).astype(bool)
    if content_pred.shape != trigger_pred.shape or content_pred.ndim != 1:
        raise BibaddiffError(f"content and trigger predictions must be 1-D and equal in length; got {content_pred.shape} and {trigger_pred.shape}")
    right = content_pred == condition
    return {
        "G1": int(np.sum(trigger_pred & ~right)),
        "G2": int(np.sum(trigger_pred & right)),
        "G3": int(np.sum(~trigger_pred & ~right)),
        "G4": int(np.sum(~trigger_pred & right)),
    }


def training_share(labels: np.ndarray, triggered: np.ndarray, condition: int, guidance: float) -> tuple[int, int]:
    """(triggered, total) among the training images that a sample of this condition and guidance imitates."""
    labels = np.asarray(labels)
    triggered = np.asarray(triggered, dtype=bool)
    members = np.ones(len(labels), bool) if guidance == 0 else labels == condition
    return int(np.sum(triggered & members)), int(np.sum(members))


def summarize_counts(groups: dict[str, int], share_triggered: int, share_total: int,
                     confidence: float = 0.95) -> dict[str, Any]:
    """Ratios with Wilson intervals from G1-G4 counts and the training share."""
    missing = [g for g in GROUPS if g not in groups]
    if missing:
        raise BibaddiffError(f"missing group counts: {', '.join(missing)}")
    n = sum(int(groups[g]) for g in GROUPS)
    row: dict[str, Any] = {"n": n, **{g: int(groups[g]) for g in GROUPS}}

    def add(name: str, successes: int) -> None:
        low, high = wilson_interval(successes, n, confidence)
        row[name] = successes / n if n else math.nan
        row[f"{name}_low"], row[f"{name}_high"] = low, high

    for g in GROUPS:
        add(f"{g}_ratio", int(groups[g]))
    add("trigger_ratio", int(groups["G1"]) + int(groups["G2"]))
    add("mismatch_ratio", int(groups["G1"]) + int(groups["G3"]))
    share = share_triggered / share_total if share_total else math.nan
    row["training_share"] = share
    row["training_triggered"], row["training_total"] = int(share_triggered), int(share_total)
    if share and not math.isnan(share):
        row["amplification"] = row["trigger_ratio"] / share
        row["amplification_low"] = row["trigger_ratio_low"] / share
        row["amplification_high"] = row["trigger_ratio_high"] / share
        # Amplification is claimed only when the whole interval lies above the training share.
        row["amplified"] = bool(row["trigger_ratio_low"] > share)
    else:
        row["amplification"] = row["amplification_low"] = row["amplification_high"] = math.nan
        row["amplified"] = False
    return row


def pool_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Sum G1-G4 counts over records (e.g. training seeds) for a pooled estimate."""
    pooled = {g: 0 for g in GROUPS}
    for record in records:
        for g in GROUPS:
            pooled[g] += int(record[g])
    return pooled


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise BibaddiffError(f"predictions and labels differ in shape: {predictions.shape} vs {labels.shape}")
    return float(np.mean(predictions == labels)) if len(labels) else math.nan


def _scores_and_flags(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked 1-D float scores and boolean flags of equal length, shared by the ranking metrics."""
    scores = np.asarray(scores, dtype=np.float64)
    flags = np.asarray(is_positive)
    if scores.ndim != 1 or flags.shape != scores.shape:
        raise BibaddiffError(f"scores and is_positive must be 1-D and equal in length; got {scores.shape} and {flags.shape}")
    if not np.all(np.isfinite(scores)):
        raise BibaddiffError(f"scores must be finite; got {int(np.sum(~np.isfinite(scores)))} nan or infinite values")
    if flags.dtype != bool:
        if flags.size and not np.all((flags == 0) | (flags == 1)):
            raise BibaddiffError(f"is_positive must hold booleans or 0/1; got values {np.unique(flags)[:5].tolist()}")
        flags = flags.astype(bool)
    return scores, flags


def auroc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``): the chance that a random positive outscores a
    random negative, ties counting half; nan when either class is empty."""
    from sklearn.metrics import roc_auc_score

    scores, flags = _scores_and_flags(scores, is_positive)
    if flags.all() or not flags.any():
        return math.nan
    return float(roc_auc_score(flags, scores))


def tpr_at_fpr(scores: np.ndarray, is_positive: np.ndarray, fpr: float = 0.05) -> float:
    """The largest true-positive rate among thresholds "score >= s" (s one of the scores) whose FPR is <= ``fpr``,
    from scikit-learn's ``roc_curve``. nan when either class is empty. A threshold above every score (nothing
    flagged, TPR 0) is always allowed."""
    from sklearn.metrics import roc_curve

    if not 0.0 <= fpr <= 1.0:
        raise BibaddiffError(f"fpr must lie in [0, 1]; got {fpr}")
    scores, flags = _scores_and_flags(scores, is_positive)
    if flags.all() or not flags.any():
        return math.nan
    false_rates, true_rates, _ = roc_curve(flags, scores, drop_intermediate=False)
    return float(true_rates[false_rates <= fpr + 1e-12].max())


def attack_success_rate(predictions: np.ndarray, true_labels: np.ndarray, target: int) -> float:
    """Share of items predicted as ``target`` among those whose true label is not ``target``; nan if there are none."""
    predictions, true_labels = np.asarray(predictions), np.asarray(true_labels)
    if predictions.ndim != 1 or predictions.shape != true_labels.shape:
        raise BibaddiffError(f"predictions and true_labels must be 1-D and equal in length; got {predictions.shape} and {true_labels.shape}")
    check_int(target, "target (a class index)", 0)
    victims = true_labels != target
    if not victims.any():
        return math.nan
    return float(np.mean(predictions[victims] == target))
