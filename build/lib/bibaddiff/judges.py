"""Judges of generated images, trained on real images only.

The content classifier predicts the true class and is trained with triggers stamped on part of its images
(labels unchanged), so that it judges content and ignores the trigger. The trigger detector is a binary
classifier of "carries this trigger". Both are scored on held-out real images, clean and stamped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from bibaddiff.checks import check_int
from bibaddiff.data import ImageDataset
from bibaddiff.images import inference_batch_size, to_model_space
from bibaddiff.errors import BibaddiffError
from bibaddiff.metrics import accuracy
from bibaddiff.triggers import Trigger
from bibaddiff.utils import read_json, select_device, write_json

ARCHITECTURES = ("small_cnn", "resnet18", "resnet50")
JUDGE_INFO_FILE = "judge.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class JudgeSettings:
    architecture: str = "small_cnn"
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 2e-3
    stamp_fraction: float = 0.5
    pretrained_weights: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "JudgeSettings":
        settings = cls(**{k: v for k, v in config.items() if k in cls.__dataclass_fields__})
        if settings.architecture not in ARCHITECTURES:
            raise BibaddiffError(f"judges.architecture must be one of {', '.join(ARCHITECTURES)}; got {settings.architecture!r}")
        if settings.epochs < 1 or settings.batch_size < 1:
            raise BibaddiffError("judges.epochs and judges.batch_size must be at least 1")
        if not 0.0 < settings.stamp_fraction < 1.0:
            raise BibaddiffError(f"judges.stamp_fraction must lie in (0, 1); got {settings.stamp_fraction}")
        return settings


class SmallCNN(nn.Module):
    """Three convolutions and a linear head; enough for digits and CIFAR-sized images."""

    def __init__(self, channels: int, num_outputs: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(16 * width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_judge(architecture: str, channels: int, num_outputs: int, pretrained_weights: str | None = None) -> nn.Module:
    if architecture == "small_cnn":
        if pretrained_weights:
            raise BibaddiffError("judges.pretrained_weights is only used with resnet18 or resnet50")
        return SmallCNN(channels, num_outputs)
    if architecture not in ARCHITECTURES:
        raise BibaddiffError(f"judges.architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}")
    import torchvision

    model = getattr(torchvision.models, architecture)(weights=None)
    if pretrained_weights:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise BibaddiffError(f"judges.pretrained_weights: {path} not found")
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    if channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    return model


def check_labelled_images(name: str, images: np.ndarray, labels: np.ndarray,
                          num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 1 or 3) and N integer labels in [0, num_classes) (non-negative when num_classes is
    None), or one line naming the set."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise BibaddiffError(f"{name} images must be uint8 of shape (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise BibaddiffError(f"{name} images are empty")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise BibaddiffError(f"{name} labels must be integers of shape ({len(images)},); got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise BibaddiffError(f"{name} labels must lie in [0, {num_classes or 'inf'}); got {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


def torchvision_resnet_type() -> type:
    from torchvision.models import ResNet

    return ResNet


def classifier_shape(model: nn.Module) -> tuple[int, int]:
    """(input channels, output classes) of a judge-architecture classifier: its first convolution's and last linear
    layer's."""
    layers = list(model.modules())
    first_conv = next(layer for layer in layers if isinstance(layer, nn.Conv2d))
    last_linear = next(layer for layer in reversed(layers) if isinstance(layer, nn.Linear))
    return first_conv.in_channels, last_linear.out_features


def penultimate_layers(model: nn.Module) -> nn.Module:
    """The judge without its last linear layer (the classification head), mapping images in model space to their
    penultimate features (N, D). It shares the judge's weights and leaves the judge itself whole: a ResNet's layers
    up to its pooling, then a flatten, as its own forward runs them."""
    if isinstance(model, SmallCNN):
        return model.features
    if isinstance(model, torchvision_resnet_type()):
        return nn.Sequential(*[child for name, child in model.named_children() if name != "fc"], nn.Flatten(1))
    raise BibaddiffError(f"cannot take penultimate features of a {type(model).__name__}; judges are "
                         f"{', '.join(ARCHITECTURES)}")


