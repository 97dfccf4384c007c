"""BadNets-like poisoning: stamp a seeded choice of non-target images and relabel them to the target."""

from __future__ import annotations

from typing import Any

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
    record = {"trigger": trigger.name, "target": int(target), "ratio": float(ratio), "seed": int(seed)}
    return poison_at(dataset, indices, trigger, target, record, target_text), indices


def poison_at(dataset: ImageDataset, indices: np.ndarray, trigger: Trigger, target: int, record: dict[str, Any],
              target_text: str | None = None) -> ImageDataset:
    """A copy of ``dataset`` with the trigger stamped on ``indices``, relabelled to ``target`` and flagged; its
    manifest's ``poisoning`` is the caller's ``record`` (which holds the poisoning ``seed``) plus the indices.

    A poisoned image takes a target-class caption, as in the text-to-image attack: ``target_text`` when given; with
    per-image captions (a caption file) the caption of a target-class training image drawn with the record's seed
    (which image each got is recorded as ``caption_sources``); else the target class's prompt."""
    _check_target(dataset, target)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(dataset) or len(np.unique(indices)) != len(indices)):
        raise BibaddiffError(f"poison indices must be distinct positions in [0, {len(dataset)})")
    images = dataset.images.copy()
    labels = dataset.labels.copy()
    poisoned = dataset.poisoned.copy()
    texts = list(dataset.texts)
    manifest = dict(dataset.manifest)
    manifest["poisoning"] = {**record, "indices": indices.tolist()}
    if len(indices):
        images[indices] = trigger.apply(images[indices])
        labels[indices] = target
        poisoned[indices] = True
        if target_text is None and dataset.manifest.get("captions"):
            sources = target_caption_sources(dataset, target, len(indices), record["seed"])
            new_texts = [dataset.texts[j] for j in sources]
            manifest["poisoning"].update(caption_seed=int(record["seed"]), caption_sources=sources.tolist())
        else:
            new_texts = [target_text if target_text is not None else _target_caption(dataset, target)] * len(indices)
        for i, text in zip(indices, new_texts):
            texts[i] = text
    return ImageDataset(images, labels, dataset.class_names, poisoned, dataset.source_index.copy(), texts, manifest)


def target_caption_sources(dataset: ImageDataset, target: int, count: int, seed: int) -> np.ndarray:
    """Positions of ``count`` clean target-class images (drawn with replacement, seeded) whose captions poisoned
    images take when the dataset is captioned per image."""
    members = np.flatnonzero((dataset.labels == target) & ~dataset.poisoned)
    if len(members) == 0:
        raise BibaddiffError(f"target class {target} has no clean training image whose caption poisoned images could take")
    return np.random.default_rng([seed, 2]).choice(members, size=count, replace=True)


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


def most_duplicated(groups: list[list[int]], labels: np.ndarray, target: int, top_k: int) -> np.ndarray:
    """Up to ``top_k`` non-target images from the largest near-duplicate ``groups`` (ties: the group with the
    lowest first index), every member of a group before the next group: the training set's most duplicated images."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise BibaddiffError(f"replication.duplicate_poisoning.top_k must be a positive integer; got {top_k!r}")
    labels = np.asarray(labels)
    chosen: list[int] = []
    for group in sorted(groups, key=lambda members: (-len(members), min(members))):
        chosen += [int(i) for i in sorted(group) if labels[i] != target][:top_k - len(chosen)]
        if len(chosen) == top_k:
            break
    return np.asarray(chosen, dtype=np.int64)


def poison_with_duplicates(dataset: ImageDataset, duplicated: np.ndarray, trigger: Trigger, target: int, ratio: float,
                           seed: int, mode: str) -> tuple[ImageDataset, np.ndarray]:
    """Upstream's duplicate poisoning: the random poison set of :func:`poison_dataset` (``mode="random"``), or the
    same set with random picks replaced by the ``duplicated`` images (``mode="duplicates"``), at the same ratio.

    Only picks that are not duplicated images themselves are replaced, so every duplicated image ends up poisoned
    and the count stays round(ratio * N).
    """
    if mode not in ("random", "duplicates"):
        raise BibaddiffError(f"mode must be 'random' or 'duplicates'; got {mode!r}")
    _check_target(dataset, target)
    duplicated = np.unique(np.asarray(duplicated, dtype=np.int64))
    if len(duplicated) and (duplicated.min() < 0 or duplicated.max() >= len(dataset)):
        raise BibaddiffError(f"duplicated images must be positions in [0, {len(dataset)})")
    if np.any(dataset.labels[duplicated] == target):
        raise BibaddiffError(f"duplicated images must lie outside target class {target}")
    indices = select_poison_indices(dataset.labels, target, ratio, seed)
    if len(duplicated) > len(indices):
        raise BibaddiffError(f"ratio {ratio} poisons {len(indices)} images, fewer than the {len(duplicated)} "
                             "duplicated images to put among them; lower replication.duplicate_poisoning.top_k")
    record: dict[str, Any] = {"trigger": trigger.name, "target": int(target), "ratio": float(ratio), "seed": int(seed),
                              "mode": mode, "design": "natural", "duplicated": duplicated.tolist()}
    if mode == "duplicates":
        already = np.isin(indices, duplicated)
        missing = duplicated[~np.isin(duplicated, indices)]
        rng = np.random.default_rng([seed, 1])
        replaced = rng.choice(indices[~already], size=len(missing), replace=False)
        indices = np.sort(np.concatenate([indices[~np.isin(indices, replaced)], missing]))
        record["replaced"] = np.sort(replaced).tolist()
    return poison_at(dataset, indices, trigger, target, record), indices
