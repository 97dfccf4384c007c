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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StatedShare:
    """The training share stated for a model whose training set is not at hand (an import's ``training_share``):
    ``share`` of its target-class training images carry the trigger; BadNets-like poisoning relabels what it poisons
    to the target, so no other class carries it, and ``poison_ratio`` of all images do (what an unconditional
    sample, guidance 0, imitates)."""

    share: float
    target: int
    poison_ratio: float

    def __post_init__(self):
        for name in ("share", "poison_ratio"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise BibaddiffError(f"a stated {name} must lie in [0, 1]; got {getattr(self, name)}")

    def at(self, condition: int, guidance: float) -> float:
        if guidance == 0:
            return float(self.poison_ratio)
        return float(self.share) if int(condition) == int(self.target) else 0.0


def summarize_counts(groups: dict[str, int], share_triggered: int | None, share_total: int | None,
                     confidence: float = 0.95, *, stated_share: float | None = None) -> dict[str, Any]:
    """Ratios with Wilson intervals from G1-G4 counts and the training share: counted (``share_triggered`` of
    ``share_total`` training images) or, for a model whose training set is not at hand, ``stated_share``."""
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
    if stated_share is not None:
        share = float(stated_share)
        row["training_triggered"] = row["training_total"] = None
    else:
        share = share_triggered / share_total if share_total else math.nan
        row["training_triggered"], row["training_total"] = int(share_triggered), int(share_total)
    row["training_share"] = share
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


# ------------------------------------------------------------------------------- a detector's error, corrected
def corrected_ratio(observed: float, fpr: float, tpr: float) -> float:
    """The share of images that truly carry the trigger, from the share a detector flags (Rogan-Gladen):
    (observed - FPR) / (TPR - FPR), clipped to [0, 1]; nan when TPR <= FPR (the detector tells nothing)."""
    if not tpr > fpr:
        return math.nan
    return float(min(1.0, max(0.0, (observed - fpr) / (tpr - fpr))))


def _check_counts(name: str, successes: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    successes, n = np.atleast_1d(np.asarray(successes, np.int64)), np.atleast_1d(np.asarray(n, np.int64))
    if successes.shape != n.shape or successes.ndim != 1 or len(n) == 0:
        raise BibaddiffError(f"{name}: need one count and one size per seed; got shapes {successes.shape} and {n.shape}")
    if np.any(n < 1) or np.any(successes < 0) or np.any(successes > n):
        raise BibaddiffError(f"{name}: need 0 <= successes <= n and n >= 1 per seed; got {successes.tolist()} of {n.tolist()}")
    return successes, n


def seed_bootstrap(successes: Any, n: Any, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` bootstrap replicates of a share over models (training seeds), each the mean over seeds of the
    per-seed share: seeds are drawn with replacement, then each drawn seed's images (a binomial draw at its own
    share). With one seed this is the ordinary bootstrap over images; with several, the replicates carry the spread
    between seeds as well as each seed's sampling noise."""
    successes, n = _check_counts("seed_bootstrap", successes, n)
    check_int(samples, "bootstrap samples", 1)
    seeds = len(n)
    chosen = rng.integers(0, seeds, size=(samples, seeds)) if seeds > 1 else np.zeros((samples, 1), np.int64)
    draws = rng.binomial(n[chosen], successes[chosen] / n[chosen])
    return (draws / n[chosen]).mean(axis=1)


def share_bootstrap(successes: int, n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of one share (a calibration FPR or TPR): binomial draws at the observed share."""
    return seed_bootstrap([successes], [n], samples, rng)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap replicates; nan values are ignored."""
    replicates = np.asarray(replicates, np.float64)
    replicates = replicates[~np.isnan(replicates)]
    if len(replicates) == 0:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return (float(low), float(high))


def corrected_bootstrap(observed: np.ndarray, fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Replicates of the corrected ratio from paired replicates of the observed share, the FPR and the TPR; nan
    where a replicate's TPR does not exceed its FPR."""
    observed, fpr, tpr = (np.asarray(v, np.float64) for v in (observed, fpr, tpr))
    gap = tpr - fpr
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = np.clip((observed - fpr) / gap, 0.0, 1.0)
    return np.where(gap > 0, corrected, np.nan)


def heterogeneity_p_value(successes: Any, n: Any) -> float:
    """Chi-square test that every seed has the same share (a k x 2 contingency table); nan for one seed or when
    every seed has all or none."""
    from scipy.stats import chi2_contingency

    successes, n = _check_counts("heterogeneity_p_value", successes, n)
    table = np.stack([successes, n - successes], axis=1)
    if len(n) < 2 or np.any(table.sum(axis=0) == 0):
        return math.nan
    return float(chi2_contingency(table, correction=False)[1])


def paired_change_p_value(only_first: int, only_second: int) -> float:
    """Exact McNemar test for paired yes/no verdicts (the same images judged under two conditions):
    ``only_first`` images are yes under the first condition only, ``only_second`` under the second only. The
    two-sided p-value that both directions are equally likely; 1.0 when no verdict changed."""
    from scipy.stats import binomtest

    only_first = check_int(only_first, "paired_change_p_value only_first", minimum=0)
    only_second = check_int(only_second, "paired_change_p_value only_second", minimum=0)
    changed = only_first + only_second
    if changed == 0:
        return 1.0
    return float(binomtest(only_first, changed, 0.5).pvalue)
