"""Models trained elsewhere (config key imported_models): layouts, checks with one-line errors, content digests, and
the import's model folder and loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from bibaddiff.config import load_schema, validate_config
from bibaddiff.diffusion.imported import (check_unchanged, content_digests, import_record, imported_model_info,
                                          model_layout)
from bibaddiff.errors import BibaddiffError
from config_helpers import config_error
from import_helpers import DIGITS, REPO, TINY, importing, patch_model, write_ddpm


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory) -> Path:
    return write_ddpm(tmp_path_factory.mktemp("imported") / "model")


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
    model = patch_model(ddpm, **entry)
    assert __import__("re").search(message, config_error(importing({"mine": model}))), config_error(importing({"mine": model}))


def test_a_model_whose_conditioning_does_not_fit_the_dataset_stops(tmp_path):
    three_classes = write_ddpm(tmp_path / "three", num_classes=3)
    assert "imported_models.mine.path" in config_error(importing({"mine": patch_model(three_classes)}))
    assert "conditioned on 3 classes" in config_error(importing({"mine": patch_model(three_classes)}))
    wrong_size = write_ddpm(tmp_path / "big", image_size=16)
    assert "makes 16 px images" in config_error(importing({"mine": patch_model(wrong_size)}))


def test_an_unconditional_or_pickled_unet_is_not_a_model_to_import(ddpm, tmp_path):
    unet = tmp_path / "unet"
    shutil.copytree(ddpm / "unet", unet)
    config = json.loads((unet / "config.json").read_text())
    (unet / "config.json").write_text(json.dumps({**config, "num_class_embeds": None}))
    assert "is not class-conditional" in config_error(importing({"mine": patch_model(unet)}))
    (unet / "config.json").write_text(json.dumps(config))
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.bin")
    assert "has no .safetensors weights" in config_error(importing({"mine": patch_model(unet)}))


def test_an_experiment_needs_a_model(ddpm):
    assert "diffusion.training.seeds: empty" in config_error(importing({}))


def test_two_models_of_one_attack_and_seed_are_refused(ddpm):
    message = config_error(importing({"a": patch_model(ddpm), "b": patch_model(ddpm)}))
    assert "imported_models.b.seed" in message and "patch-p0.1 seed 0" in message
    trained = importing({"a": patch_model(ddpm)}, diffusion__training__seeds=[0])
    assert "imported_models.a.seed" in config_error(trained)
    validate_config(importing({"a": patch_model(ddpm), "b": patch_model(ddpm, seed=1)}), load_schema())


# ------------------------------------------------------------------------------------------------ digests
def test_a_changed_file_is_named(ddpm, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ddpm, model)
    (model / ".snakemake_timestamp").write_text("")  # Snakemake's marker in its output folders: not content
    planned = content_digests(model)
    assert set(planned) >= {"unet/diffusion_pytorch_model.safetensors", "bibaddiff_model.json"}
    assert ".snakemake_timestamp" not in planned
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


# ------------------------------------------------------------------------------------------------ loading
def import_folder(tmp_path: Path, model_path: Path, **entry) -> Path:
    """The folder rule import_model writes for an import of ``model_path`` in the tiny config."""
    from bibaddiff.diffusion.imported import write_import_folder
    from bibaddiff.plan import Plan

    config = validate_config(importing({"mine": patch_model(model_path, **entry)}), load_schema())
    plan = Plan(config)
    imported = plan.imported_model("patch-p0.1", 0)
    classes = None
    if "classes" in imported.record:
        classes = tmp_path / "clean"
        classes.mkdir(parents=True, exist_ok=True)
        (classes / "manifest.json").write_text(json.dumps({"class_names": DIGITS, "image_size": 8, "channels": 1}))
    folder = tmp_path / "import"
    write_import_folder(folder, imported.record, classes)
    return folder


def test_every_ddpm_layout_generates_what_the_model_it_came_from_generates(ddpm, tmp_path):
    from bibaddiff.diffusion.model import load_diffusion_model

    def first_images(folder):
        return load_diffusion_model(folder).generate(6, 2.0, 4, 3, 0, 4, x0_clipping="none")

    expected = first_images(ddpm)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(ddpm, pipeline)
    (pipeline / "bibaddiff_model.json").unlink()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    for name, path in (("bibaddiff", ddpm), ("pipeline", pipeline), ("unet", ddpm / "unet")):
        folder = import_folder(tmp_path / f"import-{name}", path)
        info = json.loads((folder / "bibaddiff_model.json").read_text())
        assert info["imported"]["layout"] == name and info["class_names"] == DIGITS
        np.testing.assert_array_equal(first_images(folder), expected, err_msg=name)


def test_a_model_changed_after_planning_is_not_loaded_and_its_new_cells_go(ddpm, tmp_path):
    from bibaddiff.diffusion.cells import Cell, CellSettings, generate_cells
    from bibaddiff.diffusion.model import load_diffusion_model

    model = tmp_path / "model"
    shutil.copytree(ddpm, model)
    folder = import_folder(tmp_path, model)
    cells = [Cell("none", condition, 1.0, tmp_path / f"c{condition}.npy", tmp_path / f"c{condition}.png")
             for condition in (6, 1)]

    def change_the_model_after_the_first_cell(message):
        if message.startswith("[1/"):
            (model / "training.json").write_text('{"changed": true}')

    with pytest.raises(BibaddiffError, match=r"training\.json: (added|changed) since the run planned"):
        generate_cells(folder, cells, CellSettings(2, 2, 0, 2), "cpu", log=change_the_model_after_the_first_cell)
    assert not any(cell.images.exists() or cell.grid.exists() for cell in cells)
    with pytest.raises(BibaddiffError, match=r"training\.json: (added|changed) since the run planned"):
        load_diffusion_model(folder)


# ------------------------------------------------------------------------------------------------ Stable Diffusion
SD_CLASSES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    """A tiny base Stable Diffusion, the same model "fine-tuned" (its UNet changed) as a diffusers pipeline folder,
    and that folder as one .ckpt in the original LDM layout, as the paper's code saves a fine-tuned SD v1.4."""
    import torch
    from diffusers import UNet2DConditionModel

    from bibaddiff.diffusion.tiny import write_tiny_stable_diffusion
    from ldm_checkpoint import write_ldm_checkpoint
    from sd_helpers import write_captioned_folder, write_resnet_weights

    root = tmp_path_factory.mktemp("sd_imports")
    base = write_tiny_stable_diffusion(root / "base")
    finetuned = root / "finetuned"
    shutil.copytree(base, finetuned)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    unet.save_pretrained(finetuned / "unet")
    return {"base": base, "finetuned": finetuned, "checkpoint": write_ldm_checkpoint(finetuned, root / "finetuned.ckpt"),
            "images": write_captioned_folder(root / "images"), "resnet": write_resnet_weights(root / "resnet18.pt")}


