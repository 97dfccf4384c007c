"""Models trained elsewhere (config key ``imported_models``): what each layout on disk is, the checks that read only
config files and file headers (run on every snakemake call), the content digest of the imported files, the model
folder the DAG writes for an import, and, with torch on first call, loading an import as a DiffusionModel.

An import's folder under ``R/models/imported/`` holds only ``bibaddiff_model.json``: the classes the model is
conditioned on and, under ``imported``, where its files are, how to load them and the SHA-256 of each. Jobs that
load it check those digests first, so a file changed after the run planned stops the job in one line instead of
being measured under the old file's name.

Layouts (``LAYOUTS``):

- ``bibaddiff``: a model folder written by this workflow (``bibaddiff_model.json``, ``unet/`` or LoRA weights,
  ``scheduler/``), e.g. another experiment's trained model;
- ``pipeline``: a diffusers pipeline folder (``model_index.json``): a DDPM's ``unet/`` and ``scheduler/``, or a whole
  Stable Diffusion (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``);
- ``unet``: a diffusers UNet folder (``config.json`` and weights): a DDPM's UNet2DModel (noise schedule from
  ``diffusion.training``), or a Stable Diffusion UNet2DConditionModel on the base ``diffusion.pretrained``;
- ``checkpoint``: one Stable Diffusion file in the original (CompVis/LDM) layout, ``.ckpt`` or ``.safetensors``, as
  the paper's code and most fine-tuning scripts save it, read with the configs of a diffusers folder;
- ``lora``: a LoRA ``.safetensors`` file on the base ``diffusion.pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bibaddiff.diffusion.base import MODEL_INFO_FILE
from bibaddiff.diffusion.pretrained import SINGLE_FILE_SUFFIXES, check_pretrained
from bibaddiff.errors import BibaddiffError
from bibaddiff.utils import file_digest, read_json

LAYOUTS = ("bibaddiff", "pipeline", "unet", "checkpoint", "lora")
# The diffusers class of each kind's denoiser: what tells a DDPM's UNet from a Stable Diffusion one on disk.
UNET_CLASSES = {"ddpm": "UNet2DModel", "stable_diffusion": "UNet2DConditionModel"}
# Layouts that hold only a UNet (or its LoRA) and take the rest of Stable Diffusion from diffusion.pretrained.
NEEDS_BASE = ("unet", "lora")
IMPORTED_KEY = "imported"


def key_of(name: str, field: str | None = None) -> str:
    return f"config key imported_models.{name}" + (f".{field}" if field else "")


# ------------------------------------------------------------------------------------------------ layouts
def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a ``.safetensors`` file, from its JSON header alone (no weight is read)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 1 << 30:
                raise ValueError("header length out of range")
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as error:
        raise BibaddiffError(f"{path}: not a safetensors file ({error})") from None
    return [name for name in header if name != "__metadata__"]


def _unet_class(config_file: Path) -> str | None:
    try:
        return read_json(config_file).get("_class_name")
    except (FileNotFoundError, ValueError):
        return None


def model_layout(path: str | Path, kind: str, key: str) -> str:
    """Which of :data:`LAYOUTS` ``path`` is, for a model of ``kind``; a path that is no model of that kind stops with
    one line naming ``key`` and what was expected."""
    path = Path(path).expanduser()
    expected = (f"a {kind} model: a bibaddiff model folder, a diffusers pipeline or UNet folder"
                + (", a single-file checkpoint (.ckpt, .safetensors) or a LoRA .safetensors" if kind == "stable_diffusion"
                   else ""))
    if not path.exists():
        raise BibaddiffError(f"{key}: {path} does not exist; name {expected}")
    if path.is_file():
        if kind != "stable_diffusion":
            raise BibaddiffError(f"{key}: {path} is a single file, not {expected}")
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise BibaddiffError(f"{key}: {path} is not {expected}")
        if path.suffix == ".safetensors" and any("lora" in name.lower() for name in safetensors_keys(path)):
            return "lora"
        return "checkpoint"
    if (path / MODEL_INFO_FILE).is_file():
        found = read_json(path / MODEL_INFO_FILE).get("kind", "ddpm")
        if found != kind:
            raise BibaddiffError(f"{key}: {path} holds a {found} model ({MODEL_INFO_FILE}), not a {kind} model")
        return "bibaddiff"
    if (path / "model_index.json").is_file():
        found = _unet_class(path / "unet" / "config.json")
        if found != UNET_CLASSES[kind]:
            raise BibaddiffError(f"{key}: {path} is a diffusers pipeline whose unet/ is {found or 'missing'}, not the "
                                 f"{UNET_CLASSES[kind]} of a {kind} model")
        return "pipeline"
    if (path / "config.json").is_file():
        found = _unet_class(path / "config.json")
        if found != UNET_CLASSES[kind]:
            raise BibaddiffError(f"{key}: {path} is a diffusers {found or 'model'} folder, not the "
                                 f"{UNET_CLASSES[kind]} of a {kind} model")
        return "unet"
    raise BibaddiffError(f"{key}: {path} is a folder without {MODEL_INFO_FILE}, model_index.json or config.json; "
                         f"name {expected}")


def unet_folder(path: Path, layout: str) -> Path | None:
    """Where the diffusers UNet of an import lies (None for a LoRA or a single-file checkpoint)."""
    if layout in ("bibaddiff", "pipeline"):
        return path / "unet" if (path / "unet").is_dir() else None
    return path if layout == "unet" else None


def _check_weights(folder: Path, key: str) -> None:
    """Weights as .safetensors: pickled weights (.bin) run code when loaded, and are refused as the workflow's own."""
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise BibaddiffError(f"{key}: {folder} has no .safetensors weights (found: {', '.join(found) or 'nothing'}); "
                             "save the model with save_pretrained(safe_serialization=True)")


