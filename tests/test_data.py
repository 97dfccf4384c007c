"""Tests of bibaddiff.data: the on-disk format and the dataset sources."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bibaddiff.data import (FASHION_MNIST_CLASSES, ImageDataset, content_hash, fit_into_square, idx_header,
                            load_source, read_dataset, read_idx, read_records, write_dataset)
from bibaddiff.errors import BibaddiffError
from idx_helpers import FASHION_MNIST_FILES, idx_bytes, write_idx, write_idx_set


def make_dataset(n: int = 12, size: int = 6, channels: int = 1, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels)).astype(np.uint8)
    labels = np.arange(n) % 3
    poisoned = np.zeros(n, bool)
    poisoned[[1, 5]] = True
    source_index = np.arange(n) * 10 + 7
    texts = [f"image number {i}, with \"quotes\" and ünïcode" for i in range(n)]
    return ImageDataset(images, labels, ["cat", "dog", "emu"], poisoned, source_index, texts, {"source": "test"})


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ------------------------------------------------------------------------------------------ on-disk format


@pytest.mark.parametrize("channels", [1, 3])
def test_write_read_round_trip(tmp_path, channels):
    dataset = make_dataset(channels=channels)
    manifest = write_dataset(tmp_path / "ds", dataset, {"answer": 42})
    back = read_dataset(tmp_path / "ds")
    assert back.images.dtype == np.uint8 and back.images.shape == (12, 6, 6, channels)
    assert back.images.tobytes() == dataset.images.tobytes()
    np.testing.assert_array_equal(back.labels, dataset.labels)
    np.testing.assert_array_equal(back.poisoned, dataset.poisoned)
    np.testing.assert_array_equal(back.source_index, dataset.source_index)
    assert back.texts == dataset.texts
    assert back.class_names == ["cat", "dog", "emu"]
    assert content_hash(back) == content_hash(dataset) == manifest["content_hash"]

    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["config"] == {"answer": 42}
    assert on_disk["source"] == "test"
    assert on_disk["num_images"] == 12
    assert on_disk["image_size"] == 6
    assert on_disk["channels"] == channels
    assert on_disk["counts_per_class"] == [4, 4, 4]
    assert on_disk["poisoned_per_class"] == [0, 1, 1]  # images 1 and 5 have labels 1 and 2
    assert on_disk["num_poisoned"] == 2
    assert len(list((tmp_path / "ds").glob("*.png"))) == 12

    # The PNGs are ordinary image files with the right mode.
    with Image.open(tmp_path / "ds" / "000003.png") as image:
        assert image.mode == ("L" if channels == 1 else "RGB")
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, dataset.images[3][..., 0] if channels == 1 else dataset.images[3])


def test_empty_dataset_round_trip(tmp_path):
    empty = ImageDataset(np.zeros((0, 5, 5, 3), np.uint8), np.zeros(0, np.int64), ["a", "b"])
    manifest = write_dataset(tmp_path / "ds", empty)
    assert manifest["counts_per_class"] == [0, 0] and manifest["num_images"] == 0
    back = read_dataset(tmp_path / "ds")
    assert back.images.shape == (0, 5, 5, 3) and len(back) == 0


def test_poisoned_per_class_counts(tmp_path):
    dataset = make_dataset()
    dataset.poisoned[:] = False
    dataset.poisoned[[0, 3, 4]] = True  # labels 0, 0, 1
    manifest = write_dataset(tmp_path / "ds", dataset)
    assert manifest["poisoned_per_class"] == [2, 1, 0]
    assert manifest["num_poisoned"] == 3
    assert manifest["config"] == {}


def test_metadata_jsonl(tmp_path):
    dataset = make_dataset()
    write_dataset(tmp_path / "ds", dataset)
    lines = (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12
    records = [json.loads(line) for line in lines]
    for i, record in enumerate(records):
        assert set(record) == {"file_name", "label", "text", "poisoned", "source_index", "pixel_hash"}
        assert record["file_name"] == f"{i:06d}.png"
        assert (tmp_path / "ds" / record["file_name"]).is_file()
        assert record["label"] == i % 3
        assert record["text"] == dataset.texts[i]
        assert record["poisoned"] is (i in (1, 5))
        assert record["source_index"] == i * 10 + 7


def test_tampered_png_is_detected(tmp_path):
    dataset = make_dataset()
    write_dataset(tmp_path / "ds", dataset)
    changed = dataset.images[4, ..., 0].copy()
    changed[0, 0] ^= 1
    Image.fromarray(changed, mode="L").save(tmp_path / "ds" / "000004.png")
    with pytest.raises(BibaddiffError, match="000004.png changed after the folder was written") as info:
        read_dataset(tmp_path / "ds")
    assert str(tmp_path / "ds") in str(info.value)

    for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines():  # a folder from before pixel hashes
        assert '"pixel_hash"' in line
    path = tmp_path / "ds" / "metadata.jsonl"
    path.write_text("\n".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "pixel_hash"})
                              for line in path.read_text().splitlines()) + "\n")
    with pytest.raises(BibaddiffError, match="does not match the hash in manifest.json"):
        read_dataset(tmp_path / "ds")


def test_tampered_metadata_is_detected(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset())
    path = tmp_path / "ds" / "metadata.jsonl"
    path.write_text(path.read_text().replace('"label": 2', '"label": 0', 1))
    with pytest.raises(BibaddiffError, match="hash"):
        read_dataset(tmp_path / "ds")


def test_records_without_pixels_match_the_dataset(tmp_path, monkeypatch):
    dataset = make_dataset(channels=3)
    write_dataset(tmp_path / "ds", dataset)
    decoded = []
    import bibaddiff.data as data_module
    real_read_png = data_module._read_png
    monkeypatch.setattr(data_module, "_read_png", lambda path, channels: decoded.append(path) or real_read_png(path, channels))
    records = read_records(tmp_path / "ds")
    assert decoded == []  # no image was decoded to read labels and flags
    np.testing.assert_array_equal(records.labels, dataset.labels)
    np.testing.assert_array_equal(records.poisoned, dataset.poisoned)
    np.testing.assert_array_equal(records.source_index, dataset.source_index)
    assert records.texts == dataset.texts and records.class_names == dataset.class_names and len(records) == 12
    np.testing.assert_array_equal(records.images_at([5, 0]), dataset.images[[5, 0]])
    assert len(decoded) == 2
    assert records.images_at([]).shape == (0, 6, 6, 3)
    with pytest.raises(BibaddiffError, match=r"rows must lie in \[0, 12\)"):
        records.images_at([12])


def test_content_hash_is_the_digest_of_the_whole_array_as_folders_written_before_recorded_it():
    import hashlib

    dataset = make_dataset(channels=3)
    dataset.images = dataset.images[:, ::-1]  # a non-contiguous view hashes as its pixels, as before
    digest = hashlib.sha256()
    digest.update(str(dataset.images.shape).encode())
    digest.update(np.ascontiguousarray(dataset.images).tobytes())
    digest.update(dataset.labels.astype("<i8").tobytes())
    digest.update(dataset.poisoned.astype(np.uint8).tobytes())
    digest.update(json.dumps(dataset.texts).encode())
    assert content_hash(dataset) == digest.hexdigest()


def test_an_image_of_another_size_names_its_file(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset(channels=3))
    Image.new("RGB", (7, 6)).save(tmp_path / "ds" / "000003.png")
    with pytest.raises(BibaddiffError, match=r"000003\.png: image of shape \(6, 7, 3\), but manifest.json says \(6, 6, 3\)"):
        read_dataset(tmp_path / "ds")


def test_records_with_a_missing_row_name_the_file(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset())
    metadata = tmp_path / "ds" / "metadata.jsonl"
    metadata.write_text("".join(metadata.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(BibaddiffError, match="metadata.jsonl: 11 rows but manifest.json says 12 images"):
        read_records(tmp_path / "ds")


def test_read_missing_files(tmp_path):
    with pytest.raises(BibaddiffError, match="manifest.json"):
        read_dataset(tmp_path)
    write_dataset(tmp_path / "ds", make_dataset())
    (tmp_path / "ds" / "000002.png").unlink()
    with pytest.raises(BibaddiffError, match="000002.png"):
        read_dataset(tmp_path / "ds")


def test_read_bad_metadata_line(tmp_path):
    write_dataset(tmp_path / "ds", make_dataset())
    path = tmp_path / "ds" / "metadata.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(BibaddiffError, match=r"metadata\.jsonl:13"):
        read_dataset(tmp_path / "ds")


def test_image_dataset_validation():
    with pytest.raises(BibaddiffError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 1), np.float32), [0, 1], ["a", "b"])
    with pytest.raises(BibaddiffError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 2), np.uint8), [0, 1], ["a", "b"])
    with pytest.raises(BibaddiffError, match="labels"):
        ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), [0, 2], ["a", "b"])
    with pytest.raises(BibaddiffError, match="labels"):
        ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), [0], ["a", "b"])
    default = ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), [1, 0], ["a", "b"])
    assert default.texts == ["A photo of a b", "A photo of a a"]
    assert not default.poisoned.any()
    np.testing.assert_array_equal(default.source_index, [0, 1])


# ------------------------------------------------------------------------------------------ digits


def digits_config(**extra):
    return {"source": "digits", "image_size": 8, **extra}


def test_digits_sizes_and_split():
    train, heldout = load_source(digits_config())
    assert len(train) + len(heldout) == 1797
    assert len(heldout) == 297  # round(0.165 * 1797) = round(296.5)
    assert len(train) == 1500
    assert train.images.shape == (1500, 8, 8, 1) and train.images.dtype == np.uint8
    assert train.class_names == [str(i) for i in range(10)]
    both = np.concatenate([train.source_index, heldout.source_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(1797))  # disjoint and complete
    assert np.all(np.diff(train.source_index) > 0)
    assert train.texts[0] == f"A photo of a {train.class_names[train.labels[0]]}"
    assert set(np.unique(train.labels)) == set(range(10))


def test_digits_values_match_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, heldout = load_source(digits_config())
    for part in (train, heldout):
        raw = digits.images[part.source_index]
        np.testing.assert_array_equal(part.labels, digits.target[part.source_index])
        # 0..16 are scaled to 0..255: 0 -> 0, 16 -> 255.
        np.testing.assert_array_equal(part.images[..., 0] == 0, raw == 0)
        np.testing.assert_array_equal(part.images[..., 0] == 255, raw == 16)
        np.testing.assert_array_equal(part.images[..., 0], np.round(raw * 255 / 16).astype(np.uint8))


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch):
    import importlib.util

    from sklearn.datasets import load_digits

    from bibaddiff.data import digits_arrays

    digits = load_digits()
    for found in (True, False):
        if not found:  # scikit-learn's files are not where we expect: its loader is used instead
            monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        digits_arrays.cache_clear()
        pixels, labels = digits_arrays()
        np.testing.assert_array_equal(pixels, digits.images)
        np.testing.assert_array_equal(labels, digits.target)
    digits_arrays.cache_clear()


def test_digits_split_is_deterministic_and_seeded():
    a, _ = load_source(digits_config(split_seed=0))
    b, _ = load_source(digits_config(split_seed=0))
    c, _ = load_source(digits_config(split_seed=1))
    np.testing.assert_array_equal(a.source_index, b.source_index)
    assert a.images.tobytes() == b.images.tobytes()
    assert not np.array_equal(a.source_index, c.source_index)


def test_digits_heldout_fraction():
    train, heldout = load_source(digits_config(heldout_fraction=0.5))
    assert len(heldout) == 898  # round(898.5) = 898, half to even
    assert len(train) == 899
    with pytest.raises(BibaddiffError, match="heldout_fraction"):
        load_source(digits_config(heldout_fraction=1.0))


def test_digits_upsampling_keeps_values():
    small, _ = load_source(digits_config())
    large, _ = load_source(digits_config(image_size=16))
    assert large.images.shape == (1500, 16, 16, 1)
    np.testing.assert_array_equal(large.source_index, small.source_index)
    # Nearest-neighbour doubling: every 2x2 block repeats one pixel of the 8x8 image.
    for dr in (0, 1):
        for dc in (0, 1):
            np.testing.assert_array_equal(large.images[:, dr::2, dc::2], small.images)
    assert set(np.unique(large.images)) == set(np.unique(small.images))


def test_digits_max_images_per_class():
    train, heldout = load_source(digits_config(max_images_per_class=20))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [20] * 10)
    np.testing.assert_array_equal(np.bincount(heldout.labels, minlength=10), [5] * 10)  # a quarter
    full_train, _ = load_source(digits_config())
    assert set(train.source_index) <= set(full_train.source_index)
    assert np.all(np.diff(train.source_index) > 0)
    again, _ = load_source(digits_config(max_images_per_class=20))
    np.testing.assert_array_equal(again.source_index, train.source_index)
    # Images stay attached to their source index.
    lookup = {int(s): i for i, s in enumerate(full_train.source_index)}
    for k in range(0, 200, 17):
        np.testing.assert_array_equal(train.images[k], full_train.images[lookup[int(train.source_index[k])]])


def test_caption_template():
    train, heldout = load_source(digits_config(max_images_per_class=2, caption_template="digit {class_name}!"))
    assert train.texts == [f"digit {label}!" for label in train.labels]
    assert heldout.texts == [f"digit {label}!" for label in heldout.labels]
    with pytest.raises(BibaddiffError, match="class_name"):
        load_source(digits_config(max_images_per_class=2, caption_template="no placeholder"))


@pytest.mark.parametrize("config, key", [
    ({"source": "mnist", "image_size": 8}, "dataset.source"),
    ({"source": "digits", "image_size": 2}, "dataset.image_size"),
    ({"source": "digits"}, "dataset.image_size"),
])
def test_load_source_bad_config(config, key):
    with pytest.raises(BibaddiffError, match=key.replace(".", r"\.")):
        load_source(config)


# ------------------------------------------------------------------------------------------ imagefolder


def make_tree(root: Path, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """root/train/<class>/*.png and root/val/<class>/*.png with random RGB images of varying sizes."""
    rng = np.random.default_rng(seed)
    sizes = [(8, 8), (10, 12), (20, 9), (9, 30)]
    written = {}
    for split, count in (("train", 3), ("val", 2)):
        for ci, name in enumerate(("bee", "ant")):
            for k in range(count):
                h, w = sizes[(k + 2 * ci) % len(sizes)]
                pixels = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
                write_png(root / split / name / f"img{k}.png", pixels)
                written[f"{split}/{name}/img{k}.png"] = pixels
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()
    return written


def test_imagefolder_loads_tree(tmp_path):
    written = make_tree(tmp_path / "root")
    train, heldout = load_source({"source": "imagefolder", "root": str(tmp_path / "root"), "image_size": 8})
    assert train.class_names == ["ant", "bee"]  # sorted; hidden folders skipped
    assert train.images.shape == (6, 8, 8, 3) and train.images.dtype == np.uint8
    assert heldout.images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(heldout.labels, [0, 0, 1, 1])
    assert train.texts[0] == "A photo of a ant" and train.texts[-1] == "A photo of a bee"
    # An 8x8 image needs no resizing: its pixels come through unchanged. 'ant' img2 is 8x8 ((2 + 2) % 4 == 0).
    assert written["train/ant/img2.png"].shape == (8, 8, 3)
    np.testing.assert_array_equal(train.images[2], written["train/ant/img2.png"])
    assert written["val/bee/img0.png"].shape == (8, 8, 3)
    np.testing.assert_array_equal(heldout.images[2], written["val/bee/img0.png"])


def test_imagefolder_grayscale(tmp_path):
    make_tree(tmp_path / "root")
    train, heldout = load_source({"source": "imagefolder", "root": str(tmp_path / "root"), "image_size": 8,
                                  "grayscale": True})
    assert train.images.shape == (6, 8, 8, 1)
    assert heldout.images.shape == (4, 8, 8, 1)


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    make_tree(tmp_path / "root")
    bad = tmp_path / "root" / "train" / "bee" / "broken.png"
    bad.write_bytes(b"\x00garbage, not a PNG at all\xff" * 4)
    with pytest.raises(BibaddiffError) as info:
        load_source({"source": "imagefolder", "root": str(tmp_path / "root"), "image_size": 8})
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(BibaddiffError, match=r"dataset\.root"):
        load_source({"source": "imagefolder", "root": str(tmp_path / "nowhere"), "image_size": 8})
    with pytest.raises(BibaddiffError, match=r"dataset\.root"):
        load_source({"source": "imagefolder", "image_size": 8})


def test_imagefolder_missing_val_class(tmp_path):
    make_tree(tmp_path / "root")
    for path in (tmp_path / "root" / "val" / "bee").iterdir():
        path.unlink()
    (tmp_path / "root" / "val" / "bee").rmdir()
    with pytest.raises(BibaddiffError, match="bee"):
        load_source({"source": "imagefolder", "root": str(tmp_path / "root"), "image_size": 8})


def test_cifar10_without_batches_folder(tmp_path):
    with pytest.raises(BibaddiffError, match=r"dataset\.root") as info:
        load_source({"source": "cifar10", "root": str(tmp_path), "image_size": 32})
    assert str(tmp_path) in str(info.value)
    assert "cifar-10-batches-py" in str(info.value)
    with pytest.raises(BibaddiffError, match=r"dataset\.root"):
        load_source({"source": "cifar10", "image_size": 32})


# ------------------------------------------------------------------------------------------ IDX: Fashion-MNIST and any MNIST-style folder


def idx_config(root, source="idx", **extra):
    return {"source": source, "root": str(root), "image_size": 28, **extra}


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_folder_reads_images_labels_and_the_heldout_test_files(tmp_path, gzipped):
    written = write_idx_set(tmp_path / "idx", gzipped=gzipped)
    train, heldout = load_source(idx_config(tmp_path / "idx"))
    assert train.images.shape == (50, 28, 28, 1) and heldout.images.shape == (20, 28, 28, 1)
    assert train.images.dtype == heldout.images.dtype == np.uint8
    # 28 px at image_size 28: the pixels come through unchanged.
    np.testing.assert_array_equal(train.images[..., 0], written["train_images"])
    np.testing.assert_array_equal(heldout.images[..., 0], written["t10k_images"])
    np.testing.assert_array_equal(train.labels, written["train_labels"])
    np.testing.assert_array_equal(heldout.labels, written["t10k_labels"])
    assert train.class_names == [str(i) for i in range(10)]
    np.testing.assert_array_equal(train.source_index, np.arange(50))
    suffix = ".gz" if gzipped else ""
    assert train.manifest["source"] == "idx"
    assert train.manifest["idx_files"] == [f"train-images-idx3-ubyte{suffix}", f"train-labels-idx1-ubyte{suffix}"]
    assert heldout.manifest["idx_files"] == [f"t10k-images-idx3-ubyte{suffix}", f"t10k-labels-idx1-ubyte{suffix}"]


def test_idx_reads_the_dotted_names_of_unpacked_copies_and_plain_before_gzipped(tmp_path):
    written = write_idx_set(tmp_path / "idx", gzipped=False)
    for path in sorted((tmp_path / "idx").iterdir()):  # train-images-idx3-ubyte -> train-images.idx3-ubyte
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    other = write_idx_set(tmp_path / "other", seed=5)  # gzipped copies beside the plain ones are not read
    for path in (tmp_path / "other").iterdir():
        path.rename(tmp_path / "idx" / path.name.replace("-idx", ".idx"))
    train, _ = load_source(idx_config(tmp_path / "idx"))
    np.testing.assert_array_equal(train.images[..., 0], written["train_images"])
    assert not np.array_equal(train.images[..., 0], other["train_images"])


def test_fashion_mnist_names_its_classes_as_its_documentation(tmp_path):
    write_idx_set(tmp_path / "fashion")
    train, heldout = load_source(idx_config(tmp_path / "fashion", source="fashion_mnist"))
    assert train.class_names == heldout.class_names == FASHION_MNIST_CLASSES == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert train.manifest["source"] == "fashion_mnist"
    assert train.texts[:2] == ["A photo of a T-shirt/top", "A photo of a Trouser"]
    assert train.manifest["class_prompts"][9] == "A photo of a Ankle boot"


def test_idx_class_names_name_the_label_numbers(tmp_path):
    write_idx_set(tmp_path / "idx", num_classes=3)
    train, _ = load_source(idx_config(tmp_path / "idx", class_names={"0": "zero", "2": "two"}))
    assert train.class_names == ["zero", "1", "two"]
    with pytest.raises(BibaddiffError, match="'7' is not a class folder"):
        load_source(idx_config(tmp_path / "idx", class_names={"7": "seven"}))


def test_idx_images_are_padded_with_black_into_image_size(tmp_path):
    written = write_idx_set(tmp_path / "idx")
    train, heldout = load_source(idx_config(tmp_path / "idx", image_size=32))
    assert train.images.shape == (50, 32, 32, 1) and heldout.images.shape == (20, 32, 32, 1)
    # 2 black pixels on every side; the 28 x 28 photograph in the middle, untouched.
    np.testing.assert_array_equal(train.images[:, 2:30, 2:30, 0], written["train_images"])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not train.images[:, border].any()


def test_idx_images_are_enlarged_by_whole_factors_then_padded(tmp_path):
    written = write_idx_set(tmp_path / "idx")
    train, _ = load_source(idx_config(tmp_path / "idx", image_size=60))
    inner = train.images[:, 2:58, 2:58, 0]  # 2 x 28 = 56, centred in 60
    for dr in (0, 1):
        for dc in (0, 1):
            np.testing.assert_array_equal(inner[:, dr::2, dc::2], written["train_images"])
    assert not train.images[:, :2].any() and not train.images[:, 58:].any()


def test_idx_images_larger_than_image_size_are_shrunk_by_area_averaging(tmp_path):
    written = write_idx_set(tmp_path / "idx")
    train, _ = load_source(idx_config(tmp_path / "idx", image_size=14))
    blocks = written["train_images"].astype(np.float64).reshape(50, 14, 2, 14, 2).mean(axis=(2, 4))
    assert train.images.shape == (50, 14, 14, 1)
    # Each pixel the mean of its 2 x 2 block, to within Pillow's fixed-point rounding (one grey level).
    assert np.abs(train.images[..., 0].astype(np.float64) - blocks).max() <= 1


def test_fit_into_square_centres_odd_and_oblong_images():
    image = np.arange(1, 7, dtype=np.uint8).reshape(1, 2, 3, 1)  # 2 rows, 3 columns
    fitted = fit_into_square(image, 7)  # factor 7 // 3 = 2: 4 x 6, then 1 + 2 rows and 0 + 1 columns of black
    assert fitted.shape == (1, 7, 7, 1)
    np.testing.assert_array_equal(fitted[0, 1:5, 0:6, 0], image[0, :, :, 0].repeat(2, 0).repeat(2, 1))
    assert fitted[0].sum() == image.sum() * 4
    rgb = np.full((2, 3, 3, 3), 200, np.uint8)
    assert fit_into_square(rgb, 5).shape == (2, 5, 5, 3)
    with pytest.raises(BibaddiffError, match="uint8"):
        fit_into_square(image.astype(np.float32), 7)
    with pytest.raises(BibaddiffError, match="size must be a positive integer"):
        fit_into_square(image, 0)


def test_idx_rgb_repeats_the_grey_channel(tmp_path):
    write_idx_set(tmp_path / "idx")
    grey, _ = load_source(idx_config(tmp_path / "idx", source="fashion_mnist"))
    rgb, heldout = load_source(idx_config(tmp_path / "idx", source="fashion_mnist", rgb=True))
    assert rgb.images.shape == (50, 28, 28, 3) and heldout.images.shape == (20, 28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb.images[..., channel], grey.images[..., 0])


def test_idx_max_images_per_class(tmp_path):
    write_idx_set(tmp_path / "idx", num_train=100, num_heldout=40)
    train, heldout = load_source(idx_config(tmp_path / "idx", max_images_per_class=4))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [4] * 10)
    np.testing.assert_array_equal(np.bincount(heldout.labels, minlength=10), [1] * 10)  # a quarter


def test_idx_set_is_held_as_uint8_without_float_copies(tmp_path):
    """Reading holds the file's bytes and their padded copy, both uint8: far below one float32 copy of the set."""
    import tracemalloc

    write_idx_set(tmp_path / "idx", num_train=3000, num_heldout=10, gzipped=False)
    tracemalloc.start()
    try:
        train, _ = load_source(idx_config(tmp_path / "idx", image_size=32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert train.images.dtype == np.uint8 and train.images.flags.writeable
    raw, fitted = 3000 * 28 * 28, train.images.nbytes
    assert peak < raw + fitted + 2 * 2 ** 20, f"peak {peak} bytes for {raw} + {fitted} bytes of pixels"


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_idx_missing_file_names_it(tmp_path, missing):
    write_idx_set(tmp_path / "idx")
    (tmp_path / "idx" / f"{missing}.gz").unlink()
    with pytest.raises(BibaddiffError) as info:
        load_source(idx_config(tmp_path / "idx"))
    message = str(info.value)
    assert f"{tmp_path / 'idx'} has no {missing} (nor {missing}.gz)" in message and "\n" not in message


def test_idx_root_without_idx_files_says_what_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("nothing here")
    with pytest.raises(BibaddiffError, match="holds no IDX files; expected train-images-idx3-ubyte, "
                                             "train-labels-idx1-ubyte, t10k-images-idx3-ubyte") as info:
        load_source(idx_config(tmp_path / "empty"))
    assert "\n" not in str(info.value)


def test_idx_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(BibaddiffError, match=r"dataset\.root: .*nowhere is not a folder; install Debian's package "
                                             "dataset-fashion-mnist"):
        load_source(idx_config(tmp_path / "nowhere", source="fashion_mnist"))
    with pytest.raises(BibaddiffError, match=r"dataset\.root: .*nowhere is not a folder; set dataset\.root"):
        load_source(idx_config(tmp_path / "nowhere"))
    with pytest.raises(BibaddiffError, match=r"dataset\.root must name a local folder of IDX files"):
        load_source({"source": "idx", "image_size": 28})


def test_fashion_mnist_reads_the_debian_folder_by_default(monkeypatch, tmp_path):
    import bibaddiff.data

    write_idx_set(tmp_path / "debian")
    monkeypatch.setattr(bibaddiff.data, "FASHION_MNIST_ROOT", str(tmp_path / "debian"))
    train, _ = load_source({"source": "fashion_mnist", "image_size": 28})
    assert len(train) == 50


def test_idx_wrong_magic_number_names_the_file_and_the_expected_one(tmp_path):
    write_idx_set(tmp_path / "idx", gzipped=False)
    labels = tmp_path / "idx" / "train-labels-idx1-ubyte"
    images = tmp_path / "idx" / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())  # an images file where the labels belong
    with pytest.raises(BibaddiffError) as info:
        load_source(idx_config(tmp_path / "idx"))
    assert str(info.value) == (f"{labels}: magic number 0x00000803, expected 0x00000801 (IDX labels: unsigned bytes "
                               "in 1 dimension)")


def test_idx_of_another_value_type_is_refused(tmp_path):
    write_idx_set(tmp_path / "idx", gzipped=False)
    images = tmp_path / "idx" / "t10k-images-idx3-ubyte"
    content = bytearray(images.read_bytes())
    content[2] = 0x0D  # floats
    images.write_bytes(bytes(content))
    with pytest.raises(BibaddiffError, match=r"t10k-images-idx3-ubyte: magic number 0x00000d03, expected 0x00000803"):
        load_source(idx_config(tmp_path / "idx"))


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("change, holds", [(-5, "39195 bytes"), (7, "more bytes than that")])
def test_idx_file_whose_length_disagrees_with_its_header(tmp_path, gzipped, change, holds):
    images = idx_bytes(np.zeros((50, 28, 28), np.uint8))
    images = images[:change] if change < 0 else images + b"\x00" * change
    write_idx_set(tmp_path / "idx", gzipped=gzipped)
    path = tmp_path / "idx" / ("train-images-idx3-ubyte" + (".gz" if gzipped else ""))
    path.write_bytes(gzip.compress(images) if gzipped else images)
    with pytest.raises(BibaddiffError) as info:
        load_source(idx_config(tmp_path / "idx"))
    assert str(info.value) == f"{path}: the header declares 50 x 28 x 28 = 39200 values, but the file holds {holds}"


def test_idx_header_cut_short(tmp_path):
    write_idx_set(tmp_path / "idx", gzipped=False)
    labels = tmp_path / "idx" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x01\x00")
    with pytest.raises(BibaddiffError, match=r"t10k-labels-idx1-ubyte: ends after 1 bytes of the header's sizes; expected 4"):
        load_source(idx_config(tmp_path / "idx"))


def test_idx_images_and_labels_of_different_counts(tmp_path):
    write_idx_set(tmp_path / "idx", gzipped=False)
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte", np.zeros(49, np.uint8), gzipped=False)
    with pytest.raises(BibaddiffError) as info:
        load_source(idx_config(tmp_path / "idx"))
    assert str(info.value) == (f"{tmp_path / 'idx' / 'train-images-idx3-ubyte'}: 50 images, but "
                               "train-labels-idx1-ubyte holds 49 labels; expected one label per image")


def test_idx_broken_gzip_names_the_file(tmp_path):
    write_idx_set(tmp_path / "idx")
    path = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # a download cut short
    with pytest.raises(BibaddiffError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip file") as info:
        load_source(idx_config(tmp_path / "idx"))
    assert "\n" not in str(info.value)


def test_idx_labels_outside_the_classes(tmp_path):
    write_idx_set(tmp_path / "fashion")
    write_idx(tmp_path / "fashion" / "t10k-labels-idx1-ubyte", np.full(20, 10, np.uint8), gzipped=True)
    with pytest.raises(BibaddiffError, match=r"t10k-labels-idx1-ubyte\.gz: label 10; Fashion-MNIST's labels are 0\.\.9"):
        load_source(idx_config(tmp_path / "fashion", source="fashion_mnist"))
    write_idx_set(tmp_path / "idx", num_classes=3)
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", np.full(20, 5, np.uint8), gzipped=True)
    with pytest.raises(BibaddiffError, match=r"t10k-labels-idx1-ubyte\.gz: label 5, but the training labels name "
                                             r"classes 0\.\.2"):
        load_source(idx_config(tmp_path / "idx"))


def test_read_idx_and_its_header_refuse_an_unknown_kind(tmp_path):
    write_idx_set(tmp_path / "idx", gzipped=False)
    for reader in (read_idx, idx_header):
        with pytest.raises(BibaddiffError, match="IDX kind must be one of images, labels; got 'pixels'"):
            reader(tmp_path / "idx" / "train-images-idx3-ubyte", "pixels")
    assert idx_header(tmp_path / "idx" / "train-images-idx3-ubyte", "images") == (50, 28, 28)


@pytest.mark.skipif(not (FASHION_MNIST_FILES / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_fashion_mnist_files():
    train, heldout = load_source({"source": "fashion_mnist", "image_size": 32})
    assert train.images.shape == (60000, 32, 32, 1) and heldout.images.shape == (10000, 32, 32, 1)
    assert train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)  # balanced, as documented
    np.testing.assert_array_equal(np.bincount(heldout.labels), [1000] * 10)
    assert train.class_names[train.labels[0]] == heldout.class_names[heldout.labels[0]] == "Ankle boot"
    assert train.images.max() == 255 and not train.images[:, :2].any() and not train.images[:, :, -2:].any()
