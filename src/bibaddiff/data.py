"""Dataset sources and the one on-disk dataset format.

Sources: scikit-learn's bundled digits, Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and any folder of
MNIST-style IDX files, CIFAR-10 (a local torchvision root), class-per-folder image trees.

Format: a folder of PNG files with ``metadata.jsonl`` (one JSON object per image: ``file_name``,
``label``, ``text``, ``poisoned``, ``source_index``), which diffusers' imagefolder loaders read as is, and
``manifest.json`` with the config, counts and a content hash. Images live in memory as uint8 arrays of shape
(N, H, W, C).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import read_json, write_json

SOURCES = ("digits", "fashion_mnist", "idx", "cifar10", "imagefolder")
# Sources of one-channel images: ``dataset.rgb`` repeats their channel three times (Stable Diffusion takes RGB).
GREYSCALE_SOURCES = ("digits", "fashion_mnist", "idx")
IDX_SOURCES = ("fashion_mnist", "idx")
# Where Debian's dataset-fashion-mnist package puts the four IDX files (the default dataset.root of fashion_mnist).
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
# Label 0 to 9, named as Fashion-MNIST's README names them.
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
DEFAULT_CAPTION = "A photo of a {class_name}"


@dataclass
class ImageDataset:
    """Images with labels, poison flags and captions; the in-memory twin of the on-disk format.

    ``poisoned`` marks the images that carry the trigger. For a real training set that is the attack's ground truth
    (the images it stamped); for a generated set nobody stamped anything, so it holds the trigger detector's verdict
    (``manifest["source"] == "generated"``). The on-disk column keeps the one name so that every set loads alike.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    poisoned: np.ndarray | None = None
    source_index: np.ndarray | None = None
    texts: list[str] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise BibaddiffError(
                f"images must be uint8 of shape (N, H, W, 1 or 3); got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (n,):
            raise BibaddiffError(f"labels must have shape ({n},); got {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise BibaddiffError(f"labels must lie in [0, {len(self.class_names)}); got {self.labels.min()}..{self.labels.max()}")
        self.poisoned = np.zeros(n, bool) if self.poisoned is None else np.asarray(self.poisoned, dtype=bool)
        self.source_index = np.arange(n) if self.source_index is None else np.asarray(self.source_index, dtype=np.int64)
        if self.texts is None:
            self.texts = caption_labels(self.labels, self.class_names)
        if self.poisoned.shape != (n,) or self.source_index.shape != (n,) or len(self.texts) != n:
            raise BibaddiffError("poisoned, source_index and texts must have one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: np.ndarray) -> "ImageDataset":
        indices = np.asarray(indices)
        return replace(
            self,
            images=self.images[indices],
            labels=self.labels[indices],
            poisoned=self.poisoned[indices],
            source_index=self.source_index[indices],
            texts=[self.texts[i] for i in indices],
            manifest=dict(self.manifest),
        )


def caption_labels(labels: np.ndarray, class_names: list[str], template: str = DEFAULT_CAPTION) -> list[str]:
    """Class captions from a template such as ``"A photo of a {class_name}"``."""
    if "{class_name}" not in template:
        raise BibaddiffError(f"caption template must contain '{{class_name}}'; got {template!r}")
    return [template.format(class_name=class_names[label]) for label in labels]


def content_hash(dataset: ImageDataset) -> str:
    """SHA-256 over pixels, labels, poison flags and captions: equal hashes mean equal datasets."""
    digest = hashlib.sha256()
    digest.update(str(dataset.images.shape).encode())
    # One image at a time: hashing the whole array at once copied it (1.9 GB for ImageNette's training set at
    # 256 px) and made dataset reads and writes peak at about three times the pixels. The digest is the same.
    for image in dataset.images:
        digest.update(np.ascontiguousarray(image).data)
    digest.update(dataset.labels.astype("<i8").tobytes())
    digest.update(dataset.poisoned.astype(np.uint8).tobytes())
    digest.update(json.dumps(dataset.texts).encode())
    return digest.hexdigest()


def pixel_hash(image: np.ndarray) -> str:
    """A short digest of one image's pixels, kept per file in metadata.jsonl so that a changed file can be named."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def write_dataset(directory: str | Path, dataset: ImageDataset, config: dict[str, Any] | None = None) -> dict:
    """Write PNGs, ``metadata.jsonl`` and ``manifest.json``; returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mode = "L" if dataset.channels == 1 else "RGB"
    with open(directory / "metadata.jsonl", "w") as metadata:
        for i in tqdm(range(len(dataset)), desc=f"writing {directory.name}", unit="img", mininterval=2):
            file_name = f"{i:06d}.png"
            pixels = dataset.images[i][..., 0] if dataset.channels == 1 else dataset.images[i]
            Image.fromarray(pixels, mode=mode).save(directory / file_name, optimize=False)
            record = {
                "file_name": file_name,
                "label": int(dataset.labels[i]),
                "text": dataset.texts[i],
                "poisoned": bool(dataset.poisoned[i]),
                "source_index": int(dataset.source_index[i]),
                "pixel_hash": pixel_hash(dataset.images[i]),
            }
            metadata.write(json.dumps(record) + "\n")
    manifest = {
        **dataset.manifest,
        "config": config if config is not None else dataset.manifest.get("config", {}),
        "class_names": list(dataset.class_names),
        "num_images": len(dataset),
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "counts_per_class": np.bincount(dataset.labels, minlength=dataset.num_classes).tolist(),
        "poisoned_per_class": np.bincount(
            dataset.labels[dataset.poisoned], minlength=dataset.num_classes
        ).tolist(),
        "num_poisoned": int(dataset.poisoned.sum()),
        "content_hash": content_hash(dataset),
    }
    write_json(directory / "manifest.json", manifest)
    return manifest


@dataclass
class DatasetRecords:
    """A dataset folder's labels, poison flags, captions and manifest without its pixels, for jobs that only count
    (training shares, class balances); ``images_at`` decodes the few images such a job may show."""

    directory: Path
    labels: np.ndarray
    poisoned: np.ndarray
    source_index: np.ndarray
    texts: list[str]
    file_names: list[str]
    class_names: list[str]
    manifest: dict[str, Any]
    pixel_hashes: list[str | None] = field(default_factory=list)  # none in folders written before they existed

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def images_at(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, C) images of the given rows, read from their PNG files."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise BibaddiffError(f"{self.directory}: image rows must lie in [0, {len(self)}); got {indices.min()}..{indices.max()}")
        channels, size = int(self.manifest["channels"]), int(self.manifest["image_size"])
        # Filled in place: a list of decoded images and its np.stack held the pixels twice.
        images = np.empty((len(indices), size, size, channels), np.uint8)
        for row, i in enumerate(indices):
            path = self.directory / self.file_names[i]
            pixels = _read_png(path, channels)
            if pixels.shape != images.shape[1:]:
                raise BibaddiffError(f"{path}: image of shape {pixels.shape}, but manifest.json says "
                                     f"{images.shape[1:]}; delete {self.directory} and rerun to rebuild it")
            images[row] = pixels
        return images


def read_records(directory: str | Path) -> DatasetRecords:
    """Read a dataset folder's metadata.jsonl and manifest.json (no image is decoded)."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    metadata_path = directory / "metadata.jsonl"
    for path in (manifest_path, metadata_path):
        if not path.is_file():
            raise BibaddiffError(f"{path}: missing; is {directory} a dataset written by bibaddiff?")
    manifest = read_json(manifest_path)
    records = []
    with open(metadata_path) as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise BibaddiffError(f"{metadata_path}:{line_number}: not valid JSON ({error.msg})") from None
    if len(records) != manifest.get("num_images", len(records)):
        raise BibaddiffError(f"{metadata_path}: {len(records)} rows but manifest.json says {manifest['num_images']} images")
    try:
        return DatasetRecords(
            directory=directory,
            labels=np.array([record["label"] for record in records], dtype=np.int64),
            poisoned=np.array([record["poisoned"] for record in records], dtype=bool),
            source_index=np.array([record["source_index"] for record in records], dtype=np.int64),
            texts=[record["text"] for record in records],
            file_names=[record["file_name"] for record in records],
            class_names=list(manifest["class_names"]),
            manifest=manifest,
            pixel_hashes=[record.get("pixel_hash") for record in records],
        )
    except KeyError as error:
        raise BibaddiffError(f"{metadata_path}: a row lacks the key {error.args[0]!r}") from None


def read_dataset(directory: str | Path) -> ImageDataset:
    """Read a dataset written by :func:`write_dataset` and check it against its manifest."""
    records = read_records(directory)
    directory = records.directory
    images = records.images_at(np.arange(len(records)))
    dataset = ImageDataset(
        images=images,
        labels=records.labels,
        class_names=records.class_names,
        poisoned=records.poisoned,
        source_index=records.source_index,
        texts=records.texts,
        manifest=records.manifest,
    )
    if content_hash(dataset) != records.manifest["content_hash"]:
        changed = [name for name, image, saved in zip(records.file_names, images, records.pixel_hashes)
                   if saved is not None and pixel_hash(image) != saved]
        if changed:
            raise BibaddiffError(f"{directory}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} changed "
                                 f"after the folder was written ({len(changed)} file(s) whose pixels no longer match "
                                 "metadata.jsonl); delete the folder and rerun to rebuild it")
        raise BibaddiffError(f"{directory}: content does not match the hash in manifest.json (files changed?)")
    return dataset


def _read_png(path: Path, channels: int) -> np.ndarray:
    pixels = np.asarray(_open_image(path).convert("L" if channels == 1 else "RGB"))
    return pixels[..., None] if channels == 1 else pixels


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise BibaddiffError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BibaddiffError(f"{path}: cannot read image ({error})") from None


# --------------------------------------------------------------------------------------------- sources


def load_source(config: dict[str, Any]) -> tuple[ImageDataset, ImageDataset]:
    """Load a (train, held-out) pair from a dataset source described by the ``dataset`` config section."""
    source = config.get("source")
    if source not in SOURCES:
        raise BibaddiffError(f"dataset.source must be one of {', '.join(SOURCES)}; got {source!r}")
    image_size = int(config.get("image_size", 0))
    if image_size < 4:
        raise BibaddiffError(f"dataset.image_size must be at least 4; got {config.get('image_size')!r}")
    loader = {"digits": _load_digits, "fashion_mnist": _load_idx, "idx": _load_idx, "cifar10": _load_cifar10,
              "imagefolder": _load_imagefolder}[source]
    train, heldout = loader(config, image_size)
    cap = config.get("max_images_per_class")
    seed = int(config.get("split_seed", 0))
    if cap:
        train = _cap_per_class(train, int(cap), seed)
        heldout = _cap_per_class(heldout, max(1, int(cap) // 4), seed + 1)
    template = config.get("caption_template", DEFAULT_CAPTION)
    prompts = caption_labels(np.arange(train.num_classes), train.class_names, template)
    for part in (train, heldout):
        # Per-image captions (a caption file) are kept; every other image gets its class caption.
        if part.manifest.get("captions") is None:
            part.texts = caption_labels(part.labels, part.class_names, template)
        part.manifest["class_prompts"] = prompts
    return train, heldout


def resize_images(images: np.ndarray, size: int, resample: int = Image.NEAREST) -> np.ndarray:
    """Resize a uint8 (N, H, W, C) batch to (N, size, size, C); a no-op when already that size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    channels = images.shape[-1]
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if channels == 1 else image, mode=mode)
        resized = np.asarray(pil.resize((size, size), resample=resample))
        out[i] = resized[..., None] if channels == 1 else resized
    return out


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 8, 8) pixel values 0..16 and their labels, as ``load_digits`` returns
    them. The bundled CSV is read directly when it is where scikit-learn keeps it, because importing scikit-learn
    takes seconds and every snakemake call counts the digits' classes while it validates the config."""
    package = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    bundled = (Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
               if package and package.submodule_search_locations else None)
    if bundled is not None and bundled.is_file():
        table = np.loadtxt(bundled, delimiter=",")
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels = digits.images, digits.target.astype(np.int64)
    # Read once per process (config validation counts both splits); shared, so nobody may change them in place.
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def digits_split(config: dict[str, Any], num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) indices of the digits split by ``heldout_fraction`` and ``split_seed``."""
    fraction = float(config.get("heldout_fraction", 0.165))
    if not 0.0 < fraction < 1.0:
        raise BibaddiffError(f"dataset.heldout_fraction must lie in (0, 1); got {fraction}")
    order = np.random.default_rng(int(config.get("split_seed", 0))).permutation(num_images)
    n_heldout = int(round(fraction * num_images))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def _load_digits(config: dict[str, Any], image_size: int) -> tuple[ImageDataset, ImageDataset]:
    pixels, labels = digits_arrays()
    # Pixel values are 0..16; the nearest-neighbour upsampling keeps the strokes sharp.
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = grey_to_channels(resize_images(images, image_size, Image.NEAREST), config)
    train_idx, heldout_idx = digits_split(config, len(images))
    class_names = [str(i) for i in range(10)]
    manifest = {"source": "digits"}
    return (
        ImageDataset(images[train_idx], labels[train_idx], class_names, source_index=train_idx, manifest=manifest),
        ImageDataset(images[heldout_idx], labels[heldout_idx], class_names, source_index=heldout_idx, manifest=manifest),
    )


def grey_to_channels(images: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """One-channel uint8 images (N, H, W, 1) as the config asks: three identical channels with ``dataset.rgb``
    (Stable Diffusion's VAE takes RGB; the images stay grey), else unchanged."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
        raise BibaddiffError(f"grey images must be uint8 of shape (N, H, W, 1); got {images.dtype} {images.shape}")
    return np.repeat(images, 3, axis=-1) if config.get("rgb", False) else images


# --------------------------------------------------------------------------------------------- IDX files
# The format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number, 0x00 0x00, a type
# code (0x08: unsigned bytes) and the number of dimensions, then each dimension's size as a big-endian uint32, then
# the values in C order. Images are 0x00000803 (N x rows x columns), labels 0x00000801 (N).

IDX_UNSIGNED_BYTES = 0x08
IDX_DIMENSIONS = {"images": 3, "labels": 1}
# File name prefixes of the MNIST layout: the training split, and the test split that is held out.
IDX_SPLIT_PREFIXES = {"train": "train", "heldout": "t10k"}
GZIP_MAGIC = b"\x1f\x8b"


def idx_file_names(split: str, kind: str) -> list[str]:
    """The names an IDX file of ``split`` (train, heldout) and ``kind`` (images, labels) may have, in the order they
    are looked for: MNIST's own ``train-images-idx3-ubyte`` (Debian's Fashion-MNIST gzips it: ``...-ubyte.gz``) and
    the ``train-images.idx3-ubyte`` of some unpacked copies, each plain before gzipped (plain reads faster)."""
    if split not in IDX_SPLIT_PREFIXES or kind not in IDX_DIMENSIONS:
        raise BibaddiffError(f"IDX files are of split {' or '.join(IDX_SPLIT_PREFIXES)} and kind "
                             f"{' or '.join(IDX_DIMENSIONS)}; got {split!r}, {kind!r}")
    prefix, dimensions = IDX_SPLIT_PREFIXES[split], IDX_DIMENSIONS[kind]
    stems = [f"{prefix}-{kind}-idx{dimensions}-ubyte", f"{prefix}-{kind}.idx{dimensions}-ubyte"]
    return [name for stem in stems for name in (stem, stem + ".gz")]


def idx_root(config: dict[str, Any]) -> Path:
    """The folder of an IDX source's four files: ``dataset.root``, for fashion_mnist by default where Debian's
    dataset-fashion-mnist package puts them; one line says how to get them when it is not a folder."""
    source = config.get("source")
    if source not in IDX_SOURCES:
        raise BibaddiffError(f"dataset.source must be one of {', '.join(IDX_SOURCES)} to read IDX files; got {source!r}")
    root = config.get("root") or (FASHION_MNIST_ROOT if source == "fashion_mnist" else None)
    if not root:
        raise BibaddiffError("dataset.root must name a local folder of IDX files for source idx "
                             "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                             "t10k-labels-idx1-ubyte, each plain or .gz)")
    path = Path(root).expanduser()
    if not path.is_dir():
        how = ("install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set "
               "dataset.root to a folder with Fashion-MNIST's four IDX files" if source == "fashion_mnist" else
               "set dataset.root to a folder with the four IDX files")
        raise BibaddiffError(f"dataset.root: {root} is not a folder; {how}")
    return path


def idx_file(root: str | Path, split: str, kind: str) -> Path:
    """The IDX file of ``split`` and ``kind`` in ``root`` (see :func:`idx_file_names`); one line names what is
    missing, or says that ``root`` holds no IDX file at all."""
    root = Path(root)
    names = idx_file_names(split, kind)
    for name in names:
        if (root / name).is_file():
            return root / name
    if not any("idx" in path.name and "-ubyte" in path.name for path in root.iterdir()):
        expected = ", ".join(idx_file_names(s, k)[0] for s in IDX_SPLIT_PREFIXES for k in IDX_DIMENSIONS)
        raise BibaddiffError(f"dataset.root: {root} holds no IDX files; expected {expected} (each plain or .gz)")
    raise BibaddiffError(f"dataset.root: {root} has no {names[0]} (nor {names[0]}.gz); expected the "
                         f"{'held-out (test)' if split == 'heldout' else 'training'} {kind} there")


def _open_idx(path: Path) -> Any:
    """A binary reader of ``path``, decompressing when the file starts with gzip's magic bytes (whatever its name)."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == GZIP_MAGIC
        return gzip.open(path, "rb") if compressed else open(path, "rb")
    except OSError as error:
        raise BibaddiffError(f"{path}: cannot open ({error.strerror or error})") from None


def _read_exactly(handle: Any, path: Path, size: int, what: str) -> bytes:
    try:
        data = handle.read(size)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a cut gzip stream ends in EOFError
        raise BibaddiffError(f"{path}: not a readable gzip file ({error})") from None
    if len(data) != size:
        raise BibaddiffError(f"{path}: ends after {len(data)} bytes of {what}; expected {size}")
    return data


def _idx_shape(handle: Any, path: Path, kind: str) -> tuple[int, ...]:
    """The sizes in the header of an IDX file of ``kind``, after its magic number is checked."""
    dimensions = IDX_DIMENSIONS[kind]
    expected_magic = (IDX_UNSIGNED_BYTES << 8) | dimensions
    magic = int.from_bytes(_read_exactly(handle, path, 4, "the magic number"), "big")
    if magic != expected_magic:
        raise BibaddiffError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX {kind}: "
                             f"unsigned bytes in {dimensions} dimension{'s' if dimensions > 1 else ''})")
    sizes = _read_exactly(handle, path, 4 * dimensions, "the header's sizes")
    return tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(dimensions))


def idx_header(path: str | Path, kind: str) -> tuple[int, ...]:
    """The shape an IDX file of ``kind`` (images, labels) declares, read from its header alone (a few bytes, also
    of a gzipped file); one line names the file when its magic number is not that of ``kind``."""
    if kind not in IDX_DIMENSIONS:
        raise BibaddiffError(f"IDX kind must be one of {', '.join(IDX_DIMENSIONS)}; got {kind!r}")
    path = Path(path)
    with _open_idx(path) as handle:
        return _idx_shape(handle, path, kind)


def read_idx(path: str | Path, kind: str) -> np.ndarray:
    """An IDX file of ``kind`` (images, labels), plain or gzipped, as a writeable uint8 array of the shape its header
    declares; one line names the file when its magic number or its length disagrees with the header."""
    if kind not in IDX_DIMENSIONS:
        raise BibaddiffError(f"IDX kind must be one of {', '.join(IDX_DIMENSIONS)}; got {kind!r}")
    path = Path(path)
    with _open_idx(path) as handle:
        shape = _idx_shape(handle, path, kind)
        # Read straight into the array: the values are held once, as the uint8 they are on disk.
        values = np.empty(shape, np.uint8)
        buffer = memoryview(values.reshape(-1))
        filled = 0
        try:
            while filled < values.size:
                count = handle.readinto(buffer[filled:])
                if not count:
                    break
                filled += count
            trailing = len(handle.read(1))
        except (OSError, EOFError) as error:
            raise BibaddiffError(f"{path}: not a readable gzip file ({error})") from None
    if filled != values.size or trailing:
        declared = " x ".join(map(str, shape))
        holds = f"{filled} bytes" if filled != values.size else "more bytes than that"
        raise BibaddiffError(f"{path}: the header declares {declared} = {values.size} values, but the file holds {holds}")
    return values


def idx_labels(config: dict[str, Any], split: str) -> np.ndarray:
    """The labels of an IDX source's ``split`` (train, heldout), checked against its images file's header (one label
    per image) and, for Fashion-MNIST, against its 10 classes; no image is read."""
    root = idx_root(config)
    labels_path, images_path = idx_file(root, split, "labels"), idx_file(root, split, "images")
    labels = read_idx(labels_path, "labels")
    num_images = idx_header(images_path, "images")[0]
    if num_images != len(labels):
        raise BibaddiffError(f"{images_path}: {num_images} images, but {labels_path.name} holds {len(labels)} labels; "
                             "expected one label per image")
    if config["source"] == "fashion_mnist" and len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise BibaddiffError(f"{labels_path}: label {labels.max()}; Fashion-MNIST's labels are 0..9")
    return labels


def idx_class_folders(config: dict[str, Any]) -> list[str]:
    """The classes of an IDX source: Fashion-MNIST's names, or for ``idx`` the label numbers "0" .. "K-1", K one more
    than the largest training label (``dataset.class_names`` may name them, as it names an image folder's classes)."""
    if config.get("source") == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    labels = idx_labels(config, "train")
    if not len(labels):
        raise BibaddiffError(f"{idx_file(idx_root(config), 'train', 'labels')}: holds no labels")
    return [str(label) for label in range(int(labels.max()) + 1)]


def fit_into_square(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) images fitted into (N, size, size, C) without interpolation where they fit: enlarged by the
    largest whole factor that fits (nearest neighbour: each pixel a k x k block), then centred on black, the
    background of MNIST-style images (28 px into 32: 2 black pixels on every side). Images larger than ``size`` are
    first shrunk by area averaging to fit."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise BibaddiffError(f"images must be uint8 of shape (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise BibaddiffError(f"size must be a positive integer; got {size!r}")
    height, width = images.shape[1:3]
    if height == 0 or width == 0:
        raise BibaddiffError(f"images must have at least one pixel; got shape {images.shape}")
    factor = size // max(height, width)
    if factor >= 1:
        fitted = images if factor == 1 else images.repeat(factor, axis=1).repeat(factor, axis=2)
    else:
        scale = size / max(height, width)
        fitted = _shrink(images, max(1, round(height * scale)), max(1, round(width * scale)))
    out = np.zeros((len(images), size, size, images.shape[-1]), np.uint8)
    top, left = (size - fitted.shape[1]) // 2, (size - fitted.shape[2]) // 2
    out[:, top:top + fitted.shape[1], left:left + fitted.shape[2]] = fitted
    return out


def _shrink(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaged (Pillow's box filter) uint8 images of ``height`` x ``width``, one image at a time."""
    channels = images.shape[-1]
    out = np.empty((len(images), height, width, channels), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if channels == 1 else image, mode="L" if channels == 1 else "RGB")
        shrunk = np.asarray(pil.resize((width, height), Image.BOX))
        out[i] = shrunk[..., None] if channels == 1 else shrunk
    return out


def _load_idx(config: dict[str, Any], image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST or any IDX folder: the training files, and the test (t10k) files as the held-out split."""
    root = idx_root(config)
    class_names = display_class_names(idx_class_folders(config), config.get("class_names"))
    parts = []
    for split in IDX_SPLIT_PREFIXES:
        labels = idx_labels(config, split)
        if len(labels) and labels.max() >= len(class_names):
            raise BibaddiffError(f"{idx_file(root, split, 'labels')}: label {labels.max()}, but the training labels "
                                 f"name classes 0..{len(class_names) - 1}")
        images_path = idx_file(root, split, "images")
        pixels = read_idx(images_path, "images")
        if len(pixels) != len(labels):  # the file changed since its header was read with the labels
            raise BibaddiffError(f"{images_path}: {len(pixels)} images, but {len(labels)} labels; expected one label "
                                 "per image")
        fitted = fit_into_square(pixels[..., None], image_size)
        del pixels  # the file's pixels go before the fitted ones are repeated into three channels (rgb)
        images = grey_to_channels(fitted, config)
        del fitted
        manifest = {"source": config["source"], "idx_files": [images_path.name, idx_file(root, split, "labels").name]}
        parts.append(ImageDataset(images, labels, class_names, manifest=manifest))
    return parts[0], parts[1]


def check_cifar10_root(config: dict[str, Any]) -> str:
    """The CIFAR-10 root of a dataset config, checked: it must hold torchvision's folder unless downloading."""
    root = config.get("root")
    if not root:
        raise BibaddiffError("dataset.root must name a local folder for source cifar10")
    if not config.get("download") and not (Path(root) / "cifar-10-batches-py").is_dir():
        raise BibaddiffError(
            f"dataset.root: {root} has no cifar-10-batches-py folder; point it at a local CIFAR-10 copy "
            "or set dataset.download: true"
        )
    return root


def _load_cifar10(config: dict[str, Any], image_size: int) -> tuple[ImageDataset, ImageDataset]:
    from torchvision.datasets import CIFAR10

    root = check_cifar10_root(config)
    download = bool(config.get("download", False))
    parts = []
    for train in (True, False):
        try:
            cifar = CIFAR10(root=root, train=train, download=download)
        except RuntimeError as error:
            raise BibaddiffError(f"dataset.root: {root}: {error}") from None
        images = resize_images(np.asarray(cifar.data, dtype=np.uint8), image_size, Image.BICUBIC)
        parts.append(ImageDataset(images, np.asarray(cifar.targets), list(cifar.classes), manifest={"source": "cifar10"}))
    return parts[0], parts[1]


def imagefolder_classes(root: str | Path, split: str = "train") -> list[str]:
    """Class names of an image-folder tree (``root/<split>/<class>/<image>``), sorted."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise BibaddiffError(f"dataset.root: {split_dir} is not a folder (expected root/{split}/<class>/<images>)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BibaddiffError(f"dataset.root: {split_dir} has no class folders")
    return classes


def display_class_names(folders: list[str], names: dict[str, str] | None) -> list[str]:
    """The class name of each folder: ``names[folder]`` where given (e.g. a WordNet id to "garbage truck")."""
    if not names:
        return list(folders)
    unknown = sorted(set(names) - set(folders))
    if unknown:
        raise BibaddiffError(f"dataset.class_names: {', '.join(map(repr, unknown))} is not a class folder; "
                             f"folders are {', '.join(folders)}")
    return [names.get(folder, folder) for folder in folders]


def imagefolder_files(root: str | Path, split: str, class_names: list[str]) -> list[tuple[Path, int]]:
    """(image path, label) pairs of an image-folder split, in a stable order."""
    files = []
    for label, name in enumerate(class_names):
        class_dir = Path(root) / split / name
        if not class_dir.is_dir():
            raise BibaddiffError(f"dataset.root: {class_dir} is missing (class {name!r} exists in the train split)")
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append((path, label))
    return files


def _load_imagefolder(config: dict[str, Any], image_size: int) -> tuple[ImageDataset, ImageDataset]:
    root = config.get("root")
    if not root or not Path(root).is_dir():
        raise BibaddiffError(f"dataset.root: {root!r} is not a folder; image folders need root/train and root/val")
    folders = imagefolder_classes(root, "train")
    class_names = display_class_names(folders, config.get("class_names"))
    channels = 1 if config.get("grayscale", False) else 3
    captions = read_caption_file(config["captions"]) if config.get("captions") else None
    parts = []
    for split in ("train", config.get("heldout_split", "val")):
        files = imagefolder_files(root, split, folders)
        if not files:
            raise BibaddiffError(f"dataset.root: {Path(root) / split} holds no images")
        # Filled in place rather than stacked from a list, which held the pixels twice.
        images = np.empty((len(files), image_size, image_size, channels), np.uint8)
        for row, (path, _) in enumerate(tqdm(files, desc=f"reading {split}", unit="img", mininterval=2)):
            images[row] = _load_square(path, image_size, channels)
        labels = np.array([label for _, label in files])
        texts = None
        if captions is not None:
            texts = _captions_of(files, root, captions, config["captions"], required=split == "train", class_names=class_names,
                                 template=config.get("caption_template", DEFAULT_CAPTION))
        manifest = {"source": "imagefolder", "captions": config.get("captions") if captions is not None else None}
        parts.append(ImageDataset(images, labels, class_names, texts=texts, manifest=manifest))
    return parts[0], parts[1]


def read_caption_file(path: str | Path) -> dict[str, str]:
    """A caption file: JSON lines ``{"file_name": "<path under dataset.root>", "text": "<caption>"}``."""
    path = Path(path)
    if not path.is_file():
        raise BibaddiffError(f"dataset.captions: {path} not found")
    captions = {}
    with open(path) as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BibaddiffError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) or not isinstance(record.get("text"), str):
                raise BibaddiffError(f"{path}:{line_number}: each line needs string keys file_name and text")
            captions[Path(record["file_name"]).as_posix()] = record["text"]
    if not captions:
        raise BibaddiffError(f"dataset.captions: {path} holds no captions")
    return captions


def _captions_of(files: list[tuple[Path, int]], root: str | Path, captions: dict[str, str], caption_path: str,
                 required: bool, class_names: list[str], template: str) -> list[str]:
    """The caption of every image; training images must all have one, held-out ones fall back to the class caption."""
    texts, missing = [], []
    for path, label in files:
        key = path.relative_to(root).as_posix()
        if key in captions:
            texts.append(captions[key])
        else:
            missing.append(key)
            texts.append(template.format(class_name=class_names[label]))
    if required and missing:
        raise BibaddiffError(f"dataset.captions: {caption_path} has no caption for {len(missing)} training image(s), "
                             f"e.g. {missing[0]!r} (file_name is the path under dataset.root)")
    return texts


def _load_square(path: Path, size: int, channels: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop, as image-classification pipelines do."""
    image = _open_image(path).convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)))
    return pixels[..., None] if channels == 1 else pixels


def _cap_per_class(dataset: ImageDataset, cap: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    keep = []
    for label in range(dataset.num_classes):
        members = np.flatnonzero(dataset.labels == label)
        keep.extend(rng.permutation(members)[:cap] if len(members) > cap else members)
    return dataset.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def scaled_class_counts(counts_per_class: Any, total: int) -> np.ndarray:
    """``total`` images split over the classes in the proportions of ``counts_per_class`` (largest remainders; ties go
    to the lower class index), so that a generated set keeps a training set's class balance. The counts of
    ``counts_per_class`` themselves when ``total`` is their sum."""
    counts = np.asarray(counts_per_class)
    if counts.ndim != 1 or len(counts) == 0 or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0 \
            or counts.sum() == 0:
        raise BibaddiffError(f"counts_per_class must be non-negative integers, not all zero; got {counts_per_class!r}")
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
        raise BibaddiffError(f"total must be a non-negative integer; got {total!r}")
    exact = counts * (int(total) / counts.sum())
    scaled = np.floor(exact).astype(np.int64)
    # Stable sort on the negated remainders: the largest remainders first, the lower index first among equals.
    order = np.argsort(-(exact - scaled), kind="stable")
    scaled[order[:int(total) - int(scaled.sum())]] += 1
    return scaled