def ddpm_conditioning(path: Path, layout: str) -> dict[str, int]:
    """The classes (without the null class, the last embedding), image size and channels a DDPM expects, from its
    configs."""
    unet = read_json(unet_folder(path, layout) / "config.json")
    embeddings = unet.get("num_class_embeds")
    if layout == "bibaddiff":
        info = read_json(path / MODEL_INFO_FILE)
        classes = int(info["num_classes"])
    else:
        classes = None if embeddings is None else int(embeddings) - 1
    return {"num_classes": classes, "num_class_embeds": embeddings, "image_size": int(unet.get("sample_size") or 0),
            "channels": int(unet.get("in_channels") or 0)}


def check_ddpm_import(path: Path, layout: str, key: str, num_classes: int, image_size: int, channels: int) -> None:
    """A DDPM that fits the dataset: class-conditional on exactly its classes plus a null class, its image size and
    channels, weights as safetensors, and a noise schedule where the layout carries one."""
    unet = unet_folder(path, layout)
    if unet is None or not (unet / "config.json").is_file():
        raise BibaddiffError(f"{key}: {path} has no unet/config.json")
    _check_weights(unet, key)
    if layout in ("bibaddiff", "pipeline") and not (path / "scheduler" / "scheduler_config.json").is_file():
        raise BibaddiffError(f"{key}: {path} has no scheduler/scheduler_config.json (the noise schedule it was "
                             "trained with)")
    found = ddpm_conditioning(path, layout)
    if found["num_class_embeds"] is None:
        raise BibaddiffError(f"{key}: {path} is not class-conditional (its UNet config has no num_class_embeds); "
                             "the workflow generates per class with classifier-free guidance")
    if int(found["num_class_embeds"]) != found["num_classes"] + 1:
        raise BibaddiffError(f"{key}: {path} has {found['num_class_embeds']} class embeddings for "
                             f"{found['num_classes']} classes; expected one more, the null class")
    if found["num_classes"] != num_classes:
        raise BibaddiffError(f"{key}: {path} is conditioned on {found['num_classes']} classes (num_class_embeds "
                             f"{found['num_class_embeds']}, the last the null class), but the dataset has {num_classes}")
    if found["image_size"] != image_size or found["channels"] != channels:
        raise BibaddiffError(f"{key}: {path} makes {found['image_size']} px images with {found['channels']} "
                             f"channel(s), but the dataset has {image_size} px and {channels}")


def single_file_configs(entry: dict[str, Any], pretrained: dict[str, Any]) -> str | None:
    """The diffusers folder whose configs and tokenizer a single-file checkpoint is read with: the import's
    ``config``, else ``diffusion.pretrained.config``, else ``diffusion.pretrained.path`` when it is a folder."""
    if entry.get("config"):
        return entry["config"]
    if pretrained.get("config"):
        return pretrained["config"]
    path = pretrained.get("path")
    return path if path and Path(path).expanduser().is_dir() else None


def has_base(pretrained: dict[str, Any]) -> bool:
    return bool(pretrained.get("path") or pretrained.get("build"))


