"""Inputs of the tests of imported models: a DDPM folder of the tiny config's shape, and the tiny config importing
models instead of training them."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
DIGITS = [str(i) for i in range(10)]


def write_ddpm(folder: Path, num_classes: int = 10, image_size: int = 8, channels: int = 1, seed: int = 0) -> Path:
    """A bibaddiff DDPM folder of the tiny config's shape (random weights)."""
    import torch

    from bibaddiff.diffusion.base import ModelInfo
    from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model

    torch.manual_seed(seed)
    unet = build_unet(image_size, channels, num_classes, block_out_channels=[8, 16], norm_num_groups=4)
    save_model(folder, unet, build_scheduler(), ModelInfo(num_classes, DIGITS[:num_classes], image_size, channels))
    return folder


def importing(models: dict, base: dict = TINY, **changes) -> dict:
    """``base`` (the tiny config) training nothing, with these imports and dotted keys changed."""
    config = copy.deepcopy(base)
    config["diffusion"]["training"]["seeds"] = []
    config["diffusion"]["training"]["clean_seeds"] = []
    config["imported_models"] = models
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def patch_model(model_path, **entry) -> dict:
    """An import of a DDPM poisoned with the tiny config's patch at 10%, its training set rebuilt (keys given as
    None are left out)."""
    model = {"path": str(model_path), "kind": "ddpm", "trigger": "patch", "poison_ratio": 0.1, "training_data": "rebuild",
             **entry}
    return {key: value for key, value in model.items() if value is not None}
