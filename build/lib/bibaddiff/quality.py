"""Generation quality: how far a model's all-class generations lie from the real training images.

- FID and KID in Inception-v3 pool features (2048-d), computed by torch-fidelity: its TensorFlow-compatible
  Inception-v3, which resizes uint8 images bilinearly to 299 x 299 as the original TensorFlow FID code does, with its
  weights read from a local file (``quality.inception_weights``; nothing is downloaded). These are comparable with
  published FIDs computed on the same number of images.
- The same two distances in the content judge's penultimate features (``fid_judge``, ``kid_judge``): they need no
  download and work on any dataset here, but they are not Inception FIDs and must not be compared with published
  numbers, only between the models of one experiment.
- For text-to-image models, the CLIP score of each generation against its class prompt,
  100 * max(cos(image embedding, text embedding), 0), from a local CLIP folder (``quality.clip_model``) loaded with
  transformers.

FID intervals are bootstrap intervals over the generated images (the real images held fixed; shifted by the
resamples' mean bias so that they centre on the estimate); the CLIP score's a bootstrap of the mean. KID has no
interval: torch-fidelity gives its mean over random subsets and the standard deviation over those subsets
(``kid_sd_over_subsets``), the spread of one subset's KID, which is not a 95% interval of the mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bibaddiff.checks import check_int
from bibaddiff.data import ImageDataset
from bibaddiff.diffusion.base import DiffusionModel
from bibaddiff.errors import BibaddiffError
from bibaddiff.images import to_model_space

__all__ = ["CONFIDENCE", "FEATURE_METRICS", "all_class_generations", "bootstrap_mean", "clip_scores", "distance_rows",
           "fid_with_interval", "frechet_distance", "inception_features", "judge_features", "kid_over_subsets",
           "load_clip", "load_inception", "quality_features"]

CONFIDENCE = 0.95
INCEPTION_LAYER = "2048"


def all_class_generations(model: DiffusionModel, counts_per_class: list[int], guidance: float, ddim_steps: int,
                          seed: int, batch_size: int, *, x0_clipping: str) -> ImageDataset:
    """``counts_per_class[c]`` images conditioned on each class c (for a text-to-image model, class c's prompt),
    labelled with their condition. Each class's noise depends on (seed, class) only, as in every generated cell."""
    class_names = model.info.class_names
    if len(counts_per_class) != len(class_names) or min(counts_per_class) < 0:
        raise BibaddiffError(f"counts_per_class must give a non-negative count for each of {len(class_names)} classes; "
                             f"got {list(counts_per_class)}")
    parts, labels = [], []
    for condition, count in enumerate(counts_per_class):
        if count:
            parts.append(model.generate(condition, guidance, int(count), ddim_steps, seed, batch_size,
                                        x0_clipping=x0_clipping))
            labels.append(np.full(int(count), condition))
    if not parts:
        raise BibaddiffError("counts_per_class asks for no image at all")
    return ImageDataset(np.concatenate(parts), np.concatenate(labels), list(class_names),
                        manifest={"source": "generated", "guidance": float(guidance), "seed": int(seed),
                                  "x0_clipping": x0_clipping})


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise BibaddiffError(f"{name} must be uint8 of shape (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
    if len(images) < 2:
        raise BibaddiffError(f"{name}: at least 2 images are needed for a covariance; got {len(images)}")
    return images


@torch.no_grad()
def judge_features(judge: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features (N, D) of a content judge (from ``judges.load_judge``) for uint8 images."""
    from bibaddiff.judges import classifier_shape, penultimate_layers

    images = _check_images(images, "images")
    batch_size = check_int(batch_size, "quality.batch_size", 1)
    channels, _ = classifier_shape(judge)
    if images.shape[-1] != channels:
        raise BibaddiffError(f"the content judge takes {channels}-channel images; got {images.shape[-1]} channels")
    network = penultimate_layers(judge).eval()
    device = next(network.parameters()).device
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc="judge features", unit="batch", mininterval=2):
        batch = to_model_space(images[start:start + batch_size]).to(device)
        parts.append(network(batch).reshape(len(batch), -1).double().cpu().numpy())
    return np.concatenate(parts)


def load_inception(weights_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torch-fidelity's TensorFlow-compatible Inception-v3 with the weights of a local file (its format: a
    ``torch.save``d state dict, e.g. torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``); a missing file or
    one that does not fit the network fails with one line naming ``quality.inception_weights``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(weights_path).expanduser() if weights_path else None
    if path is None or not path.is_file():
        raise BibaddiffError(f"quality.inception_weights: {weights_path} not found; name a local Inception-v3 weights "
                             "file (weights are never downloaded) or set null")
    try:
        network = FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_LAYER],
                                              feature_extractor_weights_path=str(path))
    except Exception as error:  # unpickling and load_state_dict raise many types for a file that does not fit
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BibaddiffError(f"quality.inception_weights: {path} is not an Inception-v3 state dict for torch-fidelity "
                             f"({first_line[:200]})") from None
    return network.to(device).eval()


@torch.no_grad()
def inception_features(network: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """2048-d Inception-v3 pool features (N, 2048) of uint8 images; grey images are repeated to three channels, and
    the network resizes them to 299 x 299 itself (torch-fidelity's TensorFlow-compatible bilinear resize)."""
    images = _check_images(images, "images")
    batch_size = check_int(batch_size, "quality.batch_size", 1)
    device = next(network.parameters()).device
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc="Inception features", unit="batch", mininterval=2):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        features = network(batch.contiguous().to(device))
        parts.append((features[0] if isinstance(features, (tuple, list)) else features).double().cpu().numpy())
    return np.concatenate(parts)


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2 or features.shape[1] < 1:
        raise BibaddiffError(f"{name} must have shape (N, D) with N >= 2; got {features.shape}")
    if not np.all(np.isfinite(features)):
        raise BibaddiffError(f"{name} contain NaN or infinite values")
    return features


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians N(mean_a, cov_a) and N(mean_b, cov_b):
    |mean_a - mean_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)), computed by torch-fidelity."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    mean_a, mean_b = (np.asarray(m, dtype=np.float64) for m in (mean_a, mean_b))
    cov_a, cov_b = (np.asarray(c, dtype=np.float64) for c in (cov_a, cov_b))
    dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
    if mean_a.ndim != 1 or mean_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise BibaddiffError(f"frechet_distance needs two means of shape (D,) and two covariances of shape (D, D); got "
                             f"{mean_a.shape}, {cov_a.shape}, {mean_b.shape}, {cov_b.shape}")
    stats_a, stats_b = {"mu": mean_a, "sigma": cov_a}, {"mu": mean_b, "sigma": cov_b}
    return float(fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID])


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def fid_with_interval(real_features: np.ndarray, generated_features: np.ndarray, bootstrap_samples: int = 100,
                      seed: int = 0) -> dict[str, Any]:
    """FID between two feature sets, with a bootstrap 95% interval from resampling the generated images
    (``bootstrap_samples`` of 0: no interval). A resample repeats images, which lowers its diversity and raises its
    FID, so the resamples' percentiles would sit above the estimate; they are shifted down by the resamples' mean
    excess over the estimate, so that the interval gives the estimate's spread around itself (clipped at 0)."""
    real = _check_features(real_features, "real features")
    generated = _check_features(generated_features, "generated features")
    if real.shape[1] != generated.shape[1]:
        raise BibaddiffError(f"real and generated features differ in width: {real.shape[1]} vs {generated.shape[1]}")
    bootstrap_samples = check_int(bootstrap_samples, "quality.bootstrap_samples", 0)
    real_mean, real_cov = _gaussian(real)
    value = frechet_distance(*_gaussian(generated), real_mean, real_cov)
    low = high = None
    if bootstrap_samples:
        rng = np.random.default_rng(seed)
        resampled = [frechet_distance(*_gaussian(generated[rng.integers(0, len(generated), len(generated))]),
                                      real_mean, real_cov)
                     for _ in tqdm(range(bootstrap_samples), desc="FID bootstrap", mininterval=2)]
        resampled = np.asarray(resampled)
        low, high = _percentiles(resampled - (resampled.mean() - value))
        low = max(0.0, low)
    return {"value": value, "low": low, "high": high,
            "interval": f"bootstrap {CONFIDENCE:.0%} over generated images ({bootstrap_samples}), bias-shifted"
            if low is not None else ""}