def sd_config(sd_files, models: dict, **changes) -> dict:
    base = yaml.safe_load((REPO / "tests/configs/tiny-sd.yaml").read_text())
    base["dataset"]["root"] = str(sd_files["images"])
    base["diffusion"]["pretrained"]["path"] = str(sd_files["base"])
    base["judges"]["pretrained_weights"] = str(sd_files["resnet"])
    return importing(models, base=base, **changes)


def sd_import(path, **entry) -> dict:
    return {"path": str(path), "kind": "stable_diffusion", "trigger": "patch", "poison_ratio": 0.1,
            "training_share": 0.5, **entry}


def test_each_stable_diffusion_layout_generates_the_same_model(sd_files, tmp_path):
    from bibaddiff.diffusion.imported import write_import_folder
    from bibaddiff.diffusion.model import load_diffusion_model
    from bibaddiff.plan import Plan

    layouts = {"pipeline": sd_files["finetuned"], "checkpoint": sd_files["checkpoint"], "unet": sd_files["finetuned"] / "unet"}
    config = validate_config(sd_config(sd_files, {name: sd_import(path, seed=k) for k, (name, path)
                                                  in enumerate(layouts.items())}), load_schema())
    plan = Plan(config)
    classes = tmp_path / "clean"
    classes.mkdir()
    prompts = [f"A photo of a {name}" for name in SD_CLASSES]
    (classes / "manifest.json").write_text(json.dumps({"class_names": SD_CLASSES, "class_prompts": prompts,
                                                       "image_size": 32, "channels": 3}))
    generations = {}
    for k, name in enumerate(layouts):
        record = plan.imported_model("patch-p0.1", k).record
        assert record["layout"] == name and (record.get("config") == str(sd_files["base"].resolve())) == (name == "checkpoint")
        write_import_folder(tmp_path / name, record, classes)
        model = load_diffusion_model(tmp_path / name)
        assert model.kind == "stable_diffusion" and model.info.class_names == SD_CLASSES
        generations[name] = model.generate(2, 5.0, 2, 2, 0, 2, x0_clipping="none")
    np.testing.assert_array_equal(generations["pipeline"], generations["unet"])
    # The LDM layout holds the same weights under other names: the same images, up to float rounding.
    assert np.abs(generations["pipeline"].astype(int) - generations["checkpoint"].astype(int)).max() <= 1


