"""Experiment configuration: schema validation with one-line errors, defaults, and cross-key checks."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from bibaddiff.calibration import check_calibration_settings
from bibaddiff.data import (GREYSCALE_SOURCES, IDX_SOURCES, check_cifar10_root, digits_arrays, digits_split,
                            display_class_names, idx_class_folders, idx_labels, imagefolder_classes, imagefolder_files,
                            scaled_class_counts)
from bibaddiff.diffusion.imported import check_imported_models
from bibaddiff.diffusion.timesteps import quadratic_timesteps, sampler_options
from bibaddiff.errors import BibaddiffError
# The schema and its defaults live on the bottom floor (bibaddiff.schema); they are re-exported here for callers.
from bibaddiff.schema import (DEFAULT_BY_KIND, MODEL_KINDS, SCHEMA_FILE, default_x0_clipping, load_schema,  # noqa: F401
                              schema_default, section_defaults, shipped_schema, training_defaults)
from bibaddiff.triggers import build_trigger

PLACEHOLDER = "CHANGE_ME"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# score_strip's default partner count (the published 100); a test keeps the two equal.
STRIP_NUM_BLENDS = 100
# The published FCT's fine-tuning batch (score_fct's default, the reference configs' 100) and the detector names that
# run FCT with its variant fixed or not (bibaddiff.defenses.detectors, which imports torch); a test keeps them equal.
FCT_FINETUNE_BATCH_SIZE = 100
FCT_FINETUNING = ("finetune_epochs", "finetune_batch_size", "finetune_learning_rate")


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check ``config`` against the schema (the package's own when none is given) and the data it names; returns a
    copy with defaults filled in."""
    if schema is None:
        schema = shipped_schema()
    unfilled = placeholder_keys(config)
    if unfilled:
        raise BibaddiffError(f"config has unfilled placeholders ({PLACEHOLDER}) at {', '.join(unfilled)}; "
                             "replace them with your local paths")
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise BibaddiffError(f"config key {where}: {error.message}")
    diffusion = config["diffusion"]
    if diffusion.get("kind") == "stable_diffusion" and diffusion.get("model"):
        raise BibaddiffError("config key diffusion.model: describes the DDPM's UNet; a stable_diffusion model comes "
                             "from diffusion.pretrained, so leave diffusion.model out")
    check_training_length(diffusion["training"])
    filled = fill_defaults(copy.deepcopy(config), schema)
    # Keys that take one value or a list are lists from here on.
    filled["generation"]["x0_clipping"] = as_list(filled["generation"]["x0_clipping"])
    filled["defenses"]["generated_set_guidance"] = as_list(filled["defenses"]["generated_set_guidance"])
    check_x0_clipping(filled)
    check_experiment(filled)
    check_calibration_settings(filled["judges"], has_clean_model(filled))
    return sort_keys(filled)


def has_clean_model(config: dict[str, Any]) -> bool:
    """A clean model trained here or imported: it draws the trigger detectors' calibration generations."""
    return bool(config["diffusion"]["training"]["clean_seeds"]) or any(
        entry.get("clean") for entry in config.get("imported_models", {}).values())


def trains_models(config: dict[str, Any]) -> bool:
    training = config["diffusion"]["training"]
    return bool(training["seeds"] or training["clean_seeds"])


def check_training_length(training: dict[str, Any]) -> None:
    """Exactly one of ``diffusion.training.steps`` and ``diffusion.training.epochs``."""
    if "steps" in training and "epochs" in training:
        raise BibaddiffError("config keys diffusion.training.steps and diffusion.training.epochs: give one of them, "
                             "not both (epochs sets steps = ceil(epochs * training images / batch_size))")
    if "steps" not in training and "epochs" not in training:
        raise BibaddiffError("config key diffusion.training.steps: missing; give diffusion.training.steps (optimiser "
                             "steps) or diffusion.training.epochs (passes over the training images)")


def fill_steps_from_epochs(training: dict[str, Any], num_images: int) -> None:
    """Replace ``epochs`` by ``steps = ceil(epochs * num_images / batch_size)``, so that the rules (and a dry run)
    see the number of steps the trainer runs."""
    if "epochs" not in training:
        return
    epochs = training.pop("epochs")
    training["steps"] = max(1, math.ceil(epochs * num_images / training["batch_size"]))


