"""BadNets-like poisoning: stamp a seeded choice of non-target images and relabel them to the target; and the two
duplicate-poisoning designs of the replication experiment (upstream's natural duplicates among the random poison
set, or synthetic groups of repeated images poisoned whole)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bibaddiff.checks import check_class_index, check_int
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
    check_int(top_k, "replication.duplicate_poisoning.top_k", 1)
    labels = np.asarray(labels)
    chosen: list[int] = []
    for group in sorted(groups, key=lambda members: (-len(members), min(members))):
        chosen += [int(i) for i in sorted(group) if labels[i] != target][:top_k - len(chosen)]
        if len(chosen) == top_k:
            break
    return np.asarray(chosen, dtype=np.int64)


def poison_with_duplicates(dataset: ImageDataset, duplicated: np.ndarray, trigger: Trigger, target: int, ratio: float,
                           seed: int, mode: str, design: str = "natural") -> tuple[ImageDataset, np.ndarray]:
    """Upstream's duplicate poisoning: the random poison set of :func:`poison_dataset` (``mode="random"``), or the
    same set with random picks replaced by the ``duplicated`` images (``mode="duplicates"``), at the same ratio.

    Only picks that are not duplicated images themselves are replaced, so every duplicated image ends up poisoned
    and the count stays round(ratio * N). ``design`` names how the duplicated images were found, for the record.
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
                              "mode": mode, "design": design, "duplicated": duplicated.tolist()}
    if mode == "duplicates":
        already = np.isin(indices, duplicated)
        missing = duplicated[~np.isin(duplicated, indices)]
        rng = np.random.default_rng([seed, 1])
        replaced = rng.choice(indices[~already], size=len(missing), replace=False)
        indices = np.sort(np.concatenate([indices[~np.isin(indices, replaced)], missing]))
        record["replaced"] = np.sort(replaced).tolist()
    return poison_at(dataset, indices, trigger, target, record), indices


# ---------------------------------------------------- synthetic duplicates (replication.duplicate_poisoning.design: synthetic)


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
    check_int(k, "k (number of duplicated images)", 0)
    check_int(m, "m (copies of each duplicated image)", 2)
    if exclude_label is not None:
        check_class_index(exclude_label, "exclude_label (or None)", dataset.num_classes)
    check_int(seed, "seed", 0)
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
    check_class_index(target, "target", dataset.num_classes)
    check_int(seed, "seed", 0)
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


def natural_duplicates(train: ImageDataset, heldout: ImageDataset, target: int, top_k: int, embedder: dict[str, Any],
                       judge: str | None, tau: float | None, tau_quantile: float, device: str = "cpu"
                       ) -> tuple[np.ndarray, float]:
    """The ``top_k`` most duplicated non-target training images (:func:`most_duplicated`), found with the
    replication embedder and threshold (``tau``, or calibrated on the held-out images at ``tau_quantile``); and tau."""
    from bibaddiff.replication import build_embedder, calibrate_tau, near_duplicate_groups

    embed = build_embedder(embedder, judge, device)
    train_embeddings = embed(train.images)
    tau = calibrate_tau(embed(heldout.images), train_embeddings, tau_quantile) if tau is None else float(tau)
    duplicated = most_duplicated(near_duplicate_groups(train_embeddings, tau), train.labels, target, top_k)
    if len(duplicated) == 0:
        raise BibaddiffError(f"no non-target near-duplicate training images at replication tau {tau:.4f}; lower "
                             "replication.tau or use replication.duplicate_poisoning.design: synthetic")
    return duplicated, tau


def duplicate_poisoning(clean: ImageDataset, heldout: ImageDataset, trigger: Trigger, target: int, mode: str,
                        duplicates: dict[str, Any], *, embedder: dict[str, Any] | None = None, judge: str | None = None,
                        tau: float | None = None, tau_quantile: float = 0.99, device: str = "cpu"
                        ) -> tuple[ImageDataset, str]:
    """One of the duplicate-poisoning pair (``mode``: random or duplicates) by ``duplicates["design"]``, and a line
    that says what was poisoned.

    design natural (upstream's): the most duplicated training images, found with the replication embedder and
    threshold (:func:`natural_duplicates`), replace random picks of the random poison set. design injected: k images
    are repeated m times, and top_k of the copies (whole groups first) replace random picks of the random poison set,
    as upstream swaps its duplicates in. design synthetic: k images are repeated m times and whole duplicate groups
    are poisoned. Both modes of a design share the duplicated set and the random draw: only which images are
    poisoned differs."""
    design = duplicates["design"]
    if design == "natural":
        duplicated, tau = natural_duplicates(clean, heldout, target, duplicates["top_k"], embedder, judge, tau,
                                             tau_quantile, device)
        poisoned, positions = poison_with_duplicates(clean, duplicated, trigger, target, duplicates["ratio"],
                                                     duplicates["seed"], mode)
        return poisoned, (f"{mode}: {len(positions)} poisoned; the {len(duplicated)} most duplicated images (tau "
                          f"{tau:.4f}, top_k {duplicates['top_k']}) are "
                          f"{'among them' if mode == 'duplicates' else 'left as drawn'}")
    clean, groups = duplicate_images(clean, duplicates["k"], duplicates["m"], duplicates["seed"], exclude_label=target)
    if design == "injected":
        duplicated = most_duplicated(groups.tolist(), clean.labels, target, duplicates["top_k"])
        poisoned, positions = poison_with_duplicates(clean, duplicated, trigger, target, duplicates["ratio"],
                                                     duplicates["seed"], mode, design="injected")
        return poisoned, (f"{mode}: {len(clean)} images ({duplicates['k']} repeated {duplicates['m']} times), "
                          f"{len(positions)} poisoned; {len(duplicated)} copies (top_k) are "
                          f"{'among them' if mode == 'duplicates' else 'left as drawn'}")
    poisoned, positions = poison_duplicated_or_random(clean, groups, trigger, target, duplicates["ratio"], mode,
                                                      duplicates["seed"])
    in_groups = set(groups.ravel().tolist())
    return poisoned, (f"{mode}: {len(clean)} images ({duplicates['k']} repeated {duplicates['m']} times), "
                      f"{len(positions)} poisoned, {sum(int(i) in in_groups for i in positions)} of them duplicates")
