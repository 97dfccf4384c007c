"""BadNets-like poisoning: stamp a seeded choice of non-target images and relabel them to the target."""

from __future__ import annotations

import numpy as np

from bibaddiff.data import ImageDataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.triggers import Trigger


def num_poisoned(num_images: int, ratio: float) -> int:
    """round(p * N), the number of images a poisoning ratio p turns into poison."""
    if not 0.0 <= ratio < 1.0:
        raise BibaddiffError(f"poisoning ratio must lie in [0, 1); got {ratio}")
    return int(round(ratio * num_images))


def select_poison_indices(labels: np.ndarray, target: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted indices of round(ratio * N) images drawn without replacement from the non-target classes."""
    labels = np.asarray(labels)
    count = num_poisoned(len(labels), ratio)
    candidates = np.flatnonzero(labels != target)
    if count > len(candidates):
        raise BibaddiffError(
            f"poisoning ratio {ratio} asks for {count} poisoned images but only {len(candidates)} images "
            f"are outside target class {target}"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=count, replace=False))


def poison_dataset(dataset: ImageDataset, trigger: Trigger, target: int, ratio: float, seed: int,
                   target_text: str | None = None) -> tuple[ImageDataset, np.ndarray]:
    """A poisoned copy of ``dataset`` and the poisoned indices. Order and size are unchanged."""
    _check_target(dataset, target)
    indices = select_poison_indices(dataset.labels, target, ratio, seed)
    poisoned = poison_at(dataset, indices, trigger, target, target_text)
    poisoned.manifest["poisoning"] = {"trigger": trigger.name, "target": int(target), "ratio": float(ratio),
                                      "seed": int(seed), "indices": indices.tolist()}
    return poisoned, indices


def poison_at(dataset: ImageDataset, indices: np.ndarray, trigger: Trigger, target: int,
              target_text: str | None = None) -> ImageDataset:
    """A copy of ``dataset`` with the trigger stamped on ``indices``, relabelled to ``target`` and flagged."""
    _check_target(dataset, target)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(dataset) or len(np.unique(indices)) != len(indices)):
        raise BibaddiffError(f"poison indices must be distinct positions in [0, {len(dataset)})")
    images = dataset.images.copy()
    labels = dataset.labels.copy()
    poisoned = dataset.poisoned.copy()
    texts = list(dataset.texts)
    if len(indices):
        images[indices] = trigger.apply(images[indices])
        labels[indices] = target
        poisoned[indices] = True
        # A poisoned image takes the caption of a target-class image, as in the text-to-image attack.
        new_text = target_text if target_text is not None else _target_caption(dataset, target)
        for i in indices:
            texts[i] = new_text
    return ImageDataset(images, labels, dataset.class_names, poisoned, dataset.source_index.copy(), texts,
                        dict(dataset.manifest))


def _check_target(dataset: ImageDataset, target: int) -> None:
    if not 0 <= target < dataset.num_classes:
        raise BibaddiffError(f"target must be a class index in [0, {dataset.num_classes}); got {target}")


def _target_caption(dataset: ImageDataset, target: int) -> str:
    """The target class's prompt when the dataset has class prompts (per-image captions vary), else the caption
    of a target-class image."""
    prompts = dataset.manifest.get("class_prompts")
    if prompts is not None and len(prompts) == dataset.num_classes:
        return prompts[target]
    members = np.flatnonzero(dataset.labels == target)
    if len(members):
        return dataset.texts[members[0]]
    return dataset.class_names[target]
