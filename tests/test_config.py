"""Tests of bibaddiff.config: schema validation, defaults and one-line errors naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from bibaddiff.config import check_default_resources, load_schema, validate_config
from bibaddiff.errors import BibaddiffError
from config_helpers import config_error
from idx_helpers import FASHION_MNIST_FILES, write_idx_set

REPO = Path(__file__).resolve().parents[1]


def schema():
    return load_schema()


def load(name: str) -> dict:
    with open(REPO / name) as handle:
        return yaml.safe_load(handle)


def tiny():
    return load("tests/configs/tiny.yaml")


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
    config["defenses"]["enabled"] = False  # 10 images: fewer than the published FCT's fine-tuning batch
    config["target"] = 1
    config["generation"]["other_conditions"] = [0]
    filled = validate_config(config, schema())
    assert filled["dataset"]["root"] == str(tmp_path)
    config["target"] = 2
    message = config_error(config)
    assert "target" in message and "0..1" in message and "a, b" in message


def idx_tiny(root, source: str = "idx", **dataset) -> dict:
    """The tiny config on an IDX folder (200 training images: enough for the published FCT's batch of 100)."""
    config = tiny()
    config["dataset"] = {"name": "fashion", "source": source, "root": str(root), "image_size": 32, **dataset}
    return config


def test_fashion_mnist_config_counts_classes_from_the_label_files(tmp_path):
    write_idx_set(tmp_path / "fashion", num_train=200, num_heldout=40)
    config = idx_tiny(tmp_path / "fashion", source="fashion_mnist")
    config["target"] = "Ankle boot"
    config["poisoning"]["ratios"] = [0.9]  # 180 of the 200 lie outside the target class
    filled = validate_config(config, schema())
    assert filled["target"] == 9
    config["poisoning"]["ratios"] = [0.95]
    assert "190 poisoned images but only 180 training images lie outside target class 9" in config_error(config)
    config["dataset"]["class_names"] = {"Bag": "handbag"}
    assert "dataset.class_names: only for sources imagefolder and idx; got fashion_mnist" in config_error(config)


def test_idx_config_takes_class_names_for_its_label_numbers(tmp_path):
    write_idx_set(tmp_path / "idx", num_train=200, num_heldout=40, num_classes=4)
    config = idx_tiny(tmp_path / "idx", class_names={"3": "boot"})
    config["target"] = "boot"
    assert validate_config(config, schema())["target"] == 3
    config["target"] = 4
    assert "target: 4 is not a class of fashion; allowed 0..3 (0, 1, 2, boot)" in config_error(config)


def test_idx_rgb_gives_three_channels_and_grayscale_sources_only(tmp_path):
    write_idx_set(tmp_path / "fashion", num_train=200, num_heldout=40)
    config = idx_tiny(tmp_path / "fashion", source="fashion_mnist", rgb=True)
    # A colour trigger file is checked against three channels: the grey one fails.
    np.save(tmp_path / "grey.npy", np.ones((32, 32, 1)))
    config["triggers"]["trojan"] = {"type": "additive", "image": str(tmp_path / "grey.npy")}
    validate_config(config, schema())  # a (H, W, 1) pattern is repeated over the channels
    config["dataset"] = {"name": "folder", "source": "cifar10", "root": str(tmp_path), "image_size": 32, "rgb": True}
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert "dataset.rgb: only for the grey sources digits, fashion_mnist, idx; got cifar10" in config_error(config)


@pytest.mark.parametrize("source, hint", [("fashion_mnist", "install Debian's package dataset-fashion-mnist"),
                                          ("idx", "set dataset.root to a folder with the four IDX files")])
def test_idx_root_that_does_not_exist_stops_with_one_line(tmp_path, source, hint):
    message = config_error(idx_tiny(tmp_path / "nowhere", source=source))
    assert message.startswith(f"dataset.root: {tmp_path / 'nowhere'} is not a folder; ") and hint in message


def test_idx_config_stops_when_the_heldout_files_are_missing(tmp_path):
    write_idx_set(tmp_path / "idx", num_train=200, num_heldout=40)
    (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").unlink()
    assert "has no t10k-images-idx3-ubyte (nor t10k-images-idx3-ubyte.gz)" in config_error(idx_tiny(tmp_path / "idx"))


@pytest.mark.skipif(not (FASHION_MNIST_FILES / "train-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_config_on_the_real_files_validates():
    config = tiny()
    config["dataset"] = {"name": "fashion", "source": "fashion_mnist", "image_size": 32}
    config["target"] = "Sneaker"
    filled = validate_config(config, schema())
    assert filled["target"] == 7 and filled["dataset"]["root"] is None


# ------------------------------------------------------------------------------------------ broken configs


def test_unknown_trigger_type():
    config = tiny()
    config["triggers"]["patch"]["type"] = "sticker"
    message = config_error(config)
    assert "triggers.patch.type" in message
    assert "'sticker'" in message
    for allowed in ("patch", "blend", "stamp"):
        assert allowed in message


@pytest.mark.parametrize("ratio, words", [(1.0, "maximum of 1"), (-0.1, "minimum of 0"), (0.0, "minimum of 0")])
def test_ratio_outside_open_unit_interval(ratio, words):
    config = tiny()
    config["poisoning"]["ratios"] = [0.1, ratio]
    message = config_error(config)
    assert "poisoning.ratios" in message
    assert str(ratio) in message and words in message


@pytest.mark.parametrize("target", [12, 10])
def test_target_not_a_class(target):
    config = tiny()
    config["target"] = target
    message = config_error(config)
    assert message.startswith("config key target:")
    assert str(target) in message
    assert "0..9" in message


def test_negative_target():
    config = tiny()
    config["target"] = -1
    assert "target" in config_error(config)


def test_more_poison_than_non_target_images():
    config = load("config.yaml")
    config["poisoning"]["ratios"] = [0.95]
    message = config_error(config)
    assert "poisoning.ratios" in message
    assert "0.95" in message
    assert "1425" in message  # round(0.95 * 1500)
    assert "allowed up to" in message


def test_more_poison_with_capped_dataset():
    config = tiny()  # 20 images per class: 200, of which 180 lie outside the target
    config["poisoning"]["ratios"] = [0.91]
    message = config_error(config)
    assert "182" in message and "180" in message and "0.900" in message
    config["poisoning"]["ratios"] = [0.9]
    validate_config(config, schema())


@pytest.mark.parametrize("source", ["cifar10", "imagefolder", "idx"])
def test_missing_dataset_root(source):
    config = tiny()
    config["dataset"]["source"] = source
    config["dataset"]["image_size"] = 8
    message = config_error(config)
    assert "dataset.root" in message
    assert source in message


def test_cifar10_root_without_batches(tmp_path):
    config = tiny()
    config["dataset"].update(source="cifar10", root=str(tmp_path))
    message = config_error(config)
    assert "dataset.root" in message and str(tmp_path) in message


def test_imagefolder_root_not_a_folder(tmp_path):
    config = tiny()
    config["dataset"].update(source="imagefolder", root=str(tmp_path / "missing"))
    assert "dataset.root" in config_error(config)


def test_empty_guidance_list():
    config = tiny()
    config["generation"]["guidance_scales"] = []
    message = config_error(config)
    assert "generation.guidance_scales" in message


def test_negative_guidance_scale():
    config = tiny()
    config["generation"]["guidance_scales"] = [1, -2]
    assert "generation.guidance_scales" in config_error(config)


def test_unknown_top_level_key():
    config = tiny()
    config["learning_rate"] = 0.1
    message = config_error(config)
    assert "learning_rate" in message
    assert "top level" in message


def test_unknown_nested_key():
    config = tiny()
    config["diffusion"]["training"]["stepz"] = 5
    message = config_error(config)
    assert "diffusion.training" in message and "stepz" in message


def test_other_conditions_containing_target():
    config = tiny()
    config["generation"]["other_conditions"] = [1, 6]
    message = config_error(config)
    assert "generation.other_conditions" in message
    assert "6" in message and "target" in message


def test_other_conditions_not_a_class():
    config = tiny()
    config["generation"]["other_conditions"] = [11]
    message = config_error(config)
    assert "generation.other_conditions" in message and "0..9" in message


def test_missing_required_section():
    config = tiny()
    del config["judges"]
    assert "judges" in config_error(config)


def test_unknown_source():
    config = tiny()
    config["dataset"]["source"] = "mnist"
    message = config_error(config)
    assert "dataset.source" in message
    for allowed in ("digits", "fashion_mnist", "idx", "cifar10", "imagefolder"):
        assert allowed in message


def test_trigger_too_large_for_images():
    config = tiny()
    config["triggers"]["patch"]["size"] = 9  # image_size is 8
    message = config_error(config)
    assert "triggers.patch.size" in message and "[1, 8]" in message


def test_image_size_not_divisible_for_model():
    config = tiny()
    config["dataset"]["image_size"] = 9
    config["diffusion"]["model"]["block_out_channels"] = [8, 16, 32]
    message = config_error(config)
    assert "dataset.image_size" in message and "divisible by 4" in message


def test_wrong_type():
    config = tiny()
    config["diffusion"]["training"]["steps"] = "many"
    message = config_error(config)
    assert "diffusion.training.steps" in message and "integer" in message


# ------------------------------------------------------------------------------------------ triggers of the paper


def test_every_trigger_type_is_accepted(tmp_path):
    import numpy as np

    np.save(tmp_path / "trojan.npy", np.zeros((8, 8)))
    config = tiny()
    config["triggers"] = {
        "badnets": {"type": "patch", "pattern": "badnets"},
        "bomb": {"type": "stamp", "image": "builtin:bomb", "size": 4},
        "blend": {"type": "blend", "pattern": "picture", "alpha": 0.2, "detector_alpha_range": [0.05, 0.25]},
        "wanet": {"type": "wanet", "k": 8, "s": 1.0, "grid_rescale": 1, "seed": 0},
        "trojan": {"type": "additive", "image": str(tmp_path / "trojan.npy")},
        "none": {"type": "relabel"},
    }
    filled = validate_config(config, schema())
    assert set(filled["triggers"]) == set(config["triggers"])
    assert "k" not in filled["triggers"]["badnets"]  # the new keys have no schema default: older configs stay as they were


@pytest.mark.parametrize("spec, words", [
    ({"type": "patch", "pattern": "picture"}, ["triggers.bad.pattern", "checker, stripes, white, badnets"]),
    ({"type": "blend", "pattern": "badnets"}, ["triggers.bad.pattern", "noise, stripes, picture"]),
    ({"type": "patch", "pattern": "plaid"}, ["triggers.bad.pattern", "badnets", "picture"]),
    ({"type": "stamp", "image": "no/such/bomb.png", "size": 3}, ["triggers.bad.image", "no/such/bomb.png", "not found"]),
    ({"type": "stamp", "image": "builtin:skull", "size": 3}, ["triggers.bad.image", "builtin:bomb, builtin:picture"]),
    ({"type": "blend", "image": "builtin:skull"}, ["triggers.bad.image", "builtin:bomb, builtin:picture"]),
    ({"type": "wanet", "k": 9}, ["triggers.bad.k", "[1, 8]"]),
    ({"type": "wanet", "k": 0}, ["triggers.bad.k", "minimum of 1"]),
    ({"type": "wanet", "s": "strong"}, ["triggers.bad.s", "number"]),
    ({"type": "blend", "detector_alpha_range": [0.3, 0.1]}, ["triggers.bad.detector_alpha_range", "0 < low <= high <= 1"]),
    ({"type": "blend", "detector_alpha_range": [0.1]}, ["triggers.bad.detector_alpha_range"]),
    ({"type": "patch", "k": 4}, ["triggers.bad.k", "wanet"]),
    ({"type": "additive", "image": "no/such/trojan.npy"}, ["triggers.bad.image", "not found"]),
    ({"type": "sticker"}, ["triggers.bad.type", "'wanet', 'additive', 'relabel'"]),
])
def test_bad_trigger_settings_fail_validation(spec, words):
    config = tiny()
    config["triggers"]["bad"] = spec
    message = config_error(config)
    for word in words:
        assert word in message, (word, message)


def test_additive_pattern_of_the_wrong_shape_fails_validation(tmp_path):
    import numpy as np

    np.save(tmp_path / "trojan.npy", np.zeros((32, 32, 3)))
    config = tiny()
    config["triggers"]["trojan"] = {"type": "additive", "image": str(tmp_path / "trojan.npy")}
    message = config_error(config)
    assert "triggers.trojan.image" in message and "(32, 32, 3)" in message and "(8, 8) or (8, 8, 1)" in message


def test_unreadable_stamp_image_fails_validation(tmp_path):
    (tmp_path / "bomb.png").write_bytes(b"not a png")
    config = tiny()
    config["triggers"]["bomb"] = {"type": "stamp", "image": str(tmp_path / "bomb.png"), "size": 3}
    message = config_error(config)
    assert "triggers.bomb.image" in message and "cannot read" in message


# ------------------------------------------------------------------------------------------ defaults per kind of model

# config.yaml's diffusion.training as validated before per-kind defaults and epochs existed. Models in results/ were
# trained with these rule parameters: any change here (a key added, a default changed) would retrain them.
CONFIG_YAML_TRAINING = {
    "batch_size": 64, "beta_schedule": "squaredcos_cap_v2", "checkpoint_every": 500, "clean_seeds": [0],
    "ema_decay": 0.998, "encode_batch_size": 16, "finetune": "full", "gradient_checkpointing": False,
    "label_dropout": 0.15, "learning_rate": 0.001, "lora_alpha": None, "lora_rank": 4, "mixed_precision": "bf16",
    "num_train_timesteps": 1000, "processes": 1, "seeds": [0, 1], "steps": 4000, "threads": 1, "warmup_steps": 200,
    "weight_decay": 0.0,
}


def test_ddpm_training_settings_are_pinned():
    training = validate_config(load("config.yaml"), schema())["diffusion"]["training"]
    assert training == CONFIG_YAML_TRAINING
    assert list(training) == sorted(CONFIG_YAML_TRAINING)  # the same text in the rules' parameters


DDPM_CONFIGS = [name for name in ["tests/configs/tiny.yaml",
                                   *sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*digits*.yaml"))]
                if load(name)["diffusion"].get("kind", "ddpm") == "ddpm"]


@pytest.mark.parametrize("name", DDPM_CONFIGS)
def test_ddpm_configs_get_no_new_training_key(name):
    config = load(name)
    training = validate_config(config, schema())["diffusion"]["training"]
    assert set(training) == set(CONFIG_YAML_TRAINING)
    assert "epochs" not in training


def _schema_nodes(node, where=""):
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _schema_nodes(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_nodes(value, f"{where}.{i}")


def test_defaults_by_kind_are_well_formed():
    from bibaddiff.config import DEFAULT_BY_KIND, MODEL_KINDS

    found = []
    for where, node in _schema_nodes(schema()):
        if DEFAULT_BY_KIND in node:
            found.append(where)
            assert "default" not in node, where  # one default per key and kind, never two
            assert set(node[DEFAULT_BY_KIND]) <= set(MODEL_KINDS), where
    assert any(where.endswith("training.properties.learning_rate") for where in found)
    assert any(where.endswith("generation.properties.x0_clipping") for where in found)


def test_stable_diffusion_gets_its_own_training_defaults():
    from bibaddiff.config import fill_defaults, training_defaults

    sd = fill_defaults({"diffusion": {"kind": "stable_diffusion", "training": {"steps": 5, "seeds": [0]}}}, schema())
    ddpm = fill_defaults({"diffusion": {"training": {"steps": 5, "seeds": [0]}}}, schema())
    assert sd["diffusion"]["training"]["learning_rate"] == 1e-4  # upstream's SD fine-tuning base learning rate
    assert ddpm["diffusion"]["training"]["learning_rate"] == 1e-3
    for key in ("batch_size", "warmup_steps", "weight_decay", "ema_decay", "label_dropout"):
        assert sd["diffusion"]["training"][key] != ddpm["diffusion"]["training"][key], key
    assert sd["diffusion"]["training"] == {"steps": 5, "seeds": [0], **training_defaults("stable_diffusion")}
    assert ddpm["diffusion"]["training"] == {"steps": 5, "seeds": [0], **training_defaults("ddpm")}


def test_default_x0_clipping_comes_from_the_schema():
    from bibaddiff.config import default_x0_clipping

    by_kind = schema()["properties"]["generation"]["properties"]["x0_clipping"]["x-default-by-kind"]
    assert default_x0_clipping() == by_kind == {"ddpm": "none", "stable_diffusion": "none"}
    config = tiny()
    del config["generation"]["x0_clipping"]
    assert validate_config(config, schema())["generation"]["x0_clipping"] == ["none"]  # a list, as before
    config["generation"]["x0_clipping"] = "clip"
    assert validate_config(config, schema())["generation"]["x0_clipping"] == ["clip"]


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion

    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def tiny_stable_diffusion(folder) -> dict:
    config = tiny()
    config["dataset"]["rgb"] = True
    del config["diffusion"]["model"]
    del config["generation"]["x0_clipping"]
    config["diffusion"].update(kind="stable_diffusion", pretrained={"path": str(folder)})
    config["diffusion"]["training"] = {"steps": 6, "seeds": [0]}
    return config


def test_stable_diffusion_config_without_learning_rate_fine_tunes_at_1e_4(tiny_sd_folder):
    from bibaddiff.diffusion.finetune import FinetuneSettings

    filled = validate_config(tiny_stable_diffusion(tiny_sd_folder), schema())
    training = filled["diffusion"]["training"]
    assert training["learning_rate"] == 1e-4
    assert filled["generation"]["x0_clipping"] == ["none"]
    # The trainer's own defaults are the same values: one source.
    settings = FinetuneSettings.from_config({"steps": 6})
    for key in ("batch_size", "learning_rate", "warmup_steps", "weight_decay", "ema_decay", "label_dropout"):
        assert getattr(settings, key) == training[key], key
    config = tiny_stable_diffusion(tiny_sd_folder)
    config["generation"]["x0_clipping"] = "clip"
    assert "generation.x0_clipping" in config_error(config) and "only 'none'" in config_error(config)


# ------------------------------------------------------------------------------------------ epochs instead of steps


@pytest.mark.parametrize("epochs, batch_size, steps", [(1, 16, 13), (1.5, 16, 19), (2, 64, 7), (50, 200, 50)])
def test_epochs_become_steps(epochs, batch_size, steps):
    config = tiny()  # 20 images in each of 10 classes: 200 training images, poisoned or not
    training = config["diffusion"]["training"]
    del training["steps"]
    training.update(epochs=epochs, batch_size=batch_size)
    filled = validate_config(config, schema())
    assert filled["diffusion"]["training"]["steps"] == steps  # ceil(epochs * 200 / batch_size)
    assert "epochs" not in filled["diffusion"]["training"]
    assert validate_config(filled, schema()) == filled


def test_epochs_use_the_batch_size_default_of_the_kind(tiny_sd_folder):
    config = tiny_stable_diffusion(tiny_sd_folder)
    config["diffusion"]["training"] = {"epochs": 3, "seeds": [0]}
    training = validate_config(config, schema())["diffusion"]["training"]
    assert training["batch_size"] == 16 and training["steps"] == 38  # ceil(3 * 200 / 16)


def test_epochs_and_steps_together_fail_in_one_line():
    config = tiny()
    config["diffusion"]["training"]["epochs"] = 2
    message = config_error(config)
    assert "diffusion.training.steps" in message and "diffusion.training.epochs" in message and "not both" in message


def test_neither_epochs_nor_steps_fails_in_one_line():
    config = tiny()
    del config["diffusion"]["training"]["steps"]
    message = config_error(config)
    assert "diffusion.training.steps" in message and "diffusion.training.epochs" in message


@pytest.mark.parametrize("epochs", [0, -1, "many"])
def test_bad_epochs(epochs):
    config = tiny()
    del config["diffusion"]["training"]["steps"]
    config["diffusion"]["training"]["epochs"] = epochs
    assert "diffusion.training.epochs" in config_error(config)


def test_defenses_need_a_trigger_that_changes_pixels():
    config = tiny()
    config["triggers"] = {"relabel": {"type": "relabel"}}
    config["defenses"] = {"enabled": True}
    message = config_error(config)
    assert "defenses.enabled" in message and "relabel" in message
    config["defenses"] = {"enabled": False}
    validate_config(config, schema())


@pytest.mark.parametrize("settings, key", [({"cognitive_distillation": {"variant": "karras"}}, "variant"),
                                           ({"strip": {"blend": "multiply"}}, "blend"),
                                           ({"strip": {"num_blends": 0}}, "num_blends")])
def test_bad_detector_settings_stop_before_any_job(settings, key):
    config = tiny()
    config["defenses"]["detector_settings"] = settings
    message = config_error(config)
    assert "defenses.detector_settings" in message and key in message


@pytest.mark.parametrize("value", [[], [-1]])
def test_bad_generated_set_guidance(value):
    config = tiny()
    config["defenses"]["generated_set_guidance"] = value
    assert "defenses.generated_set_guidance" in config_error(config)


def test_generated_set_guidance_number_is_a_list_of_one():
    config = tiny()
    config["defenses"]["generated_set_guidance"] = 6
    assert validate_config(config, schema())["defenses"]["generated_set_guidance"] == [6]


# ------------------------------------------------------------------------------------------ experiment names


@pytest.mark.parametrize("name", ["a/b", "my run", "", "../up"])
def test_experiment_name_that_is_not_one_folder_fails_in_one_line(name):
    config = tiny()
    config["experiment"] = name
    assert config_error(config).startswith("config key experiment:")


def test_experiment_defaults_to_default():
    config = tiny()
    del config["experiment"]
    assert validate_config(config, schema())["experiment"] == "default"


def test_shipped_configs_name_distinct_experiments():
    """Two shipped configs with one experiment name would write each other's tables."""
    names = {}
    for path in [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml")), *sorted((REPO / "tests/configs").glob("*.yaml"))]:
        name = yaml.safe_load(path.read_text()).get("experiment")
        assert name, f"{path.name} names no experiment"
        assert name not in names, f"{path.name} and {names[name]} both name experiment {name}"
        names[name] = path.name


def test_validating_a_config_does_not_import_torch():
    """Every snakemake call validates the config; importing torch for it costs seconds on each call."""
    import subprocess
    import sys

    code = ("import sys; from bibaddiff.config import load_schema, validate_config; import yaml; "
            f"validate_config(yaml.safe_load(open({str(REPO / 'config.yaml')!r})), load_schema()); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ every knob typed


def test_schema_types_exactly_the_settings_each_detector_takes():
    from bibaddiff.defenses.detectors import DETECTOR_NAMES, detector_settings

    defenses = schema()["properties"]["defenses"]["properties"]
    typed = defenses["detector_settings"]["properties"]
    assert set(typed) == set(DETECTOR_NAMES) == set(defenses["detectors"]["items"]["enum"])
    for name, spec in typed.items():
        assert spec.get("additionalProperties") is False, name
        assert set(spec["properties"]) == set(detector_settings(name)), name


def test_schema_gives_each_embedder_type_exactly_its_keys():
    from bibaddiff.replication.embedders import _EMBEDDER_KEYS

    embedder = schema()["properties"]["replication"]["properties"]["embedder"]
    per_type = {rule["if"]["properties"]["type"]["const"]: set(rule["then"]["propertyNames"]["enum"])
                for rule in embedder["allOf"]}
    assert per_type == _EMBEDDER_KEYS
    assert set(embedder["properties"]) == set().union(*_EMBEDDER_KEYS.values())


@pytest.mark.parametrize("section, value, words", [
    ("detector_settings", {"strip": {"num_blend": 16}}, "num_blend"),
    ("detector_settings", {"fct": {"translate": 2}}, "translate"),
    ("detector_settings", {"activation_clustering": {"num_components": 0}}, "num_components"),
    ("detector_settings", {"cognitive_distillation": {"noise": "gaussian"}}, "noise"),
])
def test_detector_typos_stop_before_any_job(section, value, words):
    config = tiny()
    config["defenses"][section] = value
    message = config_error(config)
    assert message.startswith("config key defenses.detector_settings") and words in message


@pytest.mark.parametrize("embedder, words", [
    ({"type": "pixel", "path": "x.pt"}, "'path'"),
    ({"type": "pixel", "resolutoin": 8}, "resolutoin"),
    ({"type": "torchscript"}, "'path'"),
    ({"type": "torchvision", "path": "w.pt"}, "'architecture'"),
    ({"type": "classifier", "batch_size": 0}, "batch_size"),
])
def test_embedder_typos_stop_before_any_job(embedder, words):
    config = tiny()
    config["replication"]["embedder"] = embedder
    message = config_error(config)
    assert message.startswith("config key replication.embedder") and words in message


def test_fct_constants_are_the_detectors():
    from bibaddiff.config import FCT_FINETUNE_BATCH_SIZE, FCT_FINETUNING, fct_runs
    from bibaddiff.defenses.detectors import DETECTOR_NAMES, FCT_VARIANTS, detector_settings, detector_variant

    assert FCT_VARIANTS["published"]["finetune_batch_size"] == FCT_FINETUNE_BATCH_SIZE
    assert set(FCT_FINETUNING) == {key for key in detector_settings("fct") if key.startswith("finetune_")}
    runs = fct_runs({"detectors": list(DETECTOR_NAMES), "detector_settings": {"fct": {"variant": "frozen"}}})
    assert runs == {name: detector_variant(name, {"variant": "frozen"}) for name in DETECTOR_NAMES
                    if name.startswith("fct")}


def test_a_fct_fine_tuning_batch_larger_than_the_screened_sets_stops_before_any_job():
    config = tiny()  # 20 training images per class: 200 images in each screened set
    config["defenses"]["detectors"] = ["fct_published"]
    config["defenses"]["detector_settings"] = {"fct_published": {"finetune_batch_size": 201}}
    message = config_error(config)
    assert message == ("config key defenses.detector_settings.fct_published.finetune_batch_size: 201 images per "
                       "fine-tuning batch, but the screened sets hold only 200 images; allowed up to 200")
    config["defenses"]["detector_settings"] = {"fct_published": {"finetune_batch_size": 200}}
    validate_config(config, schema())
    # The default batch (100) against a smaller set: the plain name runs the published variant by default.
    config["dataset"]["max_images_per_class"] = 9
    config["defenses"]["detectors"] = ["fct"]
    config["defenses"]["detector_settings"] = {}
    config["poisoning"]["ratios"] = [0.05]
    assert config_error(config).startswith("config key defenses.detector_settings.fct.finetune_batch_size: 100 images")
    config["defenses"]["detector_settings"] = {"fct": {"variant": "frozen"}}
    validate_config(config, schema())  # the frozen variant does not fine-tune
    config["defenses"]["detector_settings"] = {"fct": {"variant": "frozen", "finetune_epochs": 3}}
    assert config_error(config).startswith("config key defenses.detector_settings.fct.finetune_epochs: the frozen FCT")


def test_two_variants_of_a_detector_run_side_by_side():
    config = tiny()
    config["defenses"]["detectors"] = ["cognitive_distillation_published", "cognitive_distillation_probabilities",
                                       "fct_frozen"]
    config["defenses"]["detector_settings"] = {"cognitive_distillation_probabilities": {"steps": 5}}
    validate_config(config, schema())
    config["defenses"]["detector_settings"] = {"cognitive_distillation_probabilities": {"variant": "published"}}
    message = config_error(config)
    assert message.startswith("config key defenses.detector_settings.cognitive_distillation_probabilities") and "variant" in message


def test_strip_partner_default_is_the_detectors():
    from bibaddiff.config import STRIP_NUM_BLENDS
    from bibaddiff.defenses.detectors import detector_settings

    assert detector_settings("strip")["num_blends"] == STRIP_NUM_BLENDS


def test_more_strip_partners_than_heldout_images_stop_before_any_job():
    config = tiny()  # 20 training images per class, so a quarter of that, 5 per class, held out: 50
    config["defenses"]["detector_settings"] = {"strip": {"num_blends": 51}}
    message = config_error(config)
    assert message.startswith("config key defenses.detector_settings.strip.num_blends: 51") and "only 50 images" in message
    config["defenses"]["detector_settings"] = {"strip": {"num_blends": 50}}
    validate_config(config, schema())
    config["defenses"]["detectors"] = ["spectral"]  # no STRIP, no partners needed
    config["defenses"]["detector_settings"] = {"strip": {"num_blends": 51}}
    validate_config(config, schema())


def test_default_resources_at_the_profiles_placeholder_are_named_in_one_line():
    shipped = ["tmpdir=system_tmpdir", "mem_mb=4000 * attempt", "slurm_partition='CHANGE_ME_partition'",
               "slurm_account='CHANGE_ME_account'", "runtime=30 * attempt"]
    with pytest.raises(BibaddiffError) as caught:
        check_default_resources(shipped)
    message = str(caught.value)
    assert "\n" not in message and "CHANGE_ME" in message
    assert "default-resources.slurm_partition" in message and "default-resources.slurm_account" in message
    assert "mem_mb" not in message and "runtime" not in message
    with pytest.raises(BibaddiffError, match=r"at default-resources\.slurm_account;"):
        check_default_resources(["slurm_partition='gpu'", "slurm_account='CHANGE_ME_account'"])


def test_filled_or_absent_default_resources_pass():
    check_default_resources(["slurm_partition='gpu'", "slurm_account='lab'", "runtime=30 * attempt"])
    check_default_resources(("tmpdir=system_tmpdir",))
    check_default_resources([])


@pytest.mark.parametrize("assignments, words", [
    ("slurm_partition='gpu'", "must be a list of name=value texts; got str"),
    (None, "got NoneType"),
    (["slurm_partition"], "'slurm_partition' is not a name=value text"),
    ([3], "3 is not a name=value text"),
])
def test_default_resources_that_are_not_name_value_texts_fail_in_one_line(assignments, words):
    with pytest.raises(BibaddiffError, match=re.escape(words)):
        check_default_resources(assignments)