def kid_over_subsets(real_features: np.ndarray, generated_features: np.ndarray, subsets: int = 100,
                     subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """KID (polynomial-kernel MMD^2, torch-fidelity's unbiased estimator) over ``subsets`` random subsets of
    ``subset_size`` images from each set, capped at half the smaller set so that the subsets differ: the mean
    (``value``) and the standard deviation over subsets (``kid_sd_over_subsets``). That sd is the spread of one
    subset's KID, not a confidence interval of the mean, so ``low`` and ``high`` are None."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    real = _check_features(real_features, "real features")
    generated = _check_features(generated_features, "generated features")
    if real.shape[1] != generated.shape[1]:
        raise BibaddiffError(f"real and generated features differ in width: {real.shape[1]} vs {generated.shape[1]}")
    subsets = check_int(subsets, "quality.kid_subsets", 1)
    size = max(2, min(check_int(subset_size, "quality.kid_subset_size", 2), len(real) // 2, len(generated) // 2))
    result = kid_features_to_metric(torch.from_numpy(generated), torch.from_numpy(real), kid_subsets=subsets,
                                    kid_subset_size=size, rng_seed=int(seed), verbose=False)
    mean, std = result[KEY_METRIC_KID_MEAN], result[KEY_METRIC_KID_STD]
    return {"value": mean, "low": None, "high": None, "kid_sd_over_subsets": std,
            "interval": f"none (kid_sd_over_subsets: one sd over {subsets} subsets of {size} images)"}


def load_clip(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(CLIP model, processor) from a local folder written by ``save_pretrained``; nothing is downloaded."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(folder).expanduser() if folder else None
    if path is None or not path.is_dir():
        raise BibaddiffError(f"quality.clip_model: {folder} is not a local folder (CLIP models are never downloaded)")
    try:
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise BibaddiffError(f"quality.clip_model: cannot load a CLIP model and processor from {path} "
                             f"({str(error).strip().splitlines()[0][:200]})") from None
    return model.to(device).eval(), processor


@torch.no_grad()
def clip_scores(model: Any, processor: Any, images: np.ndarray, prompts: list[str], batch_size: int = 64) -> np.ndarray:
    """Per image, 100 * max(cos(CLIP image embedding, CLIP text embedding of its prompt), 0)."""
    images = _check_images(images, "images")
    if len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
        raise BibaddiffError(f"clip_scores needs one prompt string per image; got {len(prompts)} for {len(images)} images")
    batch_size = check_int(batch_size, "quality.batch_size", 1)
    device = next(model.parameters()).device
    scores = []
    for start in tqdm(range(0, len(images), batch_size), desc="CLIP score", unit="batch", mininterval=2):
        batch = images[start:start + batch_size]
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        inputs = processor(text=prompts[start:start + batch_size], images=list(batch), return_tensors="pt",
                           padding=True, truncation=True)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        image_embeds = _embedding(model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_embeds = _embedding(model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs.get("attention_mask")))
        cosine = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        scores.append((100 * cosine.clamp(min=0)).cpu().numpy())
    return np.concatenate(scores).astype(np.float64)


def _embedding(output: Any) -> torch.Tensor:
    # transformers 5 may return a model output whose pooled projection is the embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def bootstrap_mean(values: np.ndarray, bootstrap_samples: int = 100, seed: int = 0) -> dict[str, Any]:
    """The mean of per-image values, with a bootstrap 95% percentile interval (``bootstrap_samples`` of 0: none)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
        raise BibaddiffError(f"values must be a non-empty 1-d array of finite numbers; got shape {values.shape}")
    bootstrap_samples = check_int(bootstrap_samples, "quality.bootstrap_samples", 0)
    low = high = None
    if bootstrap_samples:
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, len(values), (bootstrap_samples, len(values)))].mean(axis=1)
        low, high = _percentiles(means)
    return {"value": float(values.mean()), "low": low, "high": high,
            "interval": f"bootstrap {CONFIDENCE:.0%} over images ({bootstrap_samples})" if low is not None else ""}