def as_list(value: Any) -> list[Any]:
    """A config value that may be one item or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_model_slots(config: dict[str, Any]) -> None:
    """Every model is one (attack, seed) of the tables: an import may not take the place of a model trained here or
    of another import."""
    from bibaddiff.plan import attack_name

    training = config["diffusion"]["training"]
    taken = {(attack_name(trigger, ratio), seed): "diffusion.training.seeds" for trigger in config["triggers"]
             for ratio in config["poisoning"]["ratios"] for seed in training["seeds"]}
    duplicates = config["replication"]["duplicate_poisoning"]
    if duplicates["enabled"]:
        trigger = duplicates["trigger"] or next(iter(config["triggers"]))
        taken.update({(attack_name(trigger, duplicates["ratio"], mode), seed): "diffusion.training.seeds"
                      for mode in ("random", "duplicates") for seed in training["seeds"]})
    taken.update({("clean", seed): "diffusion.training.clean_seeds" for seed in training["clean_seeds"]})
    for name, entry in config.get("imported_models", {}).items():
        slot = (attack_name(entry.get("trigger") if not entry.get("clean") else None, entry.get("poison_ratio", 0.0)),
                entry["seed"])
        if slot in taken:
            raise BibaddiffError(f"config key imported_models.{name}.seed: {slot[0]} seed {slot[1]} is already a model "
                                 f"of this experiment ({taken[slot]}); give this import another seed")
        taken[slot] = f"imported_models.{name}"


def check_x0_clipping(config: dict[str, Any]) -> None:
    """A stable_diffusion model samples latents: no x0 clipping mode but none. (The first mode of the list is the one
    that generated training sets and other single-sampler stages use.)"""
    modes = config["generation"]["x0_clipping"]
    if config["diffusion"]["kind"] == "stable_diffusion" and modes != ["none"]:
        raise BibaddiffError(f"config key generation.x0_clipping: a stable_diffusion model samples latents, which "
                             f"only 'none' leaves intact; got {', '.join(modes)}")


def placeholder_keys(value: Any, where: str = "") -> list[str]:
    """Dotted keys whose value still holds the shipped configs' placeholder text."""
    if isinstance(value, dict):
        return [key for name, item in value.items() for key in placeholder_keys(item, f"{where}.{name}" if where else str(name))]
    if isinstance(value, list):
        return [key for i, item in enumerate(value) for key in placeholder_keys(item, f"{where}.{i}")]
    return [where] if isinstance(value, str) and PLACEHOLDER in value else []


def check_default_resources(assignments: list[str] | tuple[str, ...]) -> None:
    """Stop when a default resource still holds the shipped SLURM profile's placeholder (``slurm_partition:
    "'CHANGE_ME_partition'"``), before anything is submitted: otherwise SLURM refuses each job only once the run is
    under way. ``assignments`` are Snakemake's ``name=expression`` texts of the run's default resources (a profile's
    ``default-resources`` or ``--default-resources``)."""
    if not isinstance(assignments, (list, tuple)):
        raise BibaddiffError(f"default resources must be a list of name=value texts; got {type(assignments).__name__}")
    expressions = {}
    for assignment in assignments:
        if not isinstance(assignment, str) or "=" not in assignment:
            raise BibaddiffError(f"default resource {assignment!r} is not a name=value text")
        name, expression = assignment.split("=", 1)
        expressions[name] = expression
    unfilled = placeholder_keys(expressions, "default-resources")
    if unfilled:
        raise BibaddiffError(f"unfilled placeholders ({PLACEHOLDER}) at {', '.join(unfilled)}; set them "
                             "to your cluster's values in the profile's config.yaml (profiles/slurm/config.yaml)")


def sort_keys(value: Any) -> Any:
    """The same config with every mapping's keys sorted.

    Snakemake compares rule parameters by their text, so a config whose keys were merely reordered would
    otherwise rerun every job.
    """
    if isinstance(value, dict):
        return {key: sort_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sort_keys(item) for item in value]
    return value


