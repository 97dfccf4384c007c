"""Data replication: embeddings, exact nearest neighbours, replication scores and duplicate injection.

A generated image "replicates" a training image when the cosine similarity of their embeddings reaches a
threshold tau. tau is calibrated on held-out real images, which the model never saw: only 1% of them reach tau
against their nearest training image, so a replication rate well above 1% means memorisation, not chance
resemblance. Splitting replications by whether the nearest training image is poisoned tests the paper's claim
that poisoned images take part in replication; ``duplicate_images`` and ``poison_duplicated_or_random`` build
the datasets for its second claim, that poisoning duplicated images strengthens the attack.

Embeddings are float32 rows of unit L2 norm, so cosine similarity is a dot product.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bibaddiff.data import ImageDataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import wilson_interval
from bibaddiff.poisoning import num_poisoned, poison_at, select_poison_indices
from bibaddiff.triggers import Trigger

EMBEDDER_TYPES = ("pixel", "classifier", "torchscript", "torchvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NETWORK_RESOLUTION = 224
SIMILARITY_QUANTILES = (5, 25, 50, 75, 95)
# Keys each embedder type accepts; anything else is a typo the user should hear about.
_EMBEDDER_KEYS = {
    "pixel": {"type", "batch_size", "resolution"},
    "classifier": {"type", "batch_size"},
    "torchscript": {"type", "batch_size", "path", "resolution", "mean", "std"},
    "torchvision": {"type", "batch_size", "architecture", "path", "resolution", "mean", "std"},
}
# float32 embeddings normalised in float64 keep norms within ~1e-6 of 1; 1e-3 still catches unnormalised input.
_NORM_TOLERANCE = 1e-3

Embedder = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------ embedders


def build_embedder(spec: dict[str, Any] | None, content_judge_dir: str | Path | None = None,
                   device: str = "auto") -> Embedder:
    """An embedding function ``uint8 (N, H, W, C) -> float32 (N, D)`` with rows of unit L2 norm.

    ``spec["type"]`` (default ``"pixel"``) picks the embedder; see the module's ``_EMBEDDER_KEYS`` for the
    keys each type takes. Nothing is downloaded: network weights come from local files only.
    """
    if spec is not None and not isinstance(spec, dict):
        raise BibaddiffError(f"embedder spec must be a mapping; got {type(spec).__name__}")
    spec = {"type": "pixel"} if spec is None else dict(spec)
    kind = spec.setdefault("type", "pixel")
    if kind not in EMBEDDER_TYPES:
        raise BibaddiffError(f"embedder.type must be one of {', '.join(EMBEDDER_TYPES)}; got {kind!r}")
    unknown = sorted(set(spec) - _EMBEDDER_KEYS[kind])
    if unknown:
        raise BibaddiffError(f"embedder of type {kind!r} does not take key(s) {', '.join(unknown)}")
    batch_size = _positive_int(spec.get("batch_size", 1024 if kind == "pixel" else 128), "embedder.batch_size")

    if kind == "pixel":
        resolution = spec.get("resolution")
        resolution = None if resolution is None else _positive_int(resolution, "embedder.resolution")
        return _batched(lambda batch: _pixel_features(batch, resolution), batch_size, "pixel")

    torch_device = _device(device)
    if kind == "classifier":
        network, image_size = _classifier_features(content_judge_dir, device)

        def embed_batch(batch: np.ndarray) -> np.ndarray:
            if batch.shape[1:3] != (image_size, image_size):
                raise BibaddiffError(
                    f"embedder 'classifier': the content classifier was trained on {image_size}x{image_size} "
                    f"images; got {batch.shape[1]}x{batch.shape[2]}"
                )
            return _run_network(network, _to_judge_input(batch), torch_device)

        return _batched(embed_batch, batch_size, "classifier")

    resolution = _positive_int(spec.get("resolution", DEFAULT_NETWORK_RESOLUTION), "embedder.resolution")
    mean = _channel_stats(spec.get("mean", IMAGENET_MEAN), "embedder.mean")
    std = _channel_stats(spec.get("std", IMAGENET_STD), "embedder.std")
    if np.any(std <= 0):
        raise BibaddiffError(f"embedder.std must be positive; got {spec.get('std')}")
    path = _existing_file(spec.get("path"), "embedder.path")
    if kind == "torchscript":
        try:
            network = torch.jit.load(str(path), map_location=torch_device)
        except (RuntimeError, ValueError) as error:
            raise BibaddiffError(f"embedder.path: {path} is not a TorchScript file ({str(error).splitlines()[0]})") from None
    else:
        network = _torchvision_features(spec.get("architecture"), path).to(torch_device)
    network.eval()

    def embed_network_batch(batch: np.ndarray) -> np.ndarray:
        return _run_network(network, _to_network_input(batch, resolution, mean, std), torch_device)

    return _batched(embed_network_batch, batch_size, kind)


def _batched(embed_batch: Callable[[np.ndarray], np.ndarray], batch_size: int, name: str) -> Embedder:
    """Wrap a per-batch feature function into a validated, batched, normalising embedder."""

    def embed(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise BibaddiffError(
                f"embedder {name!r}: images must be uint8 of shape (N, H, W, 1 or 3); got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            # Run one blank image so that the empty result still has the right width D.
            width = embed_batch(np.zeros((1, *images.shape[1:]), np.uint8)).shape[1]
            return np.zeros((0, width), np.float32)
        parts = [l2_normalise(embed_batch(images[start:start + batch_size]))
                 for start in tqdm(range(0, len(images), batch_size), desc=f"embedding ({name})", unit="batch",
                                   disable=len(images) <= batch_size, mininterval=2)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    return embed


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32.

    A zero row (e.g. a constant image after mean-centring) has no direction; it becomes the constant unit
    vector, so that all such images are identical to each other, and, for mean-centred pixel embeddings,
    orthogonal to every image that has content.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] == 0:
        raise BibaddiffError(f"features must have shape (N, D) with D >= 1; got {features.shape}")
    if not np.all(np.isfinite(features)):
        raise BibaddiffError("features contain NaN or infinite values")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    blank = norms[:, 0] <= 1e-12
    out = features / np.where(blank[:, None], 1.0, norms)
    out[blank] = 1.0 / np.sqrt(features.shape[1])
    return out.astype(np.float32)


def _pixel_features(images: np.ndarray, resolution: int | None) -> np.ndarray:
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double()
    if resolution is not None and pixels.shape[-2:] != (resolution, resolution):
        # Area averaging keeps every pixel's contribution when shrinking; bilinear is smooth when enlarging.
        shrinking = resolution < min(pixels.shape[-2:])
        pixels = F.interpolate(pixels, size=(resolution, resolution), mode="area" if shrinking else "bilinear",
                               **({} if shrinking else {"align_corners": False}))
    flat = pixels.reshape(len(pixels), -1)
    # Subtracting each image's own mean makes a global brightness shift irrelevant to the similarity.
    return (flat - flat.mean(dim=1, keepdim=True)).numpy()


def _classifier_features(content_judge_dir: str | Path | None, device: str) -> tuple[nn.Module, int]:
    """The content classifier without its last linear layer, and the image size it was trained on."""
    from bibaddiff.judges import SmallCNN, load_judge

    if content_judge_dir is None:
        raise BibaddiffError("embedder type 'classifier' needs content_judge_dir (the trained content classifier)")
    model, info = load_judge(content_judge_dir, device=_device_name(device))
    if isinstance(model, SmallCNN):
        network = model.features
    elif hasattr(model, "fc"):
        model.fc = nn.Identity()
        network = model
    else:
        raise BibaddiffError(f"{content_judge_dir}: cannot take penultimate features of a {type(model).__name__}")
    image_size = int(info.get("image_size", 0))
    if image_size < 1:
        raise BibaddiffError(f"{content_judge_dir}: judge.json has no image_size")
    return network.eval(), image_size


def _to_judge_input(images: np.ndarray) -> torch.Tensor:
    from bibaddiff.diffusion.sampling import to_model_space

    return to_model_space(images)


def _torchvision_features(architecture: Any, path: Path) -> nn.Module:
    """A torchvision model with weights from ``path`` and its last linear layer (the head) replaced by identity."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if architecture not in available:
        raise BibaddiffError(f"embedder.architecture must be a torchvision classification model "
                             f"(e.g. resnet50, vit_b_16); got {architecture!r}")
    model = torchvision.models.get_model(architecture, weights=None)
    head_name = _last_linear_name(model)
    if head_name is None:
        raise BibaddiffError(f"embedder.architecture: {architecture} has no linear classification head to remove")
    state = _read_state_dict(path)
    # The head is discarded anyway, so its weights (any number of classes, or none at all) are not loaded.
    state = {key: value for key, value in state.items() if not key.startswith(head_name + ".")}
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith(head_name + ".")]
    if missing or result.unexpected_keys:
        raise BibaddiffError(
            f"embedder.path: {path} does not fit {architecture} (missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]})"
        )
    parent_name, _, attribute = head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, nn.Identity())
    return model