def test_stable_diffusion_imports_that_cannot_be_loaded_stop_in_one_line(sd_files, tmp_path):
    no_base = {"diffusion__pretrained": {"path": None, "config": None}}
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 2)}, str(lora))
    message = config_error(sd_config(sd_files, {"mine": sd_import(lora)}, **no_base))
    assert message.startswith("config key imported_models.mine.path") and "needs a base model" in message
    assert "needs a base model" in config_error(sd_config(sd_files, {"mine": sd_import(sd_files["finetuned"] / "unet")},
                                                      **no_base))
    message = config_error(sd_config(sd_files, {"mine": sd_import(sd_files["checkpoint"])}, **no_base))
    assert message.startswith("config key imported_models.mine.config") and "single-file checkpoint" in message
    # Without a base, a whole pipeline or checkpoint (with its configs) is all an experiment needs.
    validate_config(sd_config(sd_files, {"mine": sd_import(sd_files["finetuned"]),
                                         "other": sd_import(sd_files["checkpoint"], seed=1,
                                                            config=str(sd_files["base"]))}, **no_base), load_schema())
    assert "is a diffusers UNet2DConditionModel folder, not the UNet2DModel" in config_error(
        importing({"mine": patch_model(sd_files["finetuned"] / "unet")}))


def test_the_docs_example_imports_the_papers_checkpoints_on_the_imagenette_config(sd_files, tmp_path):
    """The example of docs/imported-models.md, layered on configs/imagenette-sd.yaml, with the paper's checkpoints and
    SD v1.4's configs replaced by tiny stand-ins: it validates, and its plan trains nothing and imports both."""
    from bibaddiff.plan import Plan
    from workflow_helpers import fill_placeholders

    text = (REPO / "docs/imported-models.md").read_text()
    example = yaml.safe_load("# my-imports.yaml" + text.split("```yaml\n# my-imports.yaml")[1].split("```")[0])
    config = fill_placeholders(yaml.safe_load((REPO / "configs/imagenette-sd.yaml").read_text()), tmp_path)
    config["experiment"] = example["experiment"]
    config["diffusion"]["training"].update(example["diffusion"]["training"])
    config["imported_models"] = example["imported_models"]
    for entry in config["imported_models"].values():
        assert entry["path"].endswith(".ckpt") and entry["config"].endswith("stable-diffusion-v1-4")
        entry["path"], entry["config"] = str(sd_files["checkpoint"]), str(sd_files["base"])
    plan = Plan(validate_config(config, load_schema()))
    assert {(attack, imported.record["layout"]) for (attack, _), imported in plan.imported.items()} == {
        ("badnets1-p0.1", "checkpoint"), ("clean", "checkpoint")}
    assert list(plan.attacks) == ["badnets1-p0.1", "clean"] and plan.calibration_model.startswith("imported/paper_clean-")