def check_sd_import(name: str, entry: dict[str, Any], path: Path, layout: str, pretrained: dict[str, Any],
                    num_classes: int, image_size: int) -> None:
    """A Stable Diffusion import that can be loaded: a base for a LoRA or a bare UNet, the configs of a single-file
    checkpoint, a whole pipeline folder; a bibaddiff folder made for this dataset's classes and image size."""
    key = key_of(name, "path")
    if layout in NEEDS_BASE and not has_base(pretrained):
        what = "a LoRA file" if layout == "lora" else "a bare UNet folder"
        raise BibaddiffError(f"{key}: {path} is {what}, which needs a base model: set diffusion.pretrained (path, or "
                             "build: tiny) to the Stable Diffusion it was trained on")
    if layout == "unet":
        _check_weights(path, key)
    elif layout == "pipeline":
        try:
            check_pretrained({"path": str(path)})
        except BibaddiffError as error:
            raise BibaddiffError(f"{key}: {str(error).split(': ', 1)[1]}") from None
    elif layout == "checkpoint":
        configs = single_file_configs(entry, pretrained)
        if configs is None:
            raise BibaddiffError(f"{key_of(name, 'config')}: {path.name} is a single-file checkpoint, which is read "
                                 "with a diffusers folder's configs and tokenizer (e.g. the base model's); set "
                                 f"imported_models.{name}.config or diffusion.pretrained")
        try:
            check_pretrained({"path": str(path), "config": configs})
        except BibaddiffError as error:
            raise BibaddiffError(f"{key_of(name, 'config')}: {str(error).split(': ', 1)[1]}") from None
    elif layout == "bibaddiff":
        info = read_json(path / MODEL_INFO_FILE)
        if not (path / "unet").is_dir() and not any(path.glob("*lora*.safetensors")):
            raise BibaddiffError(f"{key}: {path} has neither a unet/ folder nor LoRA weights")
        if (path / "unet").is_dir():
            _check_weights(path / "unet", key)
        if int(info.get("num_classes", -1)) != num_classes or int(info.get("image_size", -1)) != image_size:
            raise BibaddiffError(f"{key}: {path} was fine-tuned on {info.get('num_classes')} classes at "
                                 f"{info.get('image_size')} px, but the dataset has {num_classes} at {image_size} px")
        if not has_base(pretrained):
            try:
                check_pretrained(info.get("pretrained"))
            except BibaddiffError as error:
                raise BibaddiffError(f"{key}: the base model named in {path / MODEL_INFO_FILE} cannot be used "
                                     f"({error}); set diffusion.pretrained to it") from None


def check_training_folder(name: str, folder: str, num_classes: int, image_size: int, channels: int) -> None:
    """A training set in this project's format (``manifest.json``, ``metadata.jsonl``) of the dataset's classes and
    image shape."""
    key = key_of(name, "training_data")
    path = Path(folder).expanduser()
    missing = [file for file in ("manifest.json", "metadata.jsonl") if not (path / file).is_file()]
    if not path.is_dir() or missing:
        raise BibaddiffError(f"{key}: {folder} is not a dataset folder of this workflow (missing "
                             f"{', '.join(missing) if path.is_dir() else 'the folder'}); give the poisoned training "
                             "set's folder, 'rebuild', or training_share instead")
    manifest = read_json(path / "manifest.json")
    found = (len(manifest.get("class_names", [])), manifest.get("image_size"), manifest.get("channels"))
    if found != (num_classes, image_size, channels):
        raise BibaddiffError(f"{key}: {folder} holds {found[0]} classes of {found[1]} px with {found[2]} channel(s); "
                             f"the dataset has {num_classes} of {image_size} px with {channels}")


# ------------------------------------------------------------------------------------------------ the config
def attack_of(entry: dict[str, Any]) -> tuple[str | None, float]:
    """(trigger, poison ratio) of an import; (None, 0.0) for a clean model."""
    return (None, 0.0) if entry.get("clean") else (entry["trigger"], float(entry["poison_ratio"]))


