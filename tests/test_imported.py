"""Models trained elsewhere (config key imported_models): layouts, checks with one-line errors, content digests, and
the import's model folder and loading."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from bibaddiff.config import load_schema, validate_config
from bibaddiff.diffusion.base import ModelInfo
from bibaddiff.diffusion.imported import (check_unchanged, content_digests, import_record, imported_model_info,
                                          model_layout)
from bibaddiff.diffusion.model import build_scheduler, build_unet, save_model
from bibaddiff.errors import BibaddiffError

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
DIGITS = [str(i) for i in range(10)]


def write_ddpm(folder: Path, num_classes: int = 10, image_size: int = 8, channels: int = 1, seed: int = 0) -> Path:
    """A bibaddiff DDPM folder of the tiny config's shape (random weights)."""
    import torch

    torch.manual_seed(seed)
    unet = build_unet(image_size, channels, num_classes, block_out_channels=[8, 16], norm_num_groups=4)
    save_model(folder, unet, build_scheduler(), ModelInfo(num_classes, DIGITS[:num_classes], image_size, channels))
    return folder


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory) -> Path:
    return write_ddpm(tmp_path_factory.mktemp("imported") / "model")


def importing(models: dict, **changes) -> dict:
    """The tiny config, training nothing, with these imports (and dotted keys changed)."""
    config = copy.deepcopy(TINY)
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


def error_of(config: dict) -> str:
    with pytest.raises(BibaddiffError) as info:
        validate_config(config, load_schema())
    message = str(info.value)
    assert "\n" not in message, message
    return message


def patch_model(path, **entry) -> dict:
    return {"path": str(path), "kind": "ddpm", "trigger": "patch", "poison_ratio": 0.1, "training_data": "rebuild",
            **entry}


# ------------------------------------------------------------------------------------------------ layouts
def test_each_ddpm_layout_is_recognised(ddpm, tmp_path):
    assert model_layout(ddpm, "ddpm", "k") == "bibaddiff"
    pipeline = tmp_path / "pipeline"
    shutil.copytree(ddpm, pipeline)
    (pipeline / "bibaddiff_model.json").unlink()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    assert model_layout(pipeline, "ddpm", "k") == "pipeline"
    assert model_layout(ddpm / "unet", "ddpm", "k") == "unet"
    with pytest.raises(BibaddiffError, match="holds a ddpm model"):
        model_layout(ddpm, "stable_diffusion", "k")
    with pytest.raises(BibaddiffError, match="single file"):
        model_layout(ddpm / "bibaddiff_model.json", "ddpm", "k")


def test_an_import_is_accepted_with_its_defaults(ddpm):
    config = validate_config(importing({"mine": patch_model(ddpm)}), load_schema())
    assert config["imported_models"]["mine"]["seed"] == 0
    assert validate_config(TINY, load_schema())["imported_models"] == {}


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("entry, message", [
    ({"path": "/no/such/model"}, r"imported_models\.mine\.path: /no/such/model does not exist"),
    ({"trigger": "blend"}, r"imported_models\.mine\.trigger: 'blend' is not an entry of triggers; allowed patch"),
    ({"trigger": None, "poison_ratio": None}, r"imported_models\.mine: say which attack"),
    ({"clean": True}, r"imported_models\.mine\.clean: a clean model has no trigger"),
    ({"poison_ratio": None}, r"imported_models\.mine\.poison_ratio: missing"),
    ({"training_data": None}, r"imported_models\.mine: give its training data"),
    ({"training_share": 0.5}, r"imported_models\.mine\.training_share: give training_data or training_share, not both"),
    ({"training_data": "/no/such/data"}, r"imported_models\.mine\.training_data: /no/such/data is not a dataset folder"),
    ({"kind": "stable_diffusion"}, r"imported_models\.mine\.kind: stable_diffusion, but diffusion\.kind is ddpm"),
    ({"poison_ratio": 0.95}, r"imported_models\.mine\.poison_ratio: 0\.95 asks for"),
    ({"training_data": None, "training_share": 0.5, "poisoning_seed": 3}, r"imported_models\.mine\.poisoning_seed: only"),
])
def test_bad_imports_stop_in_one_line_naming_the_key(ddpm, entry, message):
    model = {key: value for key, value in {**patch_model(ddpm), **entry}.items() if value is not None}
    assert __import__("re").search(message, error_of(importing({"mine": model}))), error_of(importing({"mine": model}))