# Metric names: the judge-feature rows say so, so that nobody compares them with published (Inception) FIDs.
FEATURE_METRICS = {"judge": ("fid_judge", "kid_judge"), "inception": ("fid", "kid")}


def quality_features(images: np.ndarray, judge: torch.nn.Module, inception: torch.nn.Module | None = None,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
    """The features each distance is computed in: ``judge`` always, ``inception`` when a network is given."""
    features = {"judge": judge_features(judge, images, batch_size)}
    if inception is not None:
        features["inception"] = inception_features(inception, images, batch_size)
    return features


def distance_rows(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], *, bootstrap_samples: int,
                  kid_subsets: int, kid_subset_size: int, seed: int) -> list[dict[str, Any]]:
    """FID and KID rows (metric, value, low, high, interval; KID's: kid_sd_over_subsets instead of low and high) for
    every feature space both sides have."""
    unknown = sorted(set(generated) - set(FEATURE_METRICS))
    if unknown:
        raise BibaddiffError(f"unknown feature space(s) {', '.join(unknown)}; known: {', '.join(FEATURE_METRICS)}")
    missing = sorted(set(generated) - set(real))
    if missing:
        raise BibaddiffError(f"the real images have no {', '.join(missing)} features; recompute the reference features")
    rows = []
    for space in (name for name in FEATURE_METRICS if name in generated):
        fid_name, kid_name = FEATURE_METRICS[space]
        fid = fid_with_interval(real[space], generated[space], bootstrap_samples, seed)
        kid = kid_over_subsets(real[space], generated[space], kid_subsets, kid_subset_size, seed)
        rows += [{"metric": fid_name, **fid}, {"metric": kid_name, **kid}]
    return rows


