"""Tests of bibaddiff.config: schema validation, defaults and one-line errors naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from bibaddiff.config import load_schema, validate_config
from bibaddiff.errors import BibaddiffError

REPO = Path(__file__).resolve().parents[1]


def schema():
    return load_schema(REPO / "schemas" / "config.schema.yaml")


def load(name: str) -> dict:
    with open(REPO / name) as handle:
        return yaml.safe_load(handle)


def tiny():
    return load("tests/configs/tiny.yaml")


def error_of(config: dict) -> str:
    with pytest.raises(BibaddiffError) as info:
        validate_config(config, schema())
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ accepted configs


def test_default_config_is_valid_and_unchanged():
    config = load("config.yaml")
    before = copy.deepcopy(config)
    filled = validate_config(config, schema())
    assert config == before  # the input is not modified
    assert filled["dataset"]["source"] == "digits"
    assert filled["target"] == 6
    # Defaults for keys config.yaml leaves out.
    assert filled["dataset"]["root"] is None
    assert filled["dataset"]["download"] is False
    assert filled["dataset"]["grayscale"] is False
    assert filled["dataset"]["heldout_split"] == "val"
    assert filled["dataset"]["max_images_per_class"] is None
    assert filled["dataset"]["caption_template"] == "A photo of a {class_name}"
    assert filled["triggers"]["patch"]["margin"] == 0
    assert filled["diffusion"]["model"]["dropout"] == 0.0
    assert filled["diffusion"]["training"]["beta_schedule"] == "squaredcos_cap_v2"
    assert filled["diffusion"]["training"]["num_train_timesteps"] == 1000
    # Values given in config.yaml are kept.
    assert filled["diffusion"]["training"]["steps"] == 4000
    assert filled["generation"]["guidance_scales"] == [0, 1, 2, 3]
    assert filled["device"] == "cpu"


def test_tiny_config_is_valid_and_defaults_are_filled():
    config = tiny()
    filled = validate_config(config, schema())
    assert "heldout_fraction" not in config["dataset"]
    assert filled["dataset"]["heldout_fraction"] == 0.165
    assert filled["dataset"]["split_seed"] == 0
    assert filled["dataset"]["max_images_per_class"] == 20  # given
    assert filled["triggers"]["patch"]["corner"] == "bottom-right"  # default inside additionalProperties
    assert filled["triggers"]["patch"]["margin"] == 0
    assert filled["poisoning"]["seed"] == 0
    assert filled["diffusion"]["model"]["layers_per_block"] == 1
    assert filled["diffusion"]["model"]["attention"] is False
    assert filled["diffusion"]["model"]["block_out_channels"] == [8, 16]  # given
    assert filled["diffusion"]["training"]["learning_rate"] == 0.001
    assert filled["diffusion"]["training"]["ema_decay"] == 0.998
    assert filled["diffusion"]["training"]["label_dropout"] == 0.15
    assert filled["diffusion"]["training"]["mixed_precision"] == "bf16"
    assert filled["diffusion"]["training"]["threads"] == 1
    assert filled["generation"]["seed"] == 1234
    assert filled["generation"]["num_images"] == 16  # given
    assert filled["judges"]["architecture"] == "small_cnn"
    assert filled["judges"]["accuracy_floor"] == 0.95
    assert filled["judges"]["threads"] == 1  # given
    assert filled["device"] == "cpu"


def test_filled_config_validates_again():
    filled = validate_config(tiny(), schema())
    assert validate_config(filled, schema()) == filled


def test_other_conditions_default_is_empty():
    config = tiny()
    del config["generation"]["other_conditions"]
    assert validate_config(config, schema())["generation"]["other_conditions"] == []


def test_imagefolder_config(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(5):
                (tmp_path / split / name / f"{k}.png").write_bytes(b"")  # counted, not read
    config = tiny()
    config["dataset"] = {"name": "folder", "source": "imagefolder", "root": str(tmp_path), "image_size": 8}
    config["target"] = 1
    config["generation"]["other_conditions"] = [0]
    filled = validate_config(config, schema())
    assert filled["dataset"]["root"] == str(tmp_path)
    config["target"] = 2
    message = error_of(config)
    assert "target" in message and "0..1" in message and "a, b" in message


# ------------------------------------------------------------------------------------------ broken configs


def test_unknown_trigger_type():
    config = tiny()
    config["triggers"]["patch"]["type"] = "sticker"
    message = error_of(config)
    assert "triggers.patch.type" in message
    assert "'sticker'" in message
    for allowed in ("patch", "blend", "stamp"):
        assert allowed in message


@pytest.mark.parametrize("ratio, words", [(1.0, "maximum of 1"), (-0.1, "minimum of 0"), (0.0, "minimum of 0")])
def test_ratio_outside_open_unit_interval(ratio, words):
    config = tiny()
    config["poisoning"]["ratios"] = [0.1, ratio]
    message = error_of(config)
    assert "poisoning.ratios" in message
    assert str(ratio) in message and words in message


@pytest.mark.parametrize("target", [12, 10])
def test_target_not_a_class(target):
    config = tiny()
    config["target"] = target
    message = error_of(config)
    assert message.startswith("config key target:")
    assert str(target) in message
    assert "0..9" in message


def test_negative_target():
    config = tiny()
    config["target"] = -1
    assert "target" in error_of(config)


def test_more_poison_than_non_target_images():
    config = load("config.yaml")
    config["poisoning"]["ratios"] = [0.95]
    message = error_of(config)
    assert "poisoning.ratios" in message
    assert "0.95" in message
    assert "1425" in message  # round(0.95 * 1500)
    assert "allowed up to" in message


def test_more_poison_with_capped_dataset():
    config = tiny()  # 20 images per class: 200, of which 180 lie outside the target
    config["poisoning"]["ratios"] = [0.91]
    message = error_of(config)
    assert "182" in message and "180" in message and "0.900" in message
    config["poisoning"]["ratios"] = [0.9]
    validate_config(config, schema())


@pytest.mark.parametrize("source", ["cifar10", "imagefolder"])
def test_missing_dataset_root(source):
    config = tiny()
    config["dataset"]["source"] = source
    config["dataset"]["image_size"] = 8
    message = error_of(config)
    assert "dataset.root" in message
    assert source in message


def test_cifar10_root_without_batches(tmp_path):
    config = tiny()
    config["dataset"].update(source="cifar10", root=str(tmp_path))
    message = error_of(config)
    assert "dataset.root" in message and str(tmp_path) in message


def test_imagefolder_root_not_a_folder(tmp_path):
    config = tiny()
    config["dataset"].update(source="imagefolder", root=str(tmp_path / "missing"))
    assert "dataset.root" in error_of(config)


def test_empty_guidance_list():
    config = tiny()
    config["generation"]["guidance_scales"] = []
    message = error_of(config)
    assert "generation.guidance_scales" in message


def test_negative_guidance_scale():
    config = tiny()
    config["generation"]["guidance_scales"] = [1, -2]
    assert "generation.guidance_scales" in error_of(config)


def test_unknown_top_level_key():
    config = tiny()
    config["learning_rate"] = 0.1
    message = error_of(config)
    assert "learning_rate" in message
    assert "top level" in message


def test_unknown_nested_key():
    config = tiny()
    config["diffusion"]["training"]["stepz"] = 5
    message = error_of(config)
    assert "diffusion.training" in message and "stepz" in message


def test_other_conditions_containing_target():
    config = tiny()
    config["generation"]["other_conditions"] = [1, 6]
    message = error_of(config)
    assert "generation.other_conditions" in message
    assert "6" in message and "target" in message


def test_other_conditions_not_a_class():
    config = tiny()
    config["generation"]["other_conditions"] = [11]
    message = error_of(config)
    assert "generation.other_conditions" in message and "0..9" in message


def test_missing_required_section():
    config = tiny()
    del config["judges"]
    assert "judges" in error_of(config)


def test_unknown_source():
    config = tiny()
    config["dataset"]["source"] = "mnist"
    message = error_of(config)
    assert "dataset.source" in message
    for allowed in ("digits", "cifar10", "imagefolder"):
        assert allowed in message


def test_trigger_too_large_for_images():
    config = tiny()
    config["triggers"]["patch"]["size"] = 9  # image_size is 8
    message = error_of(config)
    assert "triggers.patch.size" in message and "[1, 8]" in message


def test_image_size_not_divisible_for_model():
    config = tiny()
    config["dataset"]["image_size"] = 9
    config["diffusion"]["model"]["block_out_channels"] = [8, 16, 32]
    message = error_of(config)
    assert "dataset.image_size" in message and "divisible by 4" in message


def test_wrong_type():
    config = tiny()
    config["diffusion"]["training"]["steps"] = "many"
    message = error_of(config)
    assert "diffusion.training.steps" in message and "integer" in message