def fill_defaults(instance: Any, schema: dict[str, Any], kind: str | None = None) -> Any:
    """Insert the schema's defaults for absent keys, recursively: ``default``, or for a key whose default depends on
    the kind of model, its entry for ``kind`` under ``x-default-by-kind``.

    ``kind`` is found from the whole config (``diffusion.kind``, else the schema's default for it) when not given.
    """
    if not isinstance(instance, dict):
        return instance
    if kind is None:
        kind = model_kind(instance, schema)
    for key, subschema in schema.get("properties", {}).items():
        if key not in instance:
            found, value = schema_default(subschema, kind)
            if found:
                instance[key] = value
        if key in instance:
            fill_defaults(instance[key], subschema, kind)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                fill_defaults(value, extra, kind)
    return instance


def model_kind(config: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """``diffusion.kind`` of a whole config, or the schema's default for it; None for anything else."""
    diffusion = config.get("diffusion")
    if isinstance(diffusion, dict) and diffusion.get("kind"):
        return diffusion["kind"]
    kind_schema = schema.get("properties", {}).get("diffusion", {}).get("properties", {}).get("kind", {})
    return kind_schema.get("default")


def describe_source(dataset: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Class names and training images per class of a dataset source, without preparing it."""
    source = dataset["source"]
    if source == "digits":
        folders = [str(i) for i in range(10)]
    elif source == "cifar10":
        check_cifar10_root(dataset)
        folders = CIFAR10_CLASSES
    elif source in IDX_SOURCES:
        folders = idx_class_folders(dataset)
        idx_labels(dataset, "heldout")  # the held-out files are there and agree, as the training ones are checked below
    else:
        if not dataset.get("root"):
            raise BibaddiffError(f"dataset.root must name a local folder for source {source}")
        folders = imagefolder_classes(dataset["root"], "train")
        imagefolder_classes(dataset["root"], dataset.get("heldout_split", "val"))
    return folders, class_counts(dataset, "train", folders)


def heldout_size(dataset: dict[str, Any], folders: list[str]) -> int:
    """Held-out images a source gives (after ``max_images_per_class``, a quarter of it per class), without loading it."""
    return int(class_counts(dataset, "heldout", folders).sum())


def class_counts(dataset: dict[str, Any], split: str, folders: list[str]) -> np.ndarray:
    """Images per class of a source's ``train`` or ``heldout`` split, capped as load_source caps them (the held-out
    split at a quarter of ``max_images_per_class``); labels only, no image is read."""
    source = dataset["source"]
    if source == "digits":
        # The labels alone: the images are neither scaled nor copied to count classes.
        _, labels = digits_arrays()
        train_idx, heldout_idx = digits_split(dataset, len(labels))
        counts = np.bincount(labels[train_idx if split == "train" else heldout_idx], minlength=10)
    elif source == "cifar10":
        counts = np.full(10, 5000 if split == "train" else 1000)
    elif source in IDX_SOURCES:
        counts = np.bincount(idx_labels(dataset, "train" if split == "train" else "heldout"), minlength=len(folders))
    else:
        folder = "train" if split == "train" else dataset.get("heldout_split", "val")
        labels = [label for _, label in imagefolder_files(dataset["root"], folder, folders)]
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(folders))
    cap = dataset.get("max_images_per_class")
    if cap:
        counts = np.minimum(counts, cap if split == "train" else max(1, cap // 4))
    return counts


def check_strip_partners(config: dict[str, Any], folders: list[str]) -> None:
    """STRIP blends each screened image with num_blends held-out clean images, drawn without replacement."""
    defenses = config.get("defenses", {})
    if not defenses.get("enabled") or "strip" not in defenses.get("detectors", []):
        return
    wanted = defenses.get("detector_settings", {}).get("strip", {}).get("num_blends", STRIP_NUM_BLENDS)
    available = heldout_size(config["dataset"], folders)
    if wanted > available:
        raise BibaddiffError(f"config key defenses.detector_settings.strip.num_blends: {wanted} STRIP partners asked "
                             f"for, but the dataset holds out only {available} images; allowed up to {available}")


def fct_runs(defenses: dict[str, Any]) -> dict[str, str]:
    """The FCT runs of ``defenses.detectors``: {name: the variant it runs} (published unless set or named)."""
    runs = {}
    for name in defenses.get("detectors", []):
        if name == "fct":
            runs[name] = defenses.get("detector_settings", {}).get(name, {}).get("variant", "published")
        elif name.startswith("fct_"):
            runs[name] = name.removeprefix("fct_")
    return runs


def check_fct_finetuning(config: dict[str, Any], screened_images: int) -> None:
    """The published FCT fine-tunes on whole batches of the screened set (the poisoned training set, or a generated
    set of as many images), so a batch may not outgrow it; the frozen FCT takes no fine-tuning setting."""
    defenses = config.get("defenses", {})
    if not defenses.get("enabled"):
        return
    for name, variant in fct_runs(defenses).items():
        settings = defenses.get("detector_settings", {}).get(name, {})
        key = f"config key defenses.detector_settings.{name}"
        if variant == "frozen":
            stray = [setting for setting in FCT_FINETUNING if setting in settings]
            if stray:
                raise BibaddiffError(f"{key}.{stray[0]}: the frozen FCT does not fine-tune; leave "
                                     f"{', '.join(stray)} out or run the published variant")
            continue
        wanted = settings.get("finetune_batch_size", FCT_FINETUNE_BATCH_SIZE)
        if wanted > screened_images:
            raise BibaddiffError(f"{key}.finetune_batch_size: {wanted} images per fine-tuning batch, but the screened "
                                 f"sets hold only {screened_images} images; allowed up to {screened_images}")


def resolve_class(value: int | str, folders: list[str], class_names: list[str]) -> int:
    """A class index from an index, a folder name or a class name; a name that is neither is an error."""
    if isinstance(value, int):
        return value
    for names in (folders, class_names):
        if value in names:
            return names.index(value)
    raise BibaddiffError(f"config key target: {value!r} is not a class; allowed {', '.join(class_names)} or 0..{len(class_names) - 1}")


def check_experiment(config: dict[str, Any]) -> None:
    """Cross-key checks that a schema cannot express; each failure names the key and the allowed values."""
    dataset = config["dataset"]
    folders, counts = describe_source(dataset)
    named = dataset["source"] in ("imagefolder", "idx")  # sources whose classes have no names of their own
    if dataset.get("class_names") and not named:
        raise BibaddiffError(f"config key dataset.class_names: only for sources imagefolder and idx; got {dataset['source']}")
    class_names = display_class_names(folders, dataset.get("class_names")) if named else folders
    num_classes = len(class_names)
    config["target"] = target = resolve_class(config["target"], folders, class_names)
    if not 0 <= target < num_classes:
        raise BibaddiffError(f"config key target: {target} is not a class of {dataset['name']}; allowed 0..{num_classes - 1} ({', '.join(class_names)})")
    for condition in config["generation"].get("other_conditions", []):
        if not 0 <= condition < num_classes:
            raise BibaddiffError(f"config key generation.other_conditions: {condition} is not a class; allowed 0..{num_classes - 1}")
        if condition == target:
            raise BibaddiffError(f"config key generation.other_conditions: {condition} is the target; list non-target classes only")
    total, outside = int(counts.sum()), int(counts.sum() - counts[target])
    # Poisoning relabels images in place, so every model trains on as many images as the clean set holds.
    fill_steps_from_epochs(config["diffusion"]["training"], total)
    for ratio in config["poisoning"]["ratios"]:
        wanted = int(round(ratio * total))
        if wanted > outside:
            raise BibaddiffError(
                f"config key poisoning.ratios: {ratio} asks for {wanted} poisoned images but only {outside} training "
                f"images lie outside target class {target}; allowed up to {outside / total:.3f}")
    if dataset.get("rgb") and dataset["source"] not in GREYSCALE_SOURCES:
        raise BibaddiffError(f"config key dataset.rgb: only for the grey sources {', '.join(GREYSCALE_SOURCES)}; "
                             f"got {dataset['source']}")
    stays_grey = dataset["source"] in GREYSCALE_SOURCES and not dataset.get("rgb")
    channels = 1 if stays_grey or dataset.get("grayscale") else 3
    for name, spec in config["triggers"].items():
        build_trigger(name, spec, dataset["image_size"], channels)
    if config.get("defenses", {}).get("enabled") and all(s["type"] == "relabel" for s in config["triggers"].values()):
        raise BibaddiffError("config key defenses.enabled: the defences test a trigger, and every trigger here is type "
                             "relabel (no pixel change); add a trigger of another type or set defenses.enabled false")
    check_strip_partners(config, folders)
    check_fct_finetuning(config, total)
    if dataset.get("captions") and dataset["source"] != "imagefolder":
        raise BibaddiffError(f"config key dataset.captions: per-image captions need source imagefolder; got {dataset['source']}")
    if dataset.get("captions") and not Path(dataset["captions"]).expanduser().is_file():
        raise BibaddiffError(f"config key dataset.captions: {dataset['captions']} not found")
    weights = config["judges"].get("pretrained_weights")
    if weights and not Path(weights).expanduser().is_file():
        raise BibaddiffError(f"config key judges.pretrained_weights: {weights} not found; name a local torchvision "
                             "weights file or set null")
    check_quality(config, counts, class_names)
    if not config["diffusion"]["training"]["seeds"] and not config.get("imported_models"):
        raise BibaddiffError("config key diffusion.training.seeds: empty; give at least one training seed, or import "
                             "the poisoned models (imported_models)")
    check_imported_models(config, class_names, channels, total, outside)
    check_model_slots(config)
    if config["diffusion"]["kind"] == "stable_diffusion":
        check_stable_diffusion(config, channels)
        return
    check_sampler(config, config["diffusion"]["training"]["num_train_timesteps"])
    if config["diffusion"]["training"]["mixed_precision"] == "fp16":
        raise BibaddiffError("config key diffusion.training.mixed_precision: fp16 is for stable_diffusion only; "
                             "the DDPM trains in bf16 or no")
    blocks = config["diffusion"]["model"].get("block_out_channels", [16, 32, 64])
    if dataset["image_size"] % 2 ** (len(blocks) - 1):
        raise BibaddiffError(
            f"config key dataset.image_size: {dataset['image_size']} must be divisible by {2 ** (len(blocks) - 1)} "
            f"for diffusion.model.block_out_channels of length {len(blocks)}")


# A CLIP folder written by save_pretrained: its weights, and the tokenizer and image processor CLIPProcessor reads.
CLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# transformers 4 writes the image processor's settings to the first, transformers 5 with the tokenizer's to the second.
CLIP_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_quality(config: dict[str, Any], counts: np.ndarray, class_names: list[str]) -> None:
    """The quality stage's settings, before any job: at least 2 generations per class, an Inception weights file that
    fits the network, and a complete local CLIP folder for text-to-image models."""
    quality = config.get("quality", {})
    if not quality.get("enabled", False):
        return
    total = quality.get("num_images") or int(counts.sum())
    per_class = scaled_class_counts(counts, total)
    if per_class.min() < 2:
        poorest = int(per_class.argmin())
        needed = int(np.ceil(2 * counts.sum() / counts[poorest]))
        raise BibaddiffError(f"config key quality.num_images: {total} generations in the training set's class balance "
                             f"give class {class_names[poorest]} only {per_class[poorest]}; FID needs at least 2 per "
                             f"class, so ask for at least {needed}")
    if quality.get("inception_weights"):
        # Loads the network (seconds, with torch) once per weights file, so that a wrong file stops the run here and
        # not after generation, without slowing every later invocation.
        from bibaddiff.utils import check_file_once

        def check_inception_weights(path: str) -> None:
            from bibaddiff.quality import load_inception  # torch, only when the file has not passed before

            load_inception(path)

        check_file_once(quality["inception_weights"], check_inception_weights, "inception-v3")
    if quality.get("clip_model"):
        if config["diffusion"]["kind"] != "stable_diffusion":
            raise BibaddiffError("config key quality.clip_model: the CLIP score compares generations with their prompts, "
                                 "so it is for stable_diffusion only; set null for a class-conditional DDPM")
        check_clip_folder(quality["clip_model"])


def check_clip_folder(folder: str) -> None:
    """A local CLIP folder has its config, weights, tokenizer and image processor; one line names what is missing."""
    path = Path(folder).expanduser()
    key = "config key quality.clip_model"
    if not path.is_dir():
        raise BibaddiffError(f"{key}: {folder} is not a local folder (CLIP models are never downloaded)")
    if not (path / "config.json").is_file() or not any((path / name).is_file() for name in CLIP_WEIGHT_FILES):
        raise BibaddiffError(f"{key}: {path} has no CLIP model (config.json and {' or '.join(CLIP_WEIGHT_FILES[:2])}); "
                             "save one there with CLIPModel.save_pretrained")
    if not any(all((path / name).is_file() for name in files) for files in CLIP_TOKENIZER_FILES):
        raise BibaddiffError(f"{key}: {path} has no tokenizer (tokenizer.json, or vocab.json and merges.txt); save the "
                             "CLIPProcessor or its tokenizer there with save_pretrained")
    if not any((path / name).is_file() for name in CLIP_PROCESSOR_FILES):
        raise BibaddiffError(f"{key}: {path} has no image processor ({' or '.join(CLIP_PROCESSOR_FILES)}); save the "
                             "CLIPProcessor there with save_pretrained")


def check_stable_diffusion(config: dict[str, Any], channels: int) -> None:
    """The text-to-image settings, checked from the model's config files alone (no weights are loaded)."""
    from bibaddiff.diffusion.pretrained import TINY_BUILD_KEYS, check_pretrained, check_tiny_build

    diffusion = config["diffusion"]
    if channels != 3:
        raise BibaddiffError("config key diffusion.kind: stable_diffusion needs RGB images; "
                             f"dataset source {config['dataset']['source']} is grayscale")
    if not trains_models(config) and not (diffusion["pretrained"].get("path") or diffusion["pretrained"].get("build")):
        # Every model is imported, and none needs a base (checked with the imports): nothing to fine-tune from.
        check_sampler(config, 1000)
        return
    if diffusion["pretrained"].get("build"):
        # Built by the DAG (rule build_tiny_base), so there is nothing on disk to check yet; its schedule has the
        # 1,000 timesteps of Stable Diffusion's (diffusion/tiny.py).
        diffusion["pretrained"] = check_tiny_build(diffusion["pretrained"], config["dataset"]["image_size"])
        check_sampler(config, 1000)
        return
    extra = [key for key in TINY_BUILD_KEYS if key != "build" and key in diffusion["pretrained"]]
    if extra:
        raise BibaddiffError(f"config key diffusion.pretrained.{extra[0]}: only for build: tiny; a model named by "
                             "path brings its own settings")
    path, config_dir = check_pretrained(diffusion["pretrained"])
    folder = path if path.is_dir() else config_dir
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    check_sampler(config, int(scheduler.get("num_train_timesteps", 1000)))
    vae_factor = _downsampling(folder / "vae" / "config.json")
    unet_factor = _downsampling(folder / "unet" / "config.json")
    size = config["dataset"]["image_size"]
    if vae_factor and unet_factor and size % (vae_factor * unet_factor):
        raise BibaddiffError(f"config key dataset.image_size: {size} must be divisible by {vae_factor * unet_factor} for "
                             f"{path} (its VAE downsamples by {vae_factor}, its UNet by {unet_factor})")


def check_sampler(config: dict[str, Any], num_train_timesteps: int) -> None:
    """``generation.timesteps`` and ``generation.precision`` before any job: a quadratic step count that repeats
    timesteps beyond the leading zeros, and fp16 on a CPU, stop with one line. (Whether a CPU has bf16 is checked
    when the sampler runs, on the machine that runs it.)"""
    generation = config["generation"]
    options = sampler_options(generation)
    if options["timesteps"] == "quadratic":
        try:
            quadratic_timesteps(generation["ddim_steps"], num_train_timesteps)
        except BibaddiffError as error:
            raise BibaddiffError(f"config key {error}") from None
    if options["precision"] == "fp16" and config.get("device") == "cpu":
        raise BibaddiffError("config key generation.precision: fp16 samples on a CUDA device only; device is cpu "
                             "(use fp32, or bf16 on a CPU that has it)")


def _downsampling(config_file: Path) -> int | None:
    """2 ** (levels - 1) from a diffusers model config, or None when the file is absent."""
    if not config_file.is_file():
        return None
    with open(config_file) as handle:
        blocks = json.load(handle).get("block_out_channels") or [0]
    return 2 ** (len(blocks) - 1)