def check_imported_models(config: dict[str, Any], class_names: list[str], channels: int, train_total: int,
                          outside_target: int) -> None:
    """Each entry of ``imported_models`` before any job: the attack it states, where its training data comes from,
    and that its path is a model of its kind that fits the dataset. One line names the key."""
    imports = config.get("imported_models") or {}
    dataset, diffusion = config["dataset"], config["diffusion"]
    for name, entry in imports.items():
        trigger, clean = entry.get("trigger"), entry.get("clean", False)
        if clean and trigger:
            raise BibaddiffError(f"{key_of(name, 'clean')}: a clean model has no trigger; give trigger or clean: true, "
                                 "not both")
        if not clean and not trigger:
            raise BibaddiffError(f"{key_of(name)}: say which attack the model was trained with: trigger (an entry of "
                                 f"triggers: {', '.join(config['triggers'])}) or clean: true")
        if trigger and trigger not in config["triggers"]:
            raise BibaddiffError(f"{key_of(name, 'trigger')}: {trigger!r} is not an entry of triggers; allowed "
                                 f"{', '.join(config['triggers'])}")
        if trigger and "poison_ratio" not in entry:
            raise BibaddiffError(f"{key_of(name, 'poison_ratio')}: missing; the share of training images that were "
                                 "poisoned")
        if clean and "poison_ratio" in entry:
            raise BibaddiffError(f"{key_of(name, 'poison_ratio')}: a clean model has no poisoning ratio")
        if entry["kind"] != diffusion["kind"]:
            raise BibaddiffError(f"{key_of(name, 'kind')}: {entry['kind']}, but diffusion.kind is {diffusion['kind']}; "
                                 "an experiment measures models of one kind")
        given = [field for field in ("training_data", "training_share") if entry.get(field) is not None]
        if not given:
            raise BibaddiffError(f"{key_of(name)}: give its training data (training_data: the poisoned training set's "
                                 "folder, or 'rebuild' to poison this config's dataset again) or the share of "
                                 "triggered images among its target-class training images (training_share)")
        if len(given) > 1:
            raise BibaddiffError(f"{key_of(name, 'training_share')}: give training_data or training_share, not both")
        rebuild = entry.get("training_data") == "rebuild"
        if "poisoning_seed" in entry and not (rebuild and trigger):
            raise BibaddiffError(f"{key_of(name, 'poisoning_seed')}: only with training_data: rebuild of a poisoned "
                                 "model (the seed that drew its poisoned images)")
        if rebuild and trigger:
            wanted = int(round(entry["poison_ratio"] * train_total))
            if wanted > outside_target:
                raise BibaddiffError(f"{key_of(name, 'poison_ratio')}: {entry['poison_ratio']} asks for {wanted} "
                                     f"poisoned images but only {outside_target} training images lie outside the "
                                     f"target class; allowed up to {outside_target / train_total:.3f}")
        elif entry.get("training_data") is not None and not rebuild:
            check_training_folder(name, entry["training_data"], len(class_names), dataset["image_size"], channels)
        path = Path(entry["path"]).expanduser()
        layout = model_layout(path, entry["kind"], key_of(name, "path"))
        if entry.get("config") and layout != "checkpoint":
            raise BibaddiffError(f"{key_of(name, 'config')}: only for a single-file checkpoint; {path} is a "
                                 f"{layout} import")
        if entry["kind"] == "ddpm":
            check_ddpm_import(path, layout, key_of(name, "path"), len(class_names), dataset["image_size"], channels)
        else:
            check_sd_import(name, entry, path, layout, diffusion["pretrained"], len(class_names),
                            dataset["image_size"])
    if config.get("defenses", {}).get("enabled") and config["defenses"].get("generated_set_balance") == "poisoned":
        unknown = [name for name, entry in imports.items() if entry.get("training_data") is None]
        if unknown:
            raise BibaddiffError(f"{key_of(unknown[0], 'training_share')}: defenses.generated_set_balance 'poisoned' "
                                 "copies the class counts of each model's training set, and this import states only "
                                 "a training share; give its training_data or use the clean balance")


