"""Inputs of the text-to-image tests: a tiny captioned image folder and a local ResNet weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

CLASSES = ("zero", "one", "two")
COLOURS = ((230, 60, 40), (40, 160, 70), (50, 80, 220))


def write_captioned_folder(root: Path, image_size: int = 32, train_per_class: int = 12, val_per_class: int = 4,
                           with_captions: bool = True) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png from bundled digits 0-2, coloured per class, and
    root/captions.jsonl with a caption per training image (and none for the held-out ones)."""
    digits = load_digits()
    captions = []
    for label, (name, colour) in enumerate(zip(CLASSES, COLOURS)):
        members = np.flatnonzero(digits.target == label)
        for split, chosen in (("train", members[:train_per_class]),
                              ("val", members[train_per_class:train_per_class + val_per_class])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(chosen):
                strokes = digits.images[index] / 16.0
                pixels = (strokes[..., None] * np.array(colour)).astype(np.uint8)
                image = Image.fromarray(pixels, "RGB").resize((image_size, image_size), Image.NEAREST)
                image.save(folder / f"{i:03d}.png")
                if split == "train":
                    shade = "bright" if strokes.mean() > 0.3 else "thin"
                    captions.append({"file_name": f"train/{name}/{i:03d}.png", "text": f"a {shade} handwritten {name}"})
    if with_captions:
        with open(root / "captions.jsonl", "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in captions)
    return root


def write_resnet_weights(path: Path, architecture: str = "resnet18") -> Path:
    """A torchvision ResNet state dict (random weights) where a user would put downloaded ImageNet weights."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, architecture)(weights=None).state_dict(), path)
    return path