def _last_linear_name(model: nn.Module) -> str | None:
    # torchvision registers the classification head last (fc, heads.head, head, classifier.N).
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise BibaddiffError(f"embedder.path: cannot read weights from {path} ({str(error).splitlines()[0]})") from None
    # Training scripts often wrap the weights; accept the two common wrappers.
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise BibaddiffError(f"embedder.path: {path} does not hold a state dict")
    return state


def _to_network_input(images: np.ndarray, resolution: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # ImageNet networks expect three channels
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def _run_network(network: Callable, x: torch.Tensor, device: torch.device) -> np.ndarray:
    out = network(x.to(device))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(len(x), -1).float().cpu().numpy()


def _channel_stats(value: Any, key: str) -> np.ndarray:
    try:
        stats = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise BibaddiffError(f"{key} must be a list of 1 or 3 numbers; got {value!r}") from None
    if len(stats) not in (1, 3) or not np.all(np.isfinite(stats)):
        raise BibaddiffError(f"{key} must be a list of 1 or 3 numbers; got {value!r}")
    return np.broadcast_to(stats, (3,)).copy()


def _existing_file(value: Any, key: str) -> Path:
    if not value:
        raise BibaddiffError(f"{key} must name a local weights file; got {value!r}")
    path = Path(value)
    if not path.is_file():
        raise BibaddiffError(f"{key}: {path} not found (weights are never downloaded)")
    return path


def _device_name(device: str) -> str:
    if device not in {"auto", "cpu", "cuda"}:
        raise BibaddiffError(f"device must be one of auto, cpu, cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BibaddiffError("device 'cuda' was requested but no CUDA device is available")
    return device


def _device(device: str) -> torch.device:
    from bibaddiff.utils import select_device

    return select_device(_device_name(device))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BibaddiffError(f"{key} must be a positive integer; got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- nearest neighbours


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int = 1,
                       batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours: similarities and indices, both (Nq, k), most similar first.

    Equal similarities are ordered by the lower reference index. Queries go in batches of ``batch_size``, so
    memory is ``batch_size * len(references)`` floats.
    """
    queries = _check_embeddings(queries, "queries")
    references = _check_embeddings(references, "references")
    if queries.shape[1] != references.shape[1]:
        raise BibaddiffError(f"queries have {queries.shape[1]} dimensions but references have {references.shape[1]}")
    k = _positive_int(k, "k")
    if k > len(references):
        raise BibaddiffError(f"k={k} exceeds the number of references ({len(references)})")
    batch_size = _positive_int(batch_size, "batch_size")
    similarities = np.empty((len(queries), k), np.float32)
    indices = np.empty((len(queries), k), np.int64)
    for start in tqdm(range(0, len(queries), batch_size), desc="nearest neighbours", unit="batch",
                      disable=len(queries) <= batch_size, mininterval=2):
        scores = queries[start:start + batch_size] @ references.T
        top = _top_k_lowest_index_first(scores, k)
        indices[start:start + len(scores)] = top
        similarities[start:start + len(scores)] = np.take_along_axis(scores, top, axis=1)
    # Rounding can push a self-similarity a hair above 1; cosine lies in [-1, 1].
    np.clip(similarities, -1.0, 1.0, out=similarities)
    return similarities, indices


def _top_k_lowest_index_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, descending, ties by lower index.

    argpartition finds the k-th largest value in linear time; everything at least that large is a candidate.
    Candidates come out of ``nonzero`` in ascending index order, so a stable sort by score keeps ties in
    index order. Rows with more than k candidates (ties at the k-th value) are rare and sorted one by one.
    """
    n = scores.shape[1]
    if k == 1:
        return np.argmax(scores, axis=1)[:, None]  # argmax returns the first (lowest) index among equal maxima
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth_largest = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    candidate = scores >= kth_largest
    counts = candidate.sum(axis=1)
    top = np.empty((len(scores), k), np.int64)
    exact = np.flatnonzero(counts == k)
    if len(exact):
        columns = np.nonzero(candidate[exact])[1].reshape(len(exact), k)
        order = np.argsort(-np.take_along_axis(scores[exact], columns, axis=1), axis=1, kind="stable")
        top[exact] = np.take_along_axis(columns, order, axis=1)
    for row in np.flatnonzero(counts != k):
        columns = np.flatnonzero(candidate[row])
        top[row] = columns[np.argsort(-scores[row, columns], kind="stable")[:k]]
    return top


def _check_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] == 0 or not np.issubdtype(embeddings.dtype, np.floating):
        raise BibaddiffError(f"{name} must be a float array (N, D) of embeddings; got {embeddings.dtype} {embeddings.shape}")
    embeddings = embeddings.astype(np.float32, copy=False)
    if not np.all(np.isfinite(embeddings)):
        raise BibaddiffError(f"{name} contain NaN or infinite values")
    if len(embeddings):
        deviation = np.abs(np.linalg.norm(embeddings, axis=1) - 1.0)
        worst = int(np.argmax(deviation))
        if deviation[worst] > _NORM_TOLERANCE:
            raise BibaddiffError(
                f"{name} must have unit L2 norm (use l2_normalise); row {worst} has norm "
                f"{np.linalg.norm(embeddings[worst]):.6g}"
            )
    return embeddings


# ------------------------------------------------------------------------------------ replication scores


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

    def rate(successes: int, total: int) -> dict[str, Any]:
        if total == 0:
            return {"rate": None, "ci95": None}
        low, high = wilson_interval(successes, total)
        return {"rate": successes / total, "ci95": [low, high]}

    overall = rate(n_replicated, n_generated)
    per_poisoned_image = rate(distinct_poisoned, n_train_poisoned)
    per_clean_image = rate(distinct_clean, n_train_clean)
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


def near_duplicate_groups(embeddings: np.ndarray, threshold: float, batch_size: int = 512) -> list[list[int]]:
    """Groups (size >= 2) of images linked by chains of pairwise similarity >= ``threshold``.

    Exact: every pair is compared, in batches of rows. Components are merged batch by batch with scipy's
    connected components over the previous components (each node linked to its component's lowest index) plus
    the batch's edges, so memory stays bounded by one batch. A threshold of 1 is read as 1 - 1e-6, so that
    exact duplicates count despite float rounding. Each group is sorted; groups are ordered by first index.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    embeddings = _check_embeddings(embeddings, "embeddings")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not -1.0 < threshold <= 1.0:
        raise BibaddiffError(f"threshold must lie in (-1, 1]; got {threshold!r}")
    batch_size = _positive_int(batch_size, "batch_size")
    n = len(embeddings)
    # Clipping to 1 matters for threshold 1.0 (exact duplicates) whose self-products round just below or above.
    threshold_f32 = np.float32(min(float(threshold), 1.0 - 1e-6))
    representative = np.arange(n)  # lowest index of each image's component so far
    for start in tqdm(range(0, n, batch_size), desc="near duplicates", unit="batch",
                      disable=n <= batch_size, mininterval=2):
        stop = min(start + batch_size, n)
        # Only pairs (i, j) with j > i: compare the batch against itself and everything after it.
        scores = embeddings[start:stop] @ embeddings[start:].T
        rows, cols = np.nonzero(scores >= threshold_f32)
        keep = cols > rows
        if not keep.any():
            continue
        sources = np.concatenate([np.arange(n), rows[keep] + start])
        targets = np.concatenate([representative, cols[keep] + start])
        graph = coo_matrix((np.ones(len(sources), np.int8), (sources, targets)), shape=(n, n))
        num_components, labels = connected_components(graph, directed=False)
        lowest = np.full(num_components, n, np.int64)
        np.minimum.at(lowest, labels, np.arange(n))
        representative = lowest[labels]
    order = np.argsort(representative, kind="stable")
    boundaries = np.flatnonzero(np.diff(representative[order])) + 1
    groups = [members.tolist() for members in np.split(order, boundaries) if len(members) >= 2]
    return sorted(groups, key=lambda members: members[0])


# ------------------------------------------------------------------------------ duplicate poisoning


def duplicate_images(dataset: ImageDataset, k: int, m: int, seed: int,
                     exclude_label: int | None) -> tuple[ImageDataset, np.ndarray]:
    """Repeat k seeded images from classes other than ``exclude_label`` so each appears m times in total.

    The m - 1 extra copies of each chosen image are appended at the end, group after group; ``source_index``
    is copied with them, so every copy is traceable. Returns the new dataset and the duplicate groups, an int
    array (k, m): row i holds the positions of all copies of the i-th chosen image, the original first.
    ``exclude_label=None`` allows every class.
    """
    if not isinstance(dataset, ImageDataset):
        raise BibaddiffError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise BibaddiffError(f"k (number of duplicated images) must be a non-negative integer; got {k!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise BibaddiffError(f"m (copies of each duplicated image) must be an integer >= 2; got {m!r}")
    if exclude_label is not None and not _is_index(exclude_label, dataset.num_classes):
        raise BibaddiffError(f"exclude_label must be a class index in [0, {dataset.num_classes}) or None; got {exclude_label!r}")
    _check_seed(seed)
    candidates = np.arange(len(dataset)) if exclude_label is None else np.flatnonzero(dataset.labels != exclude_label)
    if k > len(candidates):
        raise BibaddiffError(
            f"cannot duplicate k={k} images ({k}x{m}={k * m} copies): only {len(candidates)} images lie outside "
            f"class {exclude_label}"
        )
    n = len(dataset)
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=k, replace=False)).astype(np.int64)
    extra = np.repeat(chosen, m - 1)
    duplicated = dataset.subset(np.concatenate([np.arange(n), extra]))
    groups = np.column_stack([chosen, n + np.arange(k * (m - 1)).reshape(k, m - 1)]).astype(np.int64)
    duplicated.manifest["duplication"] = {
        "k": int(k), "m": int(m), "seed": int(seed),
        "exclude_label": None if exclude_label is None else int(exclude_label),
        "positions": chosen.tolist(), "source_index": dataset.source_index[chosen].tolist(),
    }
    return duplicated, groups


def poison_duplicated_or_random(dataset: ImageDataset, duplicated_positions: np.ndarray | Sequence[Sequence[int]],
                                trigger: Trigger, target: int, ratio: float, mode: str,
                                seed: int) -> tuple[ImageDataset, np.ndarray]:
    """Poison round(ratio * N) images, either whole duplicate groups or uniformly drawn ones.

    ``mode="duplicates"``: round(ratio * N) // m seeded duplicate groups are poisoned entirely (every copy); if
    the count is not a multiple of m, the remainder comes from non-target images that belong to no duplicate
    group, so unchosen groups stay entirely clean. ``mode="random"``: the same count drawn uniformly from all
    non-target images (copies included), exactly as ``poison_dataset`` draws. Returns the poisoned dataset and
    the sorted poisoned positions.
    """
    if not isinstance(dataset, ImageDataset):
        raise BibaddiffError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
    if mode not in ("random", "duplicates"):
        raise BibaddiffError(f"mode must be 'random' or 'duplicates'; got {mode!r}")
    if not _is_index(target, dataset.num_classes):
        raise BibaddiffError(f"target must be a class index in [0, {dataset.num_classes}); got {target!r}")
    _check_seed(seed)
    groups = _check_groups(duplicated_positions, dataset)
    count = num_poisoned(len(dataset), ratio)
    # The same keys as poison_dataset writes, plus how the positions were chosen.
    record: dict[str, Any] = {"trigger": trigger.name, "target": int(target), "ratio": float(ratio),
                              "seed": int(seed), "mode": mode}
    if mode == "random":
        positions = select_poison_indices(dataset.labels, target, ratio, seed)
    else:
        if len(groups) == 0:
            raise BibaddiffError("mode 'duplicates' needs duplicate groups; duplicated_positions is empty")
        in_target = np.flatnonzero(np.any(dataset.labels[groups] == target, axis=1))
        if len(in_target):
            raise BibaddiffError(f"duplicated images must lie outside target class {target}; "
                                 f"group at position {int(groups[in_target[0], 0])} is in it")
        m = groups.shape[1]
        whole_groups = count // m
        if whole_groups > len(groups):
            raise BibaddiffError(
                f"ratio {ratio} asks for {count} poisoned images = {whole_groups} whole groups of {m} copies, "
                f"but only {len(groups)} duplicated images exist"
            )
        rng = np.random.default_rng(seed)
        chosen_groups = np.sort(rng.choice(len(groups), size=whole_groups, replace=False))
        remainder = count - whole_groups * m
        in_any_group = np.zeros(len(dataset), bool)
        in_any_group[groups.reshape(-1)] = True
        fill_candidates = np.flatnonzero((dataset.labels != target) & ~in_any_group)
        if remainder > len(fill_candidates):
            raise BibaddiffError(
                f"ratio {ratio} asks for {remainder} poisoned images beyond {whole_groups} whole groups, but only "
                f"{len(fill_candidates)} non-target images lie outside the duplicate groups"
            )
        fill = rng.choice(fill_candidates, size=remainder, replace=False)
        positions = np.sort(np.concatenate([groups[chosen_groups].reshape(-1), fill]).astype(np.int64))
        record.update(duplicate_groups_poisoned=int(whole_groups), random_fill=int(remainder),
                      poisoned_group_positions=groups[chosen_groups, 0].tolist())
    return poison_at(dataset, positions, trigger, target, record), positions


def _is_index(value: Any, size: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and 0 <= value < size


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BibaddiffError(f"seed must be a non-negative integer; got {seed!r}")


def _check_groups(duplicated_positions: Any, dataset: ImageDataset) -> np.ndarray:
    try:
        groups = np.asarray(duplicated_positions, dtype=np.int64)
    except (TypeError, ValueError):
        raise BibaddiffError("duplicated_positions must be a (k, m) integer array of copy positions") from None
    if groups.size == 0:
        return groups.reshape(0, 0)
    if groups.ndim != 2 or groups.shape[1] < 2:
        raise BibaddiffError(f"duplicated_positions must have shape (k, m) with m >= 2; got {groups.shape}")
    if groups.min() < 0 or groups.max() >= len(dataset):
        raise BibaddiffError(f"duplicated_positions must lie in [0, {len(dataset)}); got {groups.min()}..{groups.max()}")
    if len(np.unique(groups)) != groups.size:
        raise BibaddiffError("duplicated_positions must not repeat a position")
    sources = dataset.source_index[groups]
    if np.any(sources != sources[:, :1]):
        row = int(np.flatnonzero(np.any(sources != sources[:, :1], axis=1))[0])
        raise BibaddiffError(f"duplicated_positions row {row} mixes images of different source_index {sources[row].tolist()}")
    return groups
