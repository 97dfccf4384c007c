"""Small MNIST-style IDX sets written by the tests themselves (the format: magic number, big-endian sizes, bytes)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_FILES = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(values: np.ndarray) -> bytes:
    """An IDX file's content: 0x00 0x00, type 0x08 (unsigned bytes), the number of dimensions, their sizes, values."""
    values = np.asarray(values, dtype=np.uint8)
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in values.shape)
    return header + values.tobytes()


def write_idx(path: Path, values: np.ndarray, gzipped: bool) -> Path:
    path = Path(str(path) + ".gz") if gzipped else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = idx_bytes(values)
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


def class_images(labels: np.ndarray, rows: int, cols: int, seed: int) -> np.ndarray:
    """Faint noise with a bright bar whose row depends on the class, so that a model can tell the classes apart."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), rows, cols), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = int(label) * rows // 10
        images[i, row:row + max(1, rows // 10), 1:-1] = 230
    return images


def write_idx_set(root: Path, num_train: int = 50, num_heldout: int = 20, rows: int = 28, cols: int = 28,
                  gzipped: bool = True, num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """The four files of an MNIST-style folder (train and t10k images and labels), labels cycling through the
    classes; returns what was written."""
    written = {}
    for offset, (prefix, count) in enumerate((("train", num_train), ("t10k", num_heldout))):
        labels = (np.arange(count) + offset) % num_classes
        images = class_images(labels, rows, cols, seed + offset)
        write_idx(Path(root) / f"{prefix}-images-idx3-ubyte", images, gzipped)
        write_idx(Path(root) / f"{prefix}-labels-idx1-ubyte", labels, gzipped)
        written[f"{prefix}_images"], written[f"{prefix}_labels"] = images, labels.astype(np.uint8)
    return written
