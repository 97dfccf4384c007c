"""Poisoned-data detectors: per-image suspicion scores from a classifier trained on the very set being screened.

Every detector is a function ``score_<name>(model, images, labels, *, <settings>, seed) -> np.ndarray`` that
returns one float per image, higher meaning "more likely poisoned", so that any of them can be scored with AUROC
against the known poison flags (:func:`evaluate_detection`). ``model`` is a classifier from
:mod:`bibaddiff.judges` (``SmallCNN`` or a torchvision ResNet); images are uint8 (N, H, W, C); ``labels`` are the
labels the set carries (for a generated set, the condition each image was generated with).

  strip                   STRIP (Gao et al. 2019): blends with other images barely change a backdoored prediction.
  spectral                Spectral Signatures (Tran et al. 2018): poison dominates the top singular direction of
                          its class's centred penultimate features.
  activation_clustering   Activation Clustering (Chen et al. 2018): poison forms its own small cluster in its
                          class's penultimate features.
  cognitive_distillation  Cognitive Distillation (Huang et al. 2023): a backdoored prediction survives on a tiny
                          mask (the trigger), a clean one needs much of the image.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bibaddiff.diffusion.sampling import to_model_space
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import auroc, tpr_at_fpr

__all__ = ["DETECTORS", "run_detector", "detector_settings", "evaluate_detection", "score_strip", "score_spectral",
           "score_activation_clustering", "score_cognitive_distillation", "model_logits", "penultimate_features"]


# ------------------------------------------------------------------------------------------------ helpers


def _check_inputs(model: Any, images: np.ndarray, labels: np.ndarray, min_images: int = 2) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(model, nn.Module):
        raise BibaddiffError(f"model must be a torch.nn.Module classifier; got {type(model).__name__}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise BibaddiffError(f"images must be uint8 of shape (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise BibaddiffError(f"labels must have shape ({len(images)},); got {labels.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise BibaddiffError(f"labels must be non-negative class indices; got dtype {labels.dtype}, minimum {labels.min()}")
    if len(images) < min_images:
        raise BibaddiffError(f"need at least {min_images} image(s); got {len(images)}")
    return images, labels.astype(np.int64)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BibaddiffError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BibaddiffError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features that enter the final linear layer, for the classifiers :mod:`bibaddiff.judges` builds."""
    head, features = getattr(model, "head", None), getattr(model, "features", None)
    if isinstance(head, nn.Linear) and isinstance(features, nn.Module):  # SmallCNN
        return features(x)
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):  # torchvision ResNet: catch the input of ``fc`` instead of re-wiring the model
        captured: list[torch.Tensor] = []
        handle = fc.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            model(x)
        finally:
            handle.remove()
        return torch.flatten(captured[0], 1)
    raise BibaddiffError(f"cannot find penultimate features of a {type(model).__name__}: expected `features`+`head` or `fc`")