def test_a_model_whose_conditioning_does_not_fit_the_dataset_stops(tmp_path):
    three_classes = write_ddpm(tmp_path / "three", num_classes=3)
    assert "imported_models.mine.path" in error_of(importing({"mine": patch_model(three_classes)}))
    assert "conditioned on 3 classes" in error_of(importing({"mine": patch_model(three_classes)}))
    wrong_size = write_ddpm(tmp_path / "big", image_size=16)
    assert "makes 16 px images" in error_of(importing({"mine": patch_model(wrong_size)}))


def test_an_unconditional_or_pickled_unet_is_not_a_model_to_import(ddpm, tmp_path):
    unet = tmp_path / "unet"
    shutil.copytree(ddpm / "unet", unet)
    config = json.loads((unet / "config.json").read_text())
    (unet / "config.json").write_text(json.dumps({**config, "num_class_embeds": None}))
    assert "is not class-conditional" in error_of(importing({"mine": patch_model(unet)}))
    (unet / "config.json").write_text(json.dumps(config))
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.bin")
    assert "has no .safetensors weights" in error_of(importing({"mine": patch_model(unet)}))


def test_an_experiment_needs_a_model(ddpm):
    assert "diffusion.training.seeds: empty" in error_of(importing({}))


def test_two_models_of_one_attack_and_seed_are_refused(ddpm):
    message = error_of(importing({"a": patch_model(ddpm), "b": patch_model(ddpm)}))
    assert "imported_models.b.seed" in message and "patch-p0.1 seed 0" in message
    trained = importing({"a": patch_model(ddpm)}, diffusion__training__seeds=[0])
    assert "imported_models.a.seed" in error_of(trained)
    validate_config(importing({"a": patch_model(ddpm), "b": patch_model(ddpm, seed=1)}), load_schema())


# ------------------------------------------------------------------------------------------------ digests
def test_a_changed_file_is_named(ddpm, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ddpm, model)
    planned = content_digests(model)
    assert set(planned) >= {"unet/diffusion_pytorch_model.safetensors", "bibaddiff_model.json"}
    check_unchanged(model, planned)
    weights = model / "unet/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BibaddiffError, match=r"diffusion_pytorch_model\.safetensors: changed since the run planned"):
        check_unchanged(model, planned)
    changed = content_digests(model)
    (model / "extra.txt").write_text("x")
    with pytest.raises(BibaddiffError, match="extra.txt: added"):
        check_unchanged(model, changed)
    shutil.rmtree(model)
    with pytest.raises(BibaddiffError, match="is gone"):
        check_unchanged(model, changed)


def test_the_import_record_places_the_model_by_its_contents(ddpm, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ddpm, model)
    config = validate_config(importing({"mine": patch_model(model)}), load_schema())
    record = import_record("mine", config["imported_models"]["mine"], config, config["diffusion"]["pretrained"], "clean-x")
    assert record["layout"] == "bibaddiff" and record["path"] == str(model.resolve()) and "classes" not in record
    info = imported_model_info(record)
    assert info["num_classes"] == 10 and info["imported"] == record
    unet_record = import_record("mine", {**config["imported_models"]["mine"], "path": str(model / "unet")}, config,
                                config["diffusion"]["pretrained"], "clean-x")
    assert unet_record["classes"] == "clean-x" and unet_record["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    with pytest.raises(BibaddiffError, match="needs the clean dataset's manifest"):
        imported_model_info(unet_record)
    manifest = {"class_names": DIGITS, "image_size": 8, "channels": 1}
    assert imported_model_info(unet_record, manifest)["class_names"] == DIGITS


def test_file_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import os

    from bibaddiff import utils

    monkeypatch.setenv("BIBADDIFF_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"first")
    assert utils.file_digest(weights) == hashlib.sha256(b"first").hexdigest()
    reads = []
    monkeypatch.setattr(utils, "open", lambda path, mode="r": (mode == "rb" and reads.append(path)) or open(path, mode),
                        raising=False)
    assert utils.file_digest(weights) == hashlib.sha256(b"first").hexdigest() and reads == []  # from the cache
    weights.write_bytes(b"other")
    os.utime(weights, ns=(1, 2))  # a new modification time, as any rewrite gives
    assert utils.file_digest(weights) == hashlib.sha256(b"other").hexdigest() and len(reads) == 1
    assert len(__import__("json").loads((tmp_path / "cache/file-digests.json").read_text())) == 1
