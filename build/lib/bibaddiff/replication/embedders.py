"""Embedders for replication: a function from uint8 images (N, H, W, C) to float32 rows of unit L2 norm, so that
cosine similarity is a dot product. Pixels, the content judge's features, or a local TorchScript or torchvision
network (SSCD, DINO, ...); nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bibaddiff.checks import check_int
from bibaddiff.errors import BibaddiffError

EMBEDDER_TYPES = ("pixel", "classifier", "torchscript", "torchvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NETWORK_RESOLUTION = 224
# Keys each embedder type accepts; anything else is a typo the user should hear about.
_EMBEDDER_KEYS = {
    "pixel": {"type", "batch_size", "resolution"},
    "classifier": {"type", "batch_size"},
    "torchscript": {"type", "batch_size", "path", "resolution", "mean", "std"},
    "torchvision": {"type", "batch_size", "architecture", "path", "resolution", "mean", "std"},
}

Embedder = Callable[[np.ndarray], np.ndarray]


def build_embedder(spec: dict[str, Any] | None, content_judge_dir: str | Path | None = None,
                   device: str = "auto") -> Embedder:
    """An embedding function ``uint8 (N, H, W, C) -> float32 (N, D)`` with rows of unit L2 norm.

    ``spec["type"]`` (default ``"pixel"``) picks the embedder; see the module's ``_EMBEDDER_KEYS`` for the
    keys each type takes. Nothing is downloaded: network weights come from local files only.
    """
    spec = _checked_spec(spec)
    kind = spec["type"]
    batch_size = check_int(spec.get("batch_size", 1024 if kind == "pixel" else 128), "embedder.batch_size", 1)
    if kind == "pixel":
        resolution = spec.get("resolution")
        resolution = None if resolution is None else check_int(resolution, "embedder.resolution", 1)
        return _batched(lambda batch: _pixel_features(batch, resolution), batch_size, "pixel")
    if kind == "classifier":
        return _batched(_classifier_embedding(content_judge_dir, device), batch_size, "classifier")
    return _batched(_network_embedding(spec, _device(device)), batch_size, kind)


def _checked_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The embedder spec with its type filled in; unknown types and keys fail with their names."""
    if spec is not None and not isinstance(spec, dict):
        raise BibaddiffError(f"embedder spec must be a mapping; got {type(spec).__name__}")
    spec = {"type": "pixel"} if spec is None else dict(spec)
    kind = spec.setdefault("type", "pixel")
    if kind not in EMBEDDER_TYPES:
        raise BibaddiffError(f"embedder.type must be one of {', '.join(EMBEDDER_TYPES)}; got {kind!r}")
    unknown = sorted(set(spec) - _EMBEDDER_KEYS[kind])
    if unknown:
        raise BibaddiffError(f"embedder of type {kind!r} does not take key(s) {', '.join(unknown)}")
    return spec


def _classifier_embedding(content_judge_dir: str | Path | None, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """Per-batch features of the content judge's penultimate layer, for images of the size it was trained on."""
    torch_device = _device(device)
    network, image_size = _classifier_features(content_judge_dir, device)

    def embed_batch(batch: np.ndarray) -> np.ndarray:
        if batch.shape[1:3] != (image_size, image_size):
            raise BibaddiffError(
                f"embedder 'classifier': the content classifier was trained on {image_size}x{image_size} "
                f"images; got {batch.shape[1]}x{batch.shape[2]}"
            )
        return _run_network(network, _to_judge_input(batch), torch_device)

    return embed_batch


def _network_embedding(spec: dict[str, Any], torch_device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """Per-batch features of a local TorchScript or torchvision network, on resized and normalised images."""
    kind = spec["type"]
    resolution = check_int(spec.get("resolution", DEFAULT_NETWORK_RESOLUTION), "embedder.resolution", 1)
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

    return embed_network_batch

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
    from bibaddiff.judges import load_judge, penultimate_layers

    if content_judge_dir is None:
        raise BibaddiffError("embedder type 'classifier' needs content_judge_dir (the trained content classifier)")
    model, info = load_judge(content_judge_dir, device=_device_name(device))
    network = penultimate_layers(model)
    image_size = int(info.get("image_size", 0))
    if image_size < 1:
        raise BibaddiffError(f"{content_judge_dir}: judge.json has no image_size")
    return network.eval(), image_size


def _to_judge_input(images: np.ndarray) -> torch.Tensor:
    from bibaddiff.images import to_model_space

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