def train_judge(images: np.ndarray, labels: np.ndarray, num_outputs: int, settings: JudgeSettings, seed: int,
                augment: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
                device: str = "auto", desc: str = "judge",
                on_epoch_end: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train a classifier on uint8 images; ``augment(images, labels, rng)`` may rewrite each batch, and
    ``on_epoch_end(model)`` is called after every epoch (it must draw no random number, so that the training that
    follows does not depend on it; the model is put back in training mode after it)."""
    check_int(num_outputs, "num_outputs (classes)", 2)
    if not isinstance(settings, JudgeSettings):
        raise BibaddiffError(f"settings must be a JudgeSettings; got {type(settings).__name__}")
    images, labels = check_labelled_images("training", images, labels, num_outputs)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch_device = select_device(device)
    model = build_judge(settings.architecture, images.shape[-1], num_outputs, settings.pretrained_weights).to(torch_device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    steps_per_epoch = max(1, int(np.ceil(len(images) / settings.batch_size)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=settings.epochs * steps_per_epoch)
    model.train()
    # Counts batches, not epochs: one epoch of a 256-px set takes tens of minutes on a CPU.
    progress = tqdm(total=settings.epochs * steps_per_epoch, desc=desc, unit="step")
    for epoch in range(settings.epochs):
        progress.set_postfix(epoch=f"{epoch + 1}/{settings.epochs}")
        order = rng.permutation(len(images))
        for start in range(0, len(images), settings.batch_size):
            index = order[start:start + settings.batch_size]
            batch, batch_labels = images[index], labels[index]
            if augment is not None:
                batch, batch_labels = augment(batch, batch_labels, rng)
            logits = model(to_model_space(batch).to(torch_device))
            loss = F.cross_entropy(logits, torch.as_tensor(batch_labels, device=torch_device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update()
        if on_epoch_end is not None:
            on_epoch_end(model)
            model.train()
    progress.close()
    return model.eval()


def logits_in_batches(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> Iterator[torch.Tensor]:
    """The model's logits for uint8 images, one batch at a time (batches capped by pixels), in evaluation mode; the
    caller runs it under ``torch.no_grad``."""
    device = next(model.parameters()).device
    model.eval()
    batch_size = inference_batch_size(images, batch_size)
    for i in range(0, len(images), batch_size):
        yield model(to_model_space(images[i:i + batch_size]).to(device))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted class of each uint8 image."""
    predictions = [logits.argmax(1).cpu().numpy() for logits in logits_in_batches(model, images, batch_size)]
    return np.concatenate(predictions) if predictions else np.zeros(0, np.int64)


@torch.no_grad()
def trigger_scores(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """A trigger detector's logit margin (trigger minus no trigger) per uint8 image: > 0 is its own decision, and a
    calibrated threshold moves along it (probabilities saturate at 1.0 in float32, margins do not)."""
    margins = []
    for logits in logits_in_batches(model, images, batch_size):
        logits = logits.float()
        if logits.shape[1] != 2:
            raise BibaddiffError(f"trigger_scores needs a two-output trigger detector; got {logits.shape[1]} outputs")
        margins.append((logits[:, 1] - logits[:, 0]).cpu().numpy())
    return np.concatenate(margins).astype(np.float64) if margins else np.zeros(0)


def stamp_some(triggers: list[Trigger], fraction: float) -> Callable:
    """Augmentation for the content classifier: a random trigger on a random ``fraction`` of the batch."""
    def augment(batch: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        batch = batch.copy()
        chosen = rng.random(len(batch)) < fraction
        which = rng.integers(0, len(triggers), len(batch))
        for k, trigger in enumerate(triggers):
            rows = np.flatnonzero(chosen & (which == k))
            if len(rows):
                batch[rows] = trigger.apply(batch[rows])
        return batch, labels
    return augment


def stamp_fraction_of_batch(trigger: Trigger, fraction: float) -> Callable:
    """Augmentation for the trigger detector: stamp a random ``fraction`` of the batch and label it 1.

    The trigger is stamped as ``trigger.apply_for_detector`` draws it: a blend at a strength drawn per image from
    its ``detector_alpha_range`` (upstream trains its blend detector on a ~ U(0.05, 0.25)), so that faded generated
    triggers are still caught; every other kind exactly as ``apply`` (WaNet with its one fixed field).
    """
    def augment(batch: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        chosen = rng.random(len(batch)) < fraction
        batch = batch.copy()
        batch[chosen] = trigger.apply_for_detector(batch[chosen], rng)
        return batch, chosen.astype(np.int64)
    return augment


def train_content_judge(train: ImageDataset, heldout: ImageDataset, triggers: list[Trigger], settings: JudgeSettings,
                        seed: int, device: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    model = train_judge(train.images, train.labels, train.num_classes, settings, seed,
                        augment=stamp_some(triggers, settings.stamp_fraction) if triggers else None,
                        device=device, desc="content classifier")
    metrics = {"heldout_clean_accuracy": accuracy(predict(model, heldout.images), heldout.labels)}
    for trigger in triggers:
        stamped = trigger.apply(heldout.images)
        metrics[f"heldout_stamped_accuracy_{trigger.name}"] = accuracy(predict(model, stamped), heldout.labels)
    metrics["heldout_accuracy"] = float(np.mean(list(metrics.values())))
    return model, metrics


def dequantize_real_then_stamp(trigger: Trigger, fraction: float, amplitude: float) -> Callable:
    """Augmentation for a detector trained on real and generated images (``labels``: 1 for a generated image): real
    images get uniform noise of +-``amplitude`` grey levels, so that "off the real images' grey-level grid" is no
    shortcut to "carries the trigger"; then a random ``fraction`` of the batch is stamped and labelled 1."""
    stamp = stamp_fraction_of_batch(trigger, fraction)

    def augment(batch: np.ndarray, is_generated: np.ndarray, rng: np.random.Generator):
        batch = batch.copy()
        real = np.flatnonzero(is_generated == 0)
        if amplitude > 0 and len(real):
            noise = rng.uniform(-amplitude, amplitude, size=batch[real].shape)
            batch[real] = np.clip(np.rint(batch[real] + noise), 0, 255).astype(np.uint8)
        return stamp(batch, is_generated, rng)
    return augment


def train_trigger_judge(train: ImageDataset, heldout: ImageDataset, trigger: Trigger, settings: JudgeSettings,
                        seed: int, device: str = "auto", generated: np.ndarray | None = None,
                        dequantization: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """A binary "carries this trigger" classifier. With ``generated`` (uint8 images of a clean model), those images
    join the real ones as negatives and, stamped, as positives, and real images are dequantised by
    ``dequantization`` grey levels (see :func:`dequantize_real_then_stamp`)."""
    if generated is None or len(generated) == 0:
        augment = stamp_fraction_of_batch(trigger, settings.stamp_fraction)
        images, sources = train.images, np.zeros(len(train), np.int64)
    else:
        generated, _ = check_labelled_images("generated negatives", generated, np.zeros(len(generated), np.int64))
        if generated.shape[1:] != train.images.shape[1:]:
            raise BibaddiffError(f"generated negatives have shape {generated.shape[1:]}, the training images "
                                 f"{train.images.shape[1:]}")
        augment = dequantize_real_then_stamp(trigger, settings.stamp_fraction, dequantization)
        images = np.concatenate([train.images, generated])
        sources = np.r_[np.zeros(len(train), np.int64), np.ones(len(generated), np.int64)]
    model = train_judge(images, sources, 2, settings, seed, augment=augment, device=device,
                        desc=f"trigger detector {trigger.name}")
    clean_ok = accuracy(predict(model, heldout.images), np.zeros(len(heldout), np.int64))
    stamped_ok = accuracy(predict(model, trigger.apply(heldout.images)), np.ones(len(heldout), np.int64))
    metrics = {"heldout_clean_accuracy": clean_ok, "heldout_stamped_accuracy": stamped_ok,
               "heldout_accuracy": (clean_ok + stamped_ok) / 2}
    return model, metrics


def save_judge(directory: str | Path, model: nn.Module, info: dict[str, Any]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, directory / WEIGHTS_FILE)
    write_json(directory / JUDGE_INFO_FILE, info)


def load_judge(directory: str | Path, device: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    directory = Path(directory)
    if not (directory / JUDGE_INFO_FILE).is_file():
        raise BibaddiffError(f"{directory}: not a judge folder ({JUDGE_INFO_FILE} missing)")
    info = read_json(directory / JUDGE_INFO_FILE)
    model = build_judge(info["architecture"], info["channels"], info["num_outputs"])
    model.load_state_dict(load_file(directory / WEIGHTS_FILE))
    return model.to(select_device(device)).eval(), info