def reference_features(real_dir: str | Path, judge_dir: str | Path, batch_size: int, device: str = "cpu",
                       inception_weights: str | Path | None = None) -> dict[str, np.ndarray]:
    """Features of the real (clean training) images that every model's generations are compared with: the content
    judge's, and Inception-v3's when its weights are given."""
    from bibaddiff.data import read_dataset
    from bibaddiff.judges import load_judge
    from bibaddiff.utils import select_device

    judge, _ = load_judge(judge_dir, device)
    inception = load_inception(inception_weights, select_device(device)) if inception_weights else None
    real = read_dataset(real_dir)
    features = quality_features(real.images, judge, inception, batch_size)
    print(f"features of {len(real)} real images: " + ", ".join(f"{k} {v.shape[1]}-d" for k, v in features.items()))
    return features


def model_quality(generated_dir: str | Path, reference_file: str | Path, judge_dir: str | Path, settings: dict[str, Any],
                  device: str = "cpu", inception_weights: str | Path | None = None,
                  model_dir: str | Path | None = None) -> dict[str, Any]:
    """FID and KID (and the CLIP score with ``settings["clip_model"]``, prompts from the model in ``model_dir``) of
    one model's all-class generations against the reference features: ``n`` and the metric ``rows``.

    ``settings``: ``batch_size``, ``bootstrap_samples``, ``kid_subsets``, ``kid_subset_size``, ``seed``,
    ``clip_model`` (the quality section of the config)."""
    from bibaddiff.data import read_dataset
    from bibaddiff.diffusion.base import MODEL_INFO_FILE
    from bibaddiff.judges import load_judge
    from bibaddiff.utils import read_json, select_device

    torch_device = select_device(device)
    generated = read_dataset(generated_dir)
    judge, _ = load_judge(judge_dir, device)
    inception = load_inception(inception_weights, torch_device) if inception_weights else None
    features = quality_features(generated.images, judge, inception, settings["batch_size"])
    with np.load(reference_file) as reference:
        real = {space: reference[space] for space in reference.files}
    rows = distance_rows(real, features, bootstrap_samples=settings["bootstrap_samples"],
                         kid_subsets=settings["kid_subsets"], kid_subset_size=settings["kid_subset_size"],
                         seed=settings["seed"])
    if settings["clip_model"]:
        prompts = read_json(Path(model_dir) / MODEL_INFO_FILE)["class_prompts"]
        clip, processor = load_clip(settings["clip_model"], torch_device)
        scores = clip_scores(clip, processor, generated.images, [prompts[label] for label in generated.labels],
                             settings["batch_size"])
        rows.append({"metric": "clip_score", **bootstrap_mean(scores, settings["bootstrap_samples"], settings["seed"])})
    for row in rows:
        print(f"{row['metric']}: {row['value']:.4g} [{row['low']}, {row['high']}] ({row['interval']})")
    return {"n": len(generated), "rows": rows}
