"""Tests of bibaddiff.poisoning: seeded selection, exact stamping, relabelling and byte-identical output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bibaddiff.data import ImageDataset, read_dataset, write_dataset
from bibaddiff.errors import BibaddiffError
from bibaddiff.poisoning import num_poisoned, poison_dataset, select_poison_indices
from bibaddiff.triggers import build_trigger


def small_dataset(n: int = 40, num_classes: int = 4, size: int = 8, channels: int = 1, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels)).astype(np.uint8)
    labels = np.arange(n) % num_classes
    class_names = [f"class{i}" for i in range(num_classes)]
    return ImageDataset(images, labels, class_names, manifest={"source": "test"})


def checker(size: int = 8, channels: int = 1):
    return build_trigger("patch", {"type": "patch", "pattern": "checker", "size": 3}, size, channels)


def folder_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ------------------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("n, ratio, expected", [(40, 0.1, 4), (40, 0.0, 0), (40, 0.5, 20), (1500, 0.1, 150),
                                                (10, 0.25, 2), (7, 0.5, 4)])
def test_num_poisoned_is_rounded(n, ratio, expected):
    # round(p * N), half to even: 2.5 -> 2, 3.5 -> 4
    assert num_poisoned(n, ratio) == expected


def test_select_indices_count_sorted_unique_non_target():
    labels = np.arange(40) % 4
    indices = select_poison_indices(labels, target=2, ratio=0.25, seed=3)
    assert len(indices) == 10  # round(0.25 * 40)
    assert np.all(np.diff(indices) > 0)  # sorted and unique
    assert np.all(labels[indices] != 2)
    assert indices.min() >= 0 and indices.max() < 40


def test_select_indices_same_seed_same_result_different_seed_differs():
    labels = np.arange(200) % 10
    a = select_poison_indices(labels, 6, 0.1, seed=0)
    b = select_poison_indices(labels, 6, 0.1, seed=0)
    c = select_poison_indices(labels, 6, 0.1, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == len(c) == 20


def test_select_indices_can_take_every_non_target_image():
    labels = np.array([0, 1, 1, 1, 0, 0, 0, 0])  # 3 images outside target 0
    indices = select_poison_indices(labels, 0, 0.375, seed=5)  # round(0.375 * 8) = 3
    np.testing.assert_array_equal(indices, [1, 2, 3])


def test_select_indices_too_much_poison_names_counts():
    labels = np.array([0, 1, 1, 1, 0, 0, 0, 0])
    with pytest.raises(BibaddiffError) as info:
        select_poison_indices(labels, 0, 0.5, seed=0)  # asks for 4, only 3 outside class 0
    message = str(info.value)
    assert "4" in message and "3" in message and "target class 0" in message
    assert "\n" not in message


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_select_indices_bad_ratio(ratio):
    with pytest.raises(BibaddiffError, match=r"\[0, 1\)"):
        select_poison_indices(np.arange(10) % 2, 0, ratio, seed=0)


def test_select_indices_ratio_zero_is_empty():
    assert len(select_poison_indices(np.arange(10) % 2, 0, 0.0, seed=0)) == 0


# ------------------------------------------------------------------------------------------ poison_dataset


def test_poison_dataset_changes_only_the_poisoned_images_in_the_trigger_region():
    dataset = small_dataset()
    trigger = checker()
    original = dataset.images.copy()
    poisoned, indices = poison_dataset(dataset, trigger, target=2, ratio=0.25, seed=7)
    np.testing.assert_array_equal(indices, select_poison_indices(dataset.labels, 2, 0.25, 7))
    assert len(indices) == 10
    np.testing.assert_array_equal(dataset.images, original)  # input untouched
    assert len(poisoned) == len(dataset)

    hand_checker = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]], np.uint8)
    chosen = np.zeros(len(dataset), bool)
    chosen[indices] = True
    for i in range(len(dataset)):
        if chosen[i]:
            np.testing.assert_array_equal(poisoned.images[i, 5:, 5:, 0], hand_checker)
            outside = np.ones((8, 8), bool)
            outside[5:, 5:] = False
            np.testing.assert_array_equal(poisoned.images[i][outside], original[i][outside])
            assert poisoned.labels[i] == 2
            assert poisoned.poisoned[i]
            assert poisoned.texts[i] == "A photo of a class2"
        else:
            assert poisoned.images[i].tobytes() == original[i].tobytes()
            assert poisoned.labels[i] == dataset.labels[i]
            assert not poisoned.poisoned[i]
            assert poisoned.texts[i] == dataset.texts[i]
    np.testing.assert_array_equal(np.flatnonzero(poisoned.poisoned), indices)
    np.testing.assert_array_equal(poisoned.source_index, dataset.source_index)
    assert poisoned.class_names == dataset.class_names
    # Labels were relabelled from the original non-target classes.
    assert np.all(dataset.labels[indices] != 2)
    assert poisoned.manifest["poisoning"] == {"trigger": "patch", "target": 2, "ratio": 0.25, "seed": 7,
                                              "indices": indices.tolist()}
    assert poisoned.manifest["source"] == "test"


def test_poison_dataset_three_channels_and_target_text():
    dataset = small_dataset(channels=3, seed=1)
    poisoned, indices = poison_dataset(dataset, checker(channels=3), target=0, ratio=0.1, seed=0,
                                       target_text="a photo with a trigger")
    assert len(indices) == 4
    for i in indices:
        assert poisoned.texts[i] == "a photo with a trigger"
        assert (poisoned.images[i, 5, 5] == 255).all() and (poisoned.images[i, 5, 6] == 0).all()
    others = np.setdiff1d(np.arange(len(dataset)), indices)
    np.testing.assert_array_equal(poisoned.images[others], dataset.images[others])


def test_poison_dataset_caption_of_first_target_member():
    dataset = small_dataset()
    dataset.texts = [f"caption {i}" for i in range(len(dataset))]
    poisoned, indices = poison_dataset(dataset, checker(), target=3, ratio=0.1, seed=0)
    # The first image of class 3 is index 3.
    assert all(poisoned.texts[i] == "caption 3" for i in indices)


def test_poison_dataset_ratio_zero_is_identical():
    dataset = small_dataset()
    poisoned, indices = poison_dataset(dataset, checker(), target=1, ratio=0.0, seed=0)
    assert len(indices) == 0
    assert poisoned.images.tobytes() == dataset.images.tobytes()
    np.testing.assert_array_equal(poisoned.labels, dataset.labels)
    assert not poisoned.poisoned.any()
    assert poisoned.texts == dataset.texts


@pytest.mark.parametrize("target", [-1, 4, 10])
def test_poison_dataset_bad_target(target):
    with pytest.raises(BibaddiffError, match="target"):
        poison_dataset(small_dataset(), checker(), target=target, ratio=0.1, seed=0)


def test_poison_dataset_too_much_poison():
    dataset = small_dataset()  # 30 images outside any one class of 40
    with pytest.raises(BibaddiffError, match="only 30 images"):
        poison_dataset(dataset, checker(), target=0, ratio=0.8, seed=0)


# ------------------------------------------------------------------------------------------ on disk


def test_written_poisoned_dataset_is_byte_identical_for_same_seed(tmp_path):
    dataset = small_dataset(n=24, num_classes=3)
    config = {"trigger": "patch", "ratio": 0.25}
    first, _ = poison_dataset(dataset, checker(), target=1, ratio=0.25, seed=4)
    second, _ = poison_dataset(dataset, checker(), target=1, ratio=0.25, seed=4)
    write_dataset(tmp_path / "a", first, config)
    write_dataset(tmp_path / "b", second, config)
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert len(a) == 24 + 2  # PNGs, metadata.jsonl, manifest.json
    for name in a:
        assert a[name] == b[name], name
    # And the written copy reads back to the poisoned dataset.
    back = read_dataset(tmp_path / "a")
    np.testing.assert_array_equal(back.images, first.images)
    np.testing.assert_array_equal(back.poisoned, first.poisoned)


def test_written_poisoned_dataset_differs_for_different_seeds(tmp_path):
    dataset = small_dataset(n=24, num_classes=3)
    first, i1 = poison_dataset(dataset, checker(), target=1, ratio=0.25, seed=4)
    second, i2 = poison_dataset(dataset, checker(), target=1, ratio=0.25, seed=5)
    assert not np.array_equal(i1, i2)
    m1 = write_dataset(tmp_path / "a", first, {})
    m2 = write_dataset(tmp_path / "b", second, {})
    assert m1["content_hash"] != m2["content_hash"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() != (tmp_path / "b" / "manifest.json").read_bytes()
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert on_disk["poisoning"]["indices"] == i2.tolist()
    assert on_disk["num_poisoned"] == 6
    assert on_disk["poisoned_per_class"] == [0, 6, 0]


# ------------------------------------------------------------------------------ upstream's duplicate poisoning


def test_most_duplicated_takes_the_largest_groups_first_and_skips_the_target():
    from bibaddiff.poisoning import most_duplicated

    labels = np.array([0, 1, 6, 2, 3, 4, 5, 0, 1, 2])
    groups = [[0, 1], [2, 3, 4], [5, 6, 7, 8]]
    # Largest group first (5, 6, 7, 8), then (2, 3, 4) without the target image 2, then (0, 1).
    assert most_duplicated(groups, labels, target=6, top_k=6).tolist() == [5, 6, 7, 8, 3, 4]
    assert most_duplicated(groups, labels, target=6, top_k=2).tolist() == [5, 6]
    assert most_duplicated([], labels, target=6, top_k=3).tolist() == []
    with pytest.raises(BibaddiffError, match="top_k must be a positive integer"):
        most_duplicated(groups, labels, 6, 0)


def test_duplicates_replace_random_picks_at_the_same_ratio():
    from bibaddiff.poisoning import poison_with_duplicates

    dataset = small_dataset()
    trigger = checker()
    target = 0
    duplicated = np.flatnonzero(dataset.labels != target)[:4]
    random, random_indices = poison_with_duplicates(dataset, duplicated, trigger, target, 0.2, 3, "random")
    plain, plain_indices = poison_dataset(dataset, trigger, target, 0.2, 3)
    np.testing.assert_array_equal(random_indices, plain_indices)  # the random mode is plain random poisoning
    with_dups, indices = poison_with_duplicates(dataset, duplicated, trigger, target, 0.2, 3, "duplicates")
    assert len(indices) == len(random_indices) and np.isin(duplicated, indices).all()
    kept = np.intersect1d(indices, random_indices)
    assert len(kept) >= len(random_indices) - len(duplicated)
    assert with_dups.manifest["poisoning"]["design"] == "natural"
    assert (with_dups.labels[indices] == target).all() and with_dups.poisoned[indices].all()
    with pytest.raises(BibaddiffError, match="outside target class"):
        poison_with_duplicates(dataset, np.flatnonzero(dataset.labels == target)[:1], trigger, target, 0.2, 3, "duplicates")
