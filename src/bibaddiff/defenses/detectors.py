"""Poisoned-data detectors: per-image suspicion scores from a classifier trained on the very set being screened.

Every detector is a function ``score_<name>(model, images, labels, *, <settings>, seed) -> np.ndarray`` that
returns one float per image, higher meaning "more likely poisoned", so that any of them can be scored with AUROC
against the known poison flags (:func:`evaluate_detection`). ``model`` is a classifier from
:mod:`bibaddiff.judges` (``SmallCNN`` or a torchvision ResNet); images are uint8 (N, H, W, C); ``labels`` are the
labels the set carries (for a generated set, the condition each image was generated with).

  strip                   STRIP (Gao et al. 2019): superimposing held-out clean images barely changes a
                          backdoored prediction.
  spectral                Spectral Signatures (Tran et al. 2018): poison dominates the top singular direction of
                          its class's centred penultimate features.
  activation_clustering   Activation Clustering (Chen et al. 2018): poison forms its own small cluster in its
                          class's penultimate features.
  cognitive_distillation  Cognitive Distillation (Huang et al. 2023): a backdoored prediction survives on a tiny
                          mask (the trigger), a clean one needs much of the image.
  fct                     FCT (Chen et al. 2022): a poisoned image's features move more under rotation and
                          translation than a clean image's.

Cognitive distillation and FCT have variants (:data:`DETECTOR_VARIANTS`: the published definition and our earlier
one), chosen by their ``variant`` setting or by a name that fixes it, ``<detector>_<variant>``; one config may list
several such names to run the variants side by side (:func:`resolve_detector`, :func:`detector_variant`).

Detection is scored by :func:`evaluate_detection`: AUROC and TPR at 5% FPR, each with a stratified bootstrap
interval. :func:`compare_aurocs` bootstraps the difference between the AUROC on generated sets and on the training
set from the per-image scores (:func:`save_detection_items`, :func:`load_detection_items`).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bibaddiff.images import inference_batch_size, to_model_space
from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import auroc, tpr_at_fpr
from bibaddiff.utils import write_atomically

__all__ = ["DETECTORS", "DETECTOR_VARIANTS", "DETECTOR_NAMES", "run_detector", "resolve_detector", "detector_settings",
           "detector_variant", "evaluate_detection", "bootstrap_interval", "compare_aurocs",
           "save_detection_items", "load_detection_items", "score_strip",
           "score_spectral", "score_activation_clustering", "score_cognitive_distillation", "score_fct",
           "fct_finetune", "fct_intra_class_loss",
           "cognitive_distillation_objective", "mask_total_variation", "rotate_translate",
           "penultimate_features"]


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


@torch.no_grad()
def _batched_outputs(model: nn.Module, images: np.ndarray, batch_size: int, forward: Callable) -> np.ndarray:
    images, _ = _check_inputs(model, images, np.zeros(len(np.asarray(images)), np.int64), min_images=1)
    batch_size = inference_batch_size(images, check_int(batch_size, "batch_size", 1))
    model.eval()
    device = _device_of(model)
    chunks = [forward(to_model_space(images[i:i + batch_size]).to(device)).float().cpu().numpy()
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks).astype(np.float64)


def _class_groups(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


# ---------------------------------------------------------------------------------------------- detectors


STRIP_BLENDS = ("add", "average")


def _check_partners(partners: Any, images: np.ndarray, num_blends: int) -> np.ndarray:
    partners = np.asarray(partners)
    if partners.dtype != np.uint8 or partners.ndim != 4 or partners.shape[1:] != images.shape[1:]:
        raise BibaddiffError(f"partners must be uint8 images of the screened images' shape (N, {', '.join(map(str, images.shape[1:]))}); "
                             f"got {partners.dtype} {partners.shape}")
    if len(partners) < num_blends:
        raise BibaddiffError(f"num_blends ({num_blends}) asks for more STRIP partners than the {len(partners)} held-out "
                             f"image(s) given; lower num_blends or hold out more images")
    return partners


@torch.no_grad()
def score_strip(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, partners: np.ndarray | None = None,
                num_blends: int = 100, blend: str = "add", batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """STRIP: minus the mean prediction entropy of the image superimposed on ``num_blends`` clean partner images.

    A trigger keeps forcing the target class whatever it is blended with, so poisoned images keep confident,
    low-entropy predictions and score high (score = minus the entropy, so higher = more likely poisoned).
    ``labels`` are only checked; STRIP does not use them.

    As published (Gao et al., ACSAC 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks";
    their reference code github.com/garrisongys/STRIP, also followed by Huang et al.'s detection/strip.py):

    - ``partners``: uint8 images the defender holds out as clean (the workflow passes the clean held-out split);
      each screened image gets its own ``num_blends`` partners drawn without replacement. The default
      ``None`` blends with other images of the screened set itself (drawn with replacement, never the image
      itself); that is not the published setting, since the screened set may itself carry the trigger.
    - ``num_blends``: N = 100 perturbations per input, the paper's setting.
    - ``blend="add"``: superimposition as in the reference code, ``cv2.addWeighted(image, 1, partner, 1, 0)``,
      i.e. the pixel sum clipped to 255. ``blend="average"`` is a 50/50 blend (this module's earlier variant).
    """
    images, labels = _check_inputs(model, images, labels)
    num_blends = check_int(num_blends, "num_blends", 1)
    batch_size = inference_batch_size(images, check_int(batch_size, "batch_size", 1))
    if blend not in STRIP_BLENDS:
        raise BibaddiffError(f"blend must be one of {', '.join(STRIP_BLENDS)}; got {blend!r}")
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    n = len(images)
    # Partners are drawn once for the whole set, so the scores do not depend on the batch size.
    if partners is None:
        pool = images
        # Drawing from n - 1 values and shifting those at or above i skips the image itself.
        chosen = rng.integers(0, n - 1, size=(n, num_blends))
        chosen += chosen >= np.arange(n)[:, None]
    else:
        pool = _check_partners(partners, images, num_blends)
        chosen = np.stack([rng.choice(len(pool), size=num_blends, replace=False) for _ in range(n)])
    model.eval()
    device = _device_of(model)
    images_per_batch = max(1, batch_size // num_blends)
    scores = np.empty(n, np.float64)
    for start in tqdm(range(0, n, images_per_batch), desc="STRIP", unit="batch"):
        rows = np.arange(start, min(n, start + images_per_batch))
        own = to_model_space(images[rows]).to(device).repeat_interleave(num_blends, dim=0)
        others = to_model_space(pool[chosen[rows].ravel()]).to(device)
        # Model space is linear in pixel values (x = p / 127.5 - 1), so both blends are exact there:
        # the pixel sum p1 + p2 is x1 + x2 + 1, clipped at 255 (x = 1); the 50/50 blend is the mean, without rounding.
        blended = (own + others + 1.0).clamp(max=1.0) if blend == "add" else 0.5 * own + 0.5 * others
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
    check_int(seed, "seed", 0)
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
    num_components = check_int(num_components, "num_components", 1)
    seed = check_int(seed, "seed", 0)
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
CD_NOISE = ("channel", "pixel")
# What each variant fills the settings left at None with, and the parts of the optimisation that are not settings.
CD_VARIANTS: dict[str, dict[str, Any]] = {
    # Huang et al. (ICLR 2023), reference code github.com/HanxunH/CognitiveDistillation (detection/
    # cognitive_distillation.py; detect_analysis.py's default logit masks: p=1, gamma=0.01, beta=1.0, 100 steps,
    # step size 0.1); the paper's setup: Adam with lr 0.1, betas (0.1, 0.1), 100 steps.
    "published": {"match": "logits", "l1_weight": 0.01, "tv_weight": 1.0, "noise": "channel",
                  "class_reduction": "mean", "betas": (0.1, 0.1), "mask": "tanh"},
    # This module's earlier objective: softmax outputs summed over classes, no TV term, fresh noise per pixel.
    "probabilities": {"match": "probabilities", "l1_weight": 0.01, "tv_weight": 0.0, "noise": "pixel",
                      "class_reduction": "sum", "betas": (0.9, 0.999), "mask": "sigmoid"},
}


def _cd_output(logits: torch.Tensor, match: str) -> torch.Tensor:
    return logits.float() if match == "logits" else torch.softmax(logits.float(), dim=1)


def mask_total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Per-image total variation of masks (B, C, H, W) as Cognitive Distillation defines it: the summed squared
    differences of vertical and horizontal neighbours, divided by C * H * W."""
    _, channels, height, width = mask.shape
    vertical = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3))
    horizontal = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3))
    return (vertical + horizontal) / (channels * height * width)