def penultimate_features(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features (N, D) as float64, the representation spectral and clustering detectors use."""
    return _batched_outputs(model, images, batch_size, lambda x: _penultimate(model, x))


def model_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, classes) as float64."""
    return _batched_outputs(model, images, batch_size, model)


@torch.no_grad()
def _batched_outputs(model: nn.Module, images: np.ndarray, batch_size: int, forward: Callable) -> np.ndarray:
    images, _ = _check_inputs(model, images, np.zeros(len(np.asarray(images)), np.int64), min_images=1)
    batch_size = _check_positive_int("batch_size", batch_size)
    model.eval()
    device = _device_of(model)
    chunks = [forward(to_model_space(images[i:i + batch_size]).to(device)).float().cpu().numpy()
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks).astype(np.float64)


def _class_groups(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


# ---------------------------------------------------------------------------------------------- detectors


@torch.no_grad()
def score_strip(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, num_blends: int = 16,
                batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """STRIP: minus the mean prediction entropy of the image blended 50/50 with ``num_blends`` other images of the set.

    A trigger keeps forcing the target class whatever it is blended with, so poisoned images keep confident,
    low-entropy predictions and score high. ``labels`` are only checked; STRIP does not use them.
    """
    images, labels = _check_inputs(model, images, labels)
    num_blends = _check_positive_int("num_blends", num_blends)
    batch_size = _check_positive_int("batch_size", batch_size)
    rng = np.random.default_rng(_check_seed(seed))
    n = len(images)
    # Partners are drawn once for the whole set, so the scores do not depend on the batch size.
    # Drawing from n - 1 values and shifting those at or above i skips the image itself.
    partners = rng.integers(0, n - 1, size=(n, num_blends))
    partners += partners >= np.arange(n)[:, None]
    model.eval()
    device = _device_of(model)
    images_per_batch = max(1, batch_size // num_blends)
    scores = np.empty(n, np.float64)
    for start in tqdm(range(0, n, images_per_batch), desc="STRIP", unit="batch"):
        rows = np.arange(start, min(n, start + images_per_batch))
        own = to_model_space(images[rows]).to(device)
        others = to_model_space(images[partners[rows].ravel()]).to(device)
        # Model space is linear in pixel values, so averaging there is the 0.5/0.5 pixel blend without rounding.
        blended = 0.5 * own.repeat_interleave(num_blends, dim=0) + 0.5 * others
        log_probs = F.log_softmax(model(blended).float(), dim=1)
        entropy = -(log_probs.exp() * log_probs).sum(1).view(len(rows), num_blends).mean(1)
        scores[rows] = -entropy.double().cpu().numpy()
    return scores


def score_spectral(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 256,
                   seed: int = 0) -> np.ndarray:
    """Spectral Signatures: per label, the squared projection of the centred penultimate features on the top
    right singular vector of that label's feature matrix.

    Group by whichever labels are passed (the given labels, or the model's predictions). ``seed`` is accepted
    for a uniform interface; the SVD is deterministic.
    """
    images, labels = _check_inputs(model, images, labels)
    _check_seed(seed)
    features = penultimate_features(model, images, batch_size)
    scores = np.zeros(len(images), np.float64)
    for members in _class_groups(labels):
        if len(members) < 2:
            continue  # a lone image has nothing to deviate from; its centred features are zero anyway
        centred = features[members] - features[members].mean(0)
        _, _, right = np.linalg.svd(centred, full_matrices=False)
        scores[members] = (centred @ right[0]) ** 2
    return scores


def score_activation_clustering(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
                                num_components: int = 10, batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Activation Clustering, made continuous: per label, PCA of the penultimate features to ``num_components``
    dimensions (fewer for small classes), 2-means, and score = distance to the larger cluster's centre minus the
    distance to the smaller cluster's centre.

    The original method flags the smaller cluster when it holds under about 35% of its class; the distance
    difference keeps that ordering (small-cluster members score positive, the further from the bulk the higher)
    while giving a score that AUROC can rank.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    images, labels = _check_inputs(model, images, labels)
    num_components = _check_positive_int("num_components", num_components)
    seed = _check_seed(seed)
    features = penultimate_features(model, images, batch_size)
    scores = np.zeros(len(images), np.float64)
    for members in tqdm(_class_groups(labels), desc="activation clustering", unit="class"):
        group = features[members]
        if len(members) < 2 or np.allclose(group, group[0]):
            continue  # nothing to split: the class is one point
        # Centred features of n points span at most n - 1 dimensions.
        dims = min(num_components, len(members) - 1, group.shape[1])
        reduced = PCA(n_components=dims, svd_solver="full").fit_transform(group)
        kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
        sizes = np.bincount(kmeans.labels_, minlength=2)
        larger = int(np.argmax(sizes))  # on a tie, cluster 0 counts as the larger one
        distances = np.linalg.norm(reduced[:, None, :] - kmeans.cluster_centers_[None], axis=2)
        scores[members] = distances[:, larger] - distances[:, 1 - larger]
    return scores


CD_MATCH = ("logits", "probabilities")


def _cd_output(logits: torch.Tensor, match: str) -> torch.Tensor:
    return logits.float() if match == "logits" else torch.softmax(logits.float(), dim=1)


def score_cognitive_distillation(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, steps: int = 100,
                                 learning_rate: float = 0.1, l1_weight: float = 0.01, match: str = "logits",
                                 batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Cognitive Distillation: minus the L1 norm of the smallest mask that keeps the model's output.

    For each image, a mask m = sigmoid(w) of shape (H, W) minimises
    ``||f(x * m + (1 - m) * noise) - f(x)||_1 + l1_weight * ||m||_1`` with Adam for ``steps`` steps, the noise
    uniform in the model's [-1, 1] range and drawn afresh each step (so the mask cannot rely on any one fill).
    A backdoored prediction survives on the trigger alone, so poisoned images end with tiny masks and score high.
    ``labels`` are only checked.

    ``match="logits"`` is the published objective. ``match="probabilities"`` compares softmax outputs instead
    (L1 over classes); on small models of digit-like images, whose black background is itself evidence, matching
    every logit forces the mask to keep the digit as well as the trigger and the scores stop separating, while
    matching probabilities does not (see tests/test_detectors.py).
    """
    images, labels = _check_inputs(model, images, labels)
    steps = _check_positive_int("steps", steps)
    batch_size = _check_positive_int("batch_size", batch_size)
    seed = _check_seed(seed)
    if not _is_finite_number(learning_rate) or learning_rate <= 0:
        raise BibaddiffError(f"learning_rate must be a finite number > 0; got {learning_rate!r}")
    if not _is_finite_number(l1_weight) or l1_weight < 0:
        raise BibaddiffError(f"l1_weight must be a finite number >= 0; got {l1_weight!r}")
    if match not in CD_MATCH:
        raise BibaddiffError(f"match must be one of {', '.join(CD_MATCH)}; got {match!r}")
    model.eval()
    device = _device_of(model)
    # The model stays fixed: only the masks get gradients, so no parameter's .grad is touched.
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    n, height, width = len(images), images.shape[1], images.shape[2]
    scores = np.empty(n, np.float64)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=math.ceil(n / batch_size) * steps, desc="cognitive distillation", unit="step")
    try:
        with torch.enable_grad():
            for start in range(0, n, batch_size):
                x = to_model_space(images[start:start + batch_size]).to(device)
                with torch.no_grad():
                    reference = _cd_output(model(x), match)
                # Start from a mask of about 0.88 everywhere: the prediction holds at once, and the L1 term then
                # removes whatever the prediction does not need.
                mask_logits = torch.full((len(x), 1, height, width), 2.0, device=device, requires_grad=True)
                optimizer = torch.optim.Adam([mask_logits], lr=float(learning_rate))
                for _ in range(steps):
                    noise = (torch.rand(x.shape, generator=generator) * 2.0 - 1.0).to(device)
                    mask = torch.sigmoid(mask_logits)
                    output = _cd_output(model(x * mask + (1.0 - mask) * noise), match)
                    # Summed over the batch, each image's mask gets exactly its own loss's gradient.
                    loss = ((output - reference).abs().sum(1) + float(l1_weight) * mask.sum(dim=(1, 2, 3))).sum()
                    (grad,) = torch.autograd.grad(loss, [mask_logits])
                    mask_logits.grad = grad
                    optimizer.step()
                    bar.update(1)
                scores[start:start + len(x)] = -torch.sigmoid(mask_logits).detach().sum(dim=(1, 2, 3)).double().cpu().numpy()
    finally:
        bar.close()
        for p, needed in zip(model.parameters(), frozen):
            p.requires_grad_(needed)
    return scores


# ------------------------------------------------------------------------------------- registry and scoring


DETECTORS: dict[str, Callable[..., np.ndarray]] = {
    "strip": score_strip,
    "spectral": score_spectral,
    "activation_clustering": score_activation_clustering,
    "cognitive_distillation": score_cognitive_distillation,
}


def detector_settings(name: str) -> dict[str, Any]:
    """The settings a detector accepts, with their defaults (``seed`` excluded: it is passed on its own)."""
    if name not in DETECTORS:
        raise BibaddiffError(f"detector must be one of {', '.join(DETECTORS)}; got {name!r}")
    parameters = inspect.signature(DETECTORS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "seed"}


def run_detector(name: str, model: nn.Module, images: np.ndarray, labels: np.ndarray,
                 settings: dict[str, Any] | None, seed: int) -> np.ndarray:
    """Scores of detector ``name`` with ``settings`` (a dict of that detector's keyword settings)."""
    allowed = detector_settings(name)
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise BibaddiffError(f"settings of detector {name!r} must be a dict; got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise BibaddiffError(f"unknown setting(s) {', '.join(map(repr, unknown))} for detector {name!r}; "
                             f"allowed: {', '.join(allowed) or 'none'}")
    return DETECTORS[name](model, images, labels, **settings, seed=seed)


def evaluate_detection(scores: np.ndarray, is_poisoned: np.ndarray) -> dict[str, Any]:
    """AUROC and TPR at 5% FPR of suspicion scores against the true poison flags."""
    is_poisoned = np.asarray(is_poisoned)
    return {
        "auroc": auroc(scores, is_poisoned),
        "tpr_at_5_fpr": tpr_at_fpr(scores, is_poisoned, 0.05),
        "n": int(len(is_poisoned)),
        "n_poisoned": int(np.sum(is_poisoned.astype(bool))),
    }