# ------------------------------------------------------------------------------------------------ digests
# Snakemake's marker in the folders it declares as outputs (an empty file it may touch): bookkeeping, not content.
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def imported_files(path: str | Path) -> list[Path]:
    """The files of an import: the file itself, or every file below the folder (hidden ones included, Snakemake's
    marker not), sorted."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    return sorted(file for file in path.rglob("*") if file.is_file() and file.name != SNAKEMAKE_MARKER)


def folder_digest(digests: dict[str, str]) -> str:
    """One SHA-256 for a set of files, from each file's name and digest: what a training set of thousands of images
    is recorded by."""
    import hashlib

    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def content_digests(path: str | Path) -> dict[str, str]:
    """SHA-256 of each file of an import, by its name relative to ``path`` (a file's own name for a file)."""
    path = Path(path).expanduser()
    files = imported_files(path)
    if not files:
        raise BibaddiffError(f"{path}: no file to import")
    return {(file.name if path.is_file() else file.relative_to(path).as_posix()): file_digest(file) for file in files}


def check_unchanged(path: str | Path, planned: dict[str, str], what: str = "imported model") -> None:
    """Fail with one line naming the file unless ``path`` holds exactly the files, with exactly the contents, that
    the run planned with: outputs made from a changed file would otherwise carry the old file's name."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BibaddiffError(f"{path}: the {what} is gone since the run planned with it")
    current = content_digests(path)
    for name in sorted(set(planned) | set(current)):
        if planned.get(name) != current.get(name):
            change = "added" if name not in planned else "removed" if name not in current else "changed"
            raise BibaddiffError(f"{path / name if path.is_dir() else path}: {change} since the run planned with this "
                                 f"{what}; run snakemake again to measure the new files (nothing made from the old "
                                 "ones is reused for them)")


# ------------------------------------------------------------------------------------------------ records
def import_record(name: str, entry: dict[str, Any], config: dict[str, Any], pretrained: dict[str, Any],
                  clean_stage: str) -> dict[str, Any]:
    """What loads an import and what it is made of: the path, kind, layout, the digest of each file and, where the
    files do not say it, the base model, the configs of a single-file checkpoint, the noise schedule of a bare DDPM
    UNet and the dataset whose classes it is conditioned on. The import's folder is placed by this record."""
    path = Path(entry["path"]).expanduser().resolve()
    kind = entry["kind"]
    layout = model_layout(path, kind, key_of(name, "path"))
    record: dict[str, Any] = {"kind": "imported model", "model_kind": kind, "path": str(path), "layout": layout,
                              "files": content_digests(path)}
    if kind == "stable_diffusion" and layout != "pipeline" and has_base(pretrained):
        record["base"] = dict(pretrained)
    if layout == "checkpoint":
        record["config"] = str(Path(single_file_configs(entry, config["diffusion"]["pretrained"])).expanduser().resolve())
    if kind == "ddpm" and layout == "unet":
        training = config["diffusion"]["training"]
        record["scheduler"] = {k: training[k] for k in ("num_train_timesteps", "beta_schedule")}
    if layout != "bibaddiff":
        # Class names (and Stable Diffusion's prompts) come from the dataset: the model's files do not hold them.
        record["classes"] = clean_stage
    return record


def imported_model_info(record: dict[str, Any], clean_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``bibaddiff_model.json`` of an import's folder: the classes the model is conditioned on (its own file's,
    or the clean dataset's) and the import record under ``imported``. Checks the files against the record's
    digests first."""
    path = Path(record["path"])
    check_unchanged(path, record["files"])
    kind, layout = record["model_kind"], record["layout"]
    if layout == "bibaddiff":
        info = read_json(path / MODEL_INFO_FILE)
        if kind == "stable_diffusion" and record.get("base"):
            info["pretrained"] = record["base"]
        return {**info, IMPORTED_KEY: record}
    if clean_manifest is None:
        raise BibaddiffError(f"{path}: the {layout} import needs the clean dataset's manifest for its class names")
    info: dict[str, Any] = {"kind": kind, "num_classes": len(clean_manifest["class_names"]),
                            "class_names": list(clean_manifest["class_names"]),
                            "image_size": int(clean_manifest["image_size"]), "channels": int(clean_manifest["channels"])}
    if kind == "stable_diffusion":
        info["class_prompts"] = list(clean_manifest["class_prompts"])
    return {**info, IMPORTED_KEY: record}


def write_import_folder(folder: str | Path, record: dict[str, Any], classes: str | Path | None = None) -> dict[str, Any]:
    """An import's folder: its ``bibaddiff_model.json`` (:func:`imported_model_info`; ``classes``: the clean training
    set whose class names, and prompts, a model without its own file is conditioned on). Returns what it wrote."""
    from bibaddiff.utils import write_json

    manifest = read_json(Path(classes) / "manifest.json") if classes else None
    info = imported_model_info(record, manifest)
    write_json(Path(folder) / MODEL_INFO_FILE, info)
    return info


def verify_import(model_dir: str | Path) -> None:
    """For an import's folder, check that the files it points at are the ones the run planned with (a model trained
    here has nothing to check)."""
    info = read_json(Path(model_dir) / MODEL_INFO_FILE)
    if IMPORTED_KEY in info:
        check_unchanged(info[IMPORTED_KEY]["path"], info[IMPORTED_KEY]["files"])