def cognitive_distillation_objective(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
                                     noise: torch.Tensor, *, match: str = "logits", l1_weight: float = 0.01,
                                     tv_weight: float = 1.0, class_reduction: str = "mean") -> torch.Tensor:
    """Per-image Cognitive Distillation loss of masks ``mask`` (B, 1, H, W) in [0, 1] on model-space images ``x``:

    ``dist(f(x * m + (1 - m) * noise), reference) + l1_weight * ||m||_1 + tv_weight * TV(m)``,

    with dist the absolute output difference averaged (``class_reduction="mean"``, published) or summed over
    classes, and TV :func:`mask_total_variation`. ``noise`` broadcasts against ``x``: (B, C, 1, 1) is the
    published per-channel fill.
    """
    output = _cd_output(model(x * mask + (1.0 - mask) * noise), match)
    difference = (output - reference).abs()
    distance = difference.mean(1) if class_reduction == "mean" else difference.sum(1)
    return distance + float(l1_weight) * mask.abs().sum(dim=(1, 2, 3)) + float(tv_weight) * mask_total_variation(mask)


def score_cognitive_distillation(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
                                 variant: str = "published", match: str | None = None, l1_weight: float | None = None,
                                 tv_weight: float | None = None, noise: str | None = None, steps: int = 100,
                                 learning_rate: float = 0.1, batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Cognitive Distillation: minus the L1 norm of the smallest mask that keeps the model's output.

    For each image, a mask m of shape (H, W) minimises :func:`cognitive_distillation_objective` with Adam for
    ``steps`` steps; the masked-out part is filled with noise uniform in the model's [-1, 1] range, drawn afresh
    each step. A backdoored prediction survives on the trigger alone, so poisoned images end with tiny masks and
    score high. ``labels`` are only checked. Settings left at None take the ``variant``'s value:

    ``variant="published"`` (Huang et al., ICLR 2023, "Distilling Cognitive Backdoor Patterns within an Image";
    reference code github.com/HanxunH/CognitiveDistillation): logits matched by their mean absolute difference,
    ``l1_weight`` (the paper's alpha, the code's gamma) 0.01, ``tv_weight`` (beta) 1.0, the default of the
    reference code's extract.py and of the logit masks detect_analysis.py scores (its README example uses 10),
    ``noise="channel"``: one uniform value per image and channel, constant over the image (the code's
    ``torch.rand(b, c, 1, 1)``); mask m = (tanh(w) + 1) / 2 from w = 1 (m = 0.88); Adam with lr 0.1 and
    betas (0.1, 0.1); 100 steps. The reference code scores 1 - min-max-normalised ||m||_1, which ranks as -||m||_1.

    ``variant="probabilities"`` (this module's earlier objective): softmax outputs matched by the L1 distance summed
    over classes, ``l1_weight`` 0.01, no TV term, ``noise="pixel"`` (fresh per pixel), m = sigmoid(w) from w = 2,
    Adam with default betas. On small models of digit-like images, whose black background is itself evidence,
    matching every logit forces the mask to keep the digit as well as the trigger and the scores stop separating,
    while matching probabilities does not (see tests/test_detectors.py).
    """
    images, labels = _check_inputs(model, images, labels)
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", 0)
    settings = _cd_settings(variant, match, l1_weight, tv_weight, noise, learning_rate)
    model.eval()
    device = _device_of(model)
    # The model stays fixed: only the masks get gradients, so no parameter's .grad is touched.
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    scores = np.empty(len(images), np.float64)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=math.ceil(len(images) / batch_size) * steps, desc="cognitive distillation", unit="step")
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                x = to_model_space(images[start:start + batch_size]).to(device)
                masks = _distil_masks(model, x, settings, steps, generator, bar)
                scores[start:start + len(x)] = -masks.sum(dim=(1, 2, 3)).double().cpu().numpy()
    finally:
        bar.close()
        for p, needed in zip(model.parameters(), frozen):
            p.requires_grad_(needed)
    return scores


def _cd_settings(variant: str, match: str | None, l1_weight: float | None, tv_weight: float | None,
                 noise: str | None, learning_rate: float) -> dict[str, Any]:
    """The variant's preset with the given overrides, checked."""
    if variant not in CD_VARIANTS:
        raise BibaddiffError(f"variant must be one of {', '.join(CD_VARIANTS)}; got {variant!r}")
    preset = CD_VARIANTS[variant]
    settings = {**preset, "match": preset["match"] if match is None else match,
                "l1_weight": preset["l1_weight"] if l1_weight is None else l1_weight,
                "tv_weight": preset["tv_weight"] if tv_weight is None else tv_weight,
                "noise": preset["noise"] if noise is None else noise, "learning_rate": learning_rate}
    if not _is_finite_number(learning_rate) or learning_rate <= 0:
        raise BibaddiffError(f"learning_rate must be a finite number > 0; got {learning_rate!r}")
    for name in ("l1_weight", "tv_weight"):
        if not _is_finite_number(settings[name]) or settings[name] < 0:
            raise BibaddiffError(f"{name} must be a finite number >= 0; got {settings[name]!r}")
    if settings["match"] not in CD_MATCH:
        raise BibaddiffError(f"match must be one of {', '.join(CD_MATCH)}; got {settings['match']!r}")
    if settings["noise"] not in CD_NOISE:
        raise BibaddiffError(f"noise must be one of {', '.join(CD_NOISE)}; got {settings['noise']!r}")
    return settings


def _distil_masks(model: nn.Module, x: torch.Tensor, settings: dict[str, Any], steps: int,
                  generator: torch.Generator, bar: Any) -> torch.Tensor:
    """The masks (B, 1, H, W) that minimise the objective for one batch of model-space images after ``steps``."""
    if settings["mask"] == "tanh":
        initial, to_mask = 1.0, lambda w: 0.5 * (torch.tanh(w) + 1.0)
    else:
        initial, to_mask = 2.0, torch.sigmoid
    with torch.no_grad():
        reference = _cd_output(model(x), settings["match"])
    # Both variants start from a mask of about 0.88 everywhere: the prediction holds at once, and the L1 term then
    # removes whatever the prediction does not need.
    mask_logits = torch.full((len(x), 1, *x.shape[2:]), initial, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([mask_logits], lr=float(settings["learning_rate"]), betas=settings["betas"])
    noise_shape = x.shape if settings["noise"] == "pixel" else (*x.shape[:2], 1, 1)
    for _ in range(steps):
        fill = (torch.rand(noise_shape, generator=generator) * 2.0 - 1.0).to(x.device)
        # Summed over the batch, each image's mask gets exactly its own loss's gradient.
        loss = cognitive_distillation_objective(
            model, x, to_mask(mask_logits), reference, fill, match=settings["match"],
            l1_weight=settings["l1_weight"], tv_weight=settings["tv_weight"],
            class_reduction=settings["class_reduction"]).sum()
        (grad,) = torch.autograd.grad(loss, [mask_logits])
        mask_logits.grad = grad
        optimizer.step()
        bar.update(1)
    return to_mask(mask_logits).detach()


def rotate_translate(x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate model-space images (B, C, H, W) by ``angles`` degrees (counter-clockwise, about the image centre), then
    shift them by whole pixels ``shifts`` (B, 2) = (right, down); nearest-neighbour sampling, uncovered pixels black.

    These are torchvision's ``RandomRotation`` and ``RandomAffine(degrees=0, translate=...)`` for given draws
    (nearest interpolation, fill 0, no expansion), written for a batch with one draw per image.
    """
    batch, _, height, width = x.shape
    theta = torch.deg2rad(angles.to(torch.float64))
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    centre_y, centre_x = (height - 1) / 2.0, (width - 1) / 2.0
    # Output pixel q shows input pixel c + R(-angle) (q - shift - c): undo the shift, then the rotation.
    dx = cols[None] - shifts[:, 0, None, None].to(torch.float64) - centre_x
    dy = rows[None] - shifts[:, 1, None, None].to(torch.float64) - centre_y
    source_x = centre_x + cos * dx - sin * dy
    source_y = centre_y + sin * dx + cos * dy
    # grid_sample's normalised coordinates (align_corners=False): pixel j's centre is (2j + 1) / size - 1.
    grid = torch.stack([(2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1], dim=-1).to(x.dtype).to(x.device)
    moved = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # Pixels whose source lies outside the image are black (-1 in model space), the published fill; the others are
    # copied exactly, so the identity transformation returns the images unchanged.
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return moved + (inside - 1.0)


FCT_VARIANTS: dict[str, dict[str, Any]] = {
    # Huang et al.'s detection/fct.py, the detection code the paper used (after Chen et al.'s
    # finetune_attack_noTrans.py): the classifier is fine-tuned on the screened set with the intra-class loss before
    # it scores, 10 epochs of SGD (lr 0.01, momentum 0.9, weight decay 5e-4), in batches of the reference configs'
    # train_bs, 100.
    "published": {"finetune_epochs": 10, "finetune_batch_size": 100, "finetune_learning_rate": 0.01},
    # This module's earlier scoring: the classifier as trained, no fine-tuning.
    "frozen": {"finetune_epochs": 0, "finetune_batch_size": None, "finetune_learning_rate": None},
}
FCT_MOMENTUM, FCT_WEIGHT_DECAY = 0.9, 5e-4


def fct_intra_class_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """FCT's fine-tuning loss on one batch of penultimate features (B, D) with their labels (B,): the mean of the
    K x K cosine-similarity matrix of the K classes' feature centres present in the batch, with its diagonal set to 0.

    Minimising it pulls the class centres apart (each image towards its own class); a batch of one class has loss 0.
    """
    classes, members = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, members, features)
    counts = torch.bincount(members, minlength=len(classes)).to(features.dtype)
    centres = F.normalize(sums / counts[:, None], dim=1)
    off_diagonal = 1.0 - torch.eye(len(classes), dtype=features.dtype, device=features.device)
    return (centres @ centres.T * off_diagonal).mean()


def fct_finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int,
                 learning_rate: float, seed: int) -> nn.Module:
    """A copy of ``model`` fine-tuned with :func:`fct_intra_class_loss` on the screened images and the labels they
    carry, as the published FCT does before it scores; ``model`` itself is left as it was.

    ``epochs`` passes in train mode (batch-norm statistics update, as in the reference), SGD with ``learning_rate``,
    momentum 0.9 and weight decay 5e-4, batches of ``batch_size`` images in a seeded random order per epoch (our
    choice: the reference iterates its set's stored order, which is mixed on CIFAR-10; our generated sets are stored
    class by class, and a batch of one class has nothing to pull apart). A last batch of a single image is skipped
    (it is one class, loss 0, and batch norm cannot train on it).
    """
    tuned = copy.deepcopy(model)
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    tuned.train()
    device = _device_of(tuned)
    optimizer = torch.optim.SGD(tuned.parameters(), lr=float(learning_rate), momentum=FCT_MOMENTUM,
                                weight_decay=FCT_WEIGHT_DECAY)
    # A stream of its own, so that the transformation draws are the frozen variant's.
    rng = np.random.default_rng([seed, 1])
    steps_per_epoch = math.ceil(len(images) / batch_size)
    with torch.enable_grad(), tqdm(total=epochs * steps_per_epoch, desc="FCT fine-tuning", unit="step") as bar:
        for _ in range(epochs):
            order = rng.permutation(len(images))
            for start in range(0, len(images), batch_size):
                rows = order[start:start + batch_size]
                bar.update(1)
                if len(rows) < 2:
                    continue
                x = to_model_space(images[rows]).to(device)
                loss = fct_intra_class_loss(_penultimate(tuned, x).float(),
                                            torch.as_tensor(labels[rows], device=device))
                if not loss.requires_grad:
                    continue  # features that depend on no parameter: nothing to fine-tune
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    for parameter in tuned.parameters():
        parameter.requires_grad_(False)
    return tuned.eval()


def _fct_settings(variant: str, epochs: int | None, batch_size: int | None, learning_rate: float | None,
                  num_images: int, labels: np.ndarray) -> dict[str, Any]:
    """The variant's fine-tuning with the given overrides, checked against the screened set."""
    if variant not in FCT_VARIANTS:
        raise BibaddiffError(f"variant must be one of {', '.join(FCT_VARIANTS)}; got {variant!r}")
    given = {"finetune_epochs": epochs, "finetune_batch_size": batch_size, "finetune_learning_rate": learning_rate}
    if variant == "frozen":
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise BibaddiffError(f"{', '.join(stray)}: the frozen FCT does not fine-tune; leave them out or use "
                                 f"variant 'published'")
        return dict(FCT_VARIANTS["frozen"])
    settings = {name: FCT_VARIANTS[variant][name] if value is None else value for name, value in given.items()}
    settings["finetune_epochs"] = check_int(settings["finetune_epochs"], "finetune_epochs", 1)
    settings["finetune_batch_size"] = check_int(settings["finetune_batch_size"], "finetune_batch_size", 2)
    rate = settings["finetune_learning_rate"]
    if not _is_finite_number(rate) or rate <= 0:
        raise BibaddiffError(f"finetune_learning_rate must be a finite number > 0; got {rate!r}")
    if num_images < settings["finetune_batch_size"]:
        raise BibaddiffError(f"finetune_batch_size: {settings['finetune_batch_size']} images per fine-tuning batch, "
                             f"but the screened set holds only {num_images}; allowed up to {num_images}")
    if len(np.unique(labels)) < 2:
        raise BibaddiffError("variant: the published FCT fine-tunes by pulling class centres apart, and the screened "
                             "set holds one class; use variant 'frozen'")
    return settings


def score_fct(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, variant: str = "published",
              finetune_epochs: int | None = None, finetune_batch_size: int | None = None,
              finetune_learning_rate: float | None = None, rotation_degrees: float = 180.0, translate: float = 0.2,
              num_transforms: int = 1, batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """FCT (Feature Consistency towards Transformations): the mean squared difference between the penultimate
    features of an image and of a randomly transformed copy, averaged over ``num_transforms`` copies.

    Chen et al. (NeurIPS 2022), "Effective Backdoor Defense by Exploiting Sensitivity of Poisoned Samples to
    Transformations": poisoned samples' features move much more under rotation and translation than clean ones',
    so higher = more likely poisoned. Published transformation (reference code github.com/SCLBD/
    Effective_backdoor_defense, utils/args.py defaults trans1=rotate, trans2=affine in utils/dataloader_bd.py; the
    same in Huang et al.'s detection/fct.py): ``RandomRotation(180)`` (angle uniform in [-180, 180] degrees) then
    ``RandomAffine(degrees=0, translate=(0.2, 0.2))`` (a shift of a whole number of pixels, uniform up to 20% of the
    width and height), one transformed copy per image; distance ``mean((f(x) - f(T(x)))**2)`` over feature
    dimensions (calculate_consistency.py).

    ``variant="published"`` (Huang et al.'s detection/fct.py, the code the paper used): the features are those of a
    copy of the classifier first fine-tuned on the screened set with the intra-class loss (:func:`fct_finetune`:
    ``finetune_epochs`` 10, ``finetune_batch_size`` 100, ``finetune_learning_rate`` 0.01; settings left at None take
    these). ``variant="frozen"``: the classifier as given (this module's earlier scoring); it takes no fine-tuning
    setting. ``model`` is never changed. ``labels`` (the labels the set carries) drive the fine-tuning only.
    """
    images, labels = _check_inputs(model, images, labels)
    num_transforms = check_int(num_transforms, "num_transforms", 1)
    batch_size = inference_batch_size(images, check_int(batch_size, "batch_size", 1))
    seed = check_int(seed, "seed", 0)
    if not _is_finite_number(rotation_degrees) or not 0 <= rotation_degrees <= 180:
        raise BibaddiffError(f"rotation_degrees must be a number in [0, 180]; got {rotation_degrees!r}")
    if not _is_finite_number(translate) or not 0 <= translate <= 1:
        raise BibaddiffError(f"translate must be a number in [0, 1]; got {translate!r}")
    finetune = _fct_settings(variant, finetune_epochs, finetune_batch_size, finetune_learning_rate, len(images), labels)
    if finetune["finetune_epochs"]:
        model = fct_finetune(model, images, labels, epochs=finetune["finetune_epochs"],
                             batch_size=finetune["finetune_batch_size"],
                             learning_rate=finetune["finetune_learning_rate"], seed=seed)
    return _feature_consistency(model, images, rotation_degrees, translate, num_transforms, batch_size, seed)


@torch.no_grad()
def _feature_consistency(model: nn.Module, images: np.ndarray, rotation_degrees: float, translate: float,
                         num_transforms: int, batch_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, height, width = len(images), images.shape[1], images.shape[2]
    # All draws up front, per image in order, so the scores do not depend on the batch size.
    angles = rng.uniform(-rotation_degrees, rotation_degrees, size=(n, num_transforms))
    limits = np.array([translate * width, translate * height])
    shifts = np.round(rng.uniform(-limits, limits, size=(n, num_transforms, 2)))
    model.eval()
    device = _device_of(model)
    scores = np.zeros(n, np.float64)
    for start in tqdm(range(0, n, batch_size), desc="FCT", unit="batch"):
        rows = slice(start, min(n, start + batch_size))
        x = to_model_space(images[rows]).to(device)
        own = _penultimate(model, x).float()
        for k in range(num_transforms):
            moved = rotate_translate(x, torch.from_numpy(angles[rows, k]), torch.from_numpy(shifts[rows, k]))
            other = _penultimate(model, moved).float()
            scores[rows] += ((own - other) ** 2).mean(1).double().cpu().numpy() / num_transforms
    return scores


# ------------------------------------------------------------------------------------- registry and scoring


DETECTORS: dict[str, Callable[..., np.ndarray]] = {
    "strip": score_strip,
    "spectral": score_spectral,
    "activation_clustering": score_activation_clustering,
    "cognitive_distillation": score_cognitive_distillation,
    "fct": score_fct,
}
# Detectors with more than one definition, selected by their ``variant`` setting (the first is the default). Each
# variant also has a name of its own, ``<detector>_<variant>`` (e.g. ``cognitive_distillation_probabilities``), so
# that one config can run several variants side by side, each under its own name and with its own settings.
DETECTOR_VARIANTS: dict[str, tuple[str, ...]] = {
    "cognitive_distillation": tuple(CD_VARIANTS),
    "fct": tuple(FCT_VARIANTS),
}
DETECTOR_NAMES: tuple[str, ...] = (*DETECTORS, *(f"{detector}_{variant}" for detector, variants in DETECTOR_VARIANTS.items()
                                                 for variant in variants))
# Keyword arguments that are data the workflow passes, not settings a config may give.
_DATA_ARGUMENTS = ("seed", "partners")


def resolve_detector(name: str) -> tuple[str, str | None]:
    """(the detector, the variant its name fixes or None) of a name in :data:`DETECTOR_NAMES`."""
    if name in DETECTORS:
        return name, None
    for detector, variants in DETECTOR_VARIANTS.items():
        for variant in variants:
            if name == f"{detector}_{variant}":
                return detector, variant
    raise BibaddiffError(f"detector must be one of {', '.join(DETECTOR_NAMES)}; got {name!r}")


def detector_settings(name: str) -> dict[str, Any]:
    """The settings a detector accepts, with their defaults (``seed`` and the ``partners`` images excluded); a name
    that fixes a variant does not take ``variant``."""
    detector, fixed = resolve_detector(name)
    parameters = inspect.signature(DETECTORS[detector]).parameters.values()
    return {p.name: p.default for p in parameters
            if p.kind is p.KEYWORD_ONLY and p.name not in _DATA_ARGUMENTS and not (fixed and p.name == "variant")}


def detector_variant(name: str, settings: dict[str, Any] | None = None) -> str | None:
    """The variant detector ``name`` runs with ``settings``: the one its name fixes, else its ``variant`` setting,
    else its default; None for a detector with one definition."""
    detector, fixed = resolve_detector(name)
    if detector not in DETECTOR_VARIANTS:
        return None
    return fixed or (settings or {}).get("variant") or detector_settings(detector)["variant"]


def run_detector(name: str, model: nn.Module, images: np.ndarray, labels: np.ndarray,
                 settings: dict[str, Any] | None, seed: int, *, heldout: np.ndarray | None = None) -> np.ndarray:
    """Scores of detector ``name`` (one of :data:`DETECTOR_NAMES`) with ``settings`` (a dict of that detector's
    keyword settings).

    ``heldout``: clean uint8 images the defender holds out; detectors that blend with clean images (STRIP) take
    their partners from them, the others ignore them.
    """
    detector, fixed = resolve_detector(name)
    allowed = detector_settings(name)
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise BibaddiffError(f"settings of detector {name!r} must be a dict; got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise BibaddiffError(f"unknown setting(s) {', '.join(map(repr, unknown))} for detector {name!r}; "
                             f"allowed: {', '.join(allowed) or 'none'}")
    data = {"variant": fixed} if fixed else {}
    if heldout is not None and "partners" in inspect.signature(DETECTORS[detector]).parameters:
        data["partners"] = heldout
    return DETECTORS[detector](model, images, labels, **settings, **data, seed=seed)


def bootstrap_interval(scores: np.ndarray, is_poisoned: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float],
                       *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(scores, flags)``, resampling the poisoned and the clean images
    separately with replacement (stratified, so every resample keeps both counts); nan when either class is empty."""
    scores, flags = np.asarray(scores, np.float64), np.asarray(is_poisoned).astype(bool)
    resamples = check_int(resamples, "resamples", 1)
    if not _is_finite_number(level) or not 0 < level < 1:
        raise BibaddiffError(f"level must lie in (0, 1); got {level!r}")
    positives, negatives = np.flatnonzero(flags), np.flatnonzero(~flags)
    if len(positives) == 0 or len(negatives) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    resampled_flags = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    values = np.empty(resamples)
    for b in range(resamples):
        rows = np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
        values[b] = statistic(scores[rows], resampled_flags)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def evaluate_detection(scores: np.ndarray, is_poisoned: np.ndarray, *, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """AUROC (scikit-learn's ``roc_auc_score``) and TPR at 5% FPR of suspicion scores against the true poison flags,
    each with a ``level`` percentile-bootstrap interval (``*_low``, ``*_high``; :func:`bootstrap_interval` with
    ``resamples`` stratified resamples and a fixed ``seed``); nan where either class is empty."""
    scores, flags = np.asarray(scores, np.float64), np.asarray(is_poisoned).astype(bool)
    if scores.shape != flags.shape or scores.ndim != 1:
        raise BibaddiffError(f"scores and is_poisoned must be 1-D and equal in length; got {scores.shape} and {flags.shape}")
    if not np.all(np.isfinite(scores)):
        raise BibaddiffError("scores must be finite")
    result: dict[str, Any] = {}
    for key, statistic in (("auroc", auroc), ("tpr_at_5_fpr", lambda s, f: tpr_at_fpr(s, f, 0.05))):
        low, high = bootstrap_interval(scores, flags, statistic, resamples=resamples, level=level, seed=seed)
        result.update({key: statistic(scores, flags), f"{key}_low": low, f"{key}_high": high})
    return {**result, "n": int(len(flags)), "n_poisoned": int(flags.sum()), "resamples": int(resamples),
            "level": float(level)}


# ------------------------------------------------------------------------------ comparing AUROCs between sets


def save_detection_items(path: Any, carries_trigger: np.ndarray, in_target: np.ndarray,
                         scores: dict[str, np.ndarray]) -> None:
    """Write one screened set's per-image flags and every detector's scores to an ``.npz`` (atomically), for
    :func:`compare_aurocs` to bootstrap: ``carries_trigger`` and ``in_target`` (bool), ``score_<detector>`` (float)."""
    carries_trigger, in_target = np.asarray(carries_trigger).astype(bool), np.asarray(in_target).astype(bool)
    if carries_trigger.ndim != 1 or in_target.shape != carries_trigger.shape:
        raise BibaddiffError(f"carries_trigger and in_target must be 1-D and equal in length; got {carries_trigger.shape} "
                             f"and {in_target.shape}")
    arrays = {"carries_trigger": carries_trigger, "in_target": in_target}
    for name, values in scores.items():
        values = np.asarray(values, np.float64)
        if values.shape != carries_trigger.shape:
            raise BibaddiffError(f"scores of detector {name!r} must have one value per image ({len(carries_trigger)}); "
                                 f"got shape {values.shape}")
        arrays[f"score_{name}"] = values

    def dump(tmp: Any) -> None:
        with open(tmp, "wb") as handle:  # a handle, so that numpy does not append its own .npz to the name
            np.savez(handle, **arrays)

    write_atomically(path, dump)


def load_detection_items(path: Any) -> dict[str, Any]:
    """What :func:`save_detection_items` wrote: ``carries_trigger``, ``in_target`` and ``scores`` {detector: scores}."""
    with np.load(path) as arrays:
        missing = {"carries_trigger", "in_target"} - set(arrays.files)
        if missing:
            raise BibaddiffError(f"{path}: not a detection items file (it lacks {', '.join(sorted(missing))})")
        return {"carries_trigger": arrays["carries_trigger"].astype(bool), "in_target": arrays["in_target"].astype(bool),
                "scores": {key.removeprefix("score_"): arrays[key] for key in arrays.files if key.startswith("score_")}}


def _check_scored_set(scored_set: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(scored_set, (tuple, list)) or len(scored_set) != 2:
        raise BibaddiffError(f"{name} must be a (scores, is_poisoned) pair; got {type(scored_set).__name__}")
    scores, flags = np.asarray(scored_set[0], np.float64), np.asarray(scored_set[1]).astype(bool)
    if scores.ndim != 1 or scores.shape != flags.shape:
        raise BibaddiffError(f"{name} must be a (scores, is_poisoned) pair of 1-D arrays of equal length; got shapes "
                             f"{scores.shape} and {flags.shape}")
    if not np.all(np.isfinite(scores)):
        raise BibaddiffError(f"{name}: scores must be finite")
    return scores, flags


def _stratified_bootstrap_aurocs(scores: np.ndarray, flags: np.ndarray, resamples: int,
                                 rng: np.random.Generator) -> np.ndarray:
    """AUROCs of ``resamples`` resamples that draw the poisoned and the clean images separately with replacement;
    all nan when either class is empty.

    AUROC is the Mann-Whitney statistic, ties counting half, so a resample needs only how often each distinct score
    is drawn on each side: a clean image's count below a score is a cumulative sum. That is exact (the same value as
    scikit-learn's on the resampled images) and takes O(n) per resample instead of a sort."""
    positives, negatives = int(flags.sum()), int((~flags).sum())
    if positives == 0 or negatives == 0:
        return np.full(resamples, math.nan)
    _, tie_group = np.unique(scores, return_inverse=True)
    groups = int(tie_group.max()) + 1
    positive_groups, negative_groups = tie_group[flags], tie_group[~flags]
    values = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(groups, positives, negatives))  # bounds the (chunk, n) arrays at ~16 MB each

    def counts(sides: np.ndarray, size: int) -> np.ndarray:
        drawn = sides[rng.integers(0, len(sides), (size, len(sides)))]
        offsets = np.arange(size)[:, None] * groups
        return np.bincount((drawn + offsets).ravel(), minlength=size * groups).reshape(size, groups)

    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        positive_counts, negative_counts = counts(positive_groups, size), counts(negative_groups, size)
        clean_below = np.cumsum(negative_counts, axis=1) - negative_counts
        wins = (positive_counts * (clean_below + 0.5 * negative_counts)).sum(axis=1)
        values[start:start + size] = wins / (positives * negatives)
    return values


def compare_aurocs(training: tuple[np.ndarray, np.ndarray] | None, generated_sets: list[tuple[np.ndarray, np.ndarray]], *,
                   resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """AUROC on generated sets minus AUROC on the training set, each difference with its own bootstrap interval.

    ``training`` and each of ``generated_sets`` (one per training seed of the diffusion model) are
    (scores, is_poisoned) pairs. They are independent samples, so each is resampled on its own, stratified by
    poisoned/clean (:func:`bootstrap_interval`'s scheme), with ``resamples`` draws from one ``numpy`` Generator
    seeded with ``seed``; intervals are ``level`` percentile intervals.

    Returns ``training`` (auroc, auroc_low, auroc_high), ``generated`` (per set: auroc with interval and
    auroc_difference with interval) and ``pooled``: the mean AUROC over the generated sets minus the training AUROC,
    with an interval from a two-stage bootstrap that resamples the sets (the seeds), then the images within each
    drawn set, so that it widens when seeds disagree; ``between_seed_sd`` is the standard deviation of the sets'
    AUROCs (ddof 1). A generated set with no poisoned or no clean image has no AUROC: it is nan and left out of
    the pooled estimate (``sets_scored`` counts the others). Without a training set (``training`` None: a model
    whose training set is not at hand) the generated sets keep their AUROCs and every difference is nan."""
    resamples = check_int(resamples, "resamples", 1)
    if not _is_finite_number(level) or not 0 < level < 1:
        raise BibaddiffError(f"level must lie in (0, 1); got {level!r}")
    if not isinstance(generated_sets, (list, tuple)):
        raise BibaddiffError(f"generated_sets must be a list of (scores, is_poisoned) pairs; got {type(generated_sets).__name__}")
    training = None if training is None else _check_scored_set(training, "training")
    generated_sets = [_check_scored_set(s, f"generated_sets[{k}]") for k, s in enumerate(generated_sets)]
    rng = np.random.default_rng(check_int(seed, "seed", 0))
    quantiles = [(1 - level) / 2, (1 + level) / 2]

    def interval(values: np.ndarray) -> tuple[float, float]:
        if np.isnan(values).any():
            return math.nan, math.nan
        low, high = np.quantile(values, quantiles)
        return float(low), float(high)

    training_auroc = math.nan if training is None else auroc(*training)
    training_draws = (np.full(resamples, math.nan) if training is None
                      else _stratified_bootstrap_aurocs(*training, resamples, rng))
    result: dict[str, Any] = {"training": {"auroc": training_auroc, **dict(zip(("auroc_low", "auroc_high"),
                                                                              interval(training_draws)))}}
    per_set, scored_draws, scored_aurocs = [], [], []
    for scores, flags in generated_sets:
        value, draws = auroc(scores, flags), _stratified_bootstrap_aurocs(scores, flags, resamples, rng)
        low, high = interval(draws)
        difference_low, difference_high = interval(draws - training_draws)
        per_set.append({"auroc": value, "auroc_low": low, "auroc_high": high,
                        "auroc_difference": value - training_auroc, "auroc_difference_low": difference_low,
                        "auroc_difference_high": difference_high})
        if not math.isnan(value):
            scored_draws.append(draws)
            scored_aurocs.append(value)
    result["generated"] = per_set
    pooled = dict.fromkeys(("auroc", "auroc_low", "auroc_high", "auroc_difference", "auroc_difference_low",
                            "auroc_difference_high", "between_seed_sd"), math.nan)
    if scored_aurocs:
        sets = len(scored_aurocs)
        # Stage one draws which sets (seeds) a resample holds; stage two gives each drawn set an item resample of its
        # own (a random one of its ``resamples`` stratified draws), so a set drawn twice gets two different ones.
        chosen_sets = rng.integers(0, sets, (resamples, sets))
        chosen_draws = rng.integers(0, resamples, (resamples, sets))
        pooled_draws = np.stack(scored_draws)[chosen_sets, chosen_draws].mean(axis=1)
        pooled["auroc"] = float(np.mean(scored_aurocs))
        pooled["auroc_low"], pooled["auroc_high"] = interval(pooled_draws)
        pooled["auroc_difference"] = pooled["auroc"] - training_auroc
        pooled["auroc_difference_low"], pooled["auroc_difference_high"] = interval(pooled_draws - training_draws)
        pooled["between_seed_sd"] = float(np.std(scored_aurocs, ddof=1)) if sets > 1 else math.nan
    result["pooled"] = {**pooled, "sets_scored": len(scored_aurocs)}
    return result
