"""The experiment's plan, from the validated config: attacks, models, cells, stage records and digests, folder and
file names. Every name has its formatter and its parser here, and nowhere else: the rules ask the plan for paths and
give each job its settings as params, so no adapter or report function reads a setting out of a file name.

Light on purpose (no torch, no Snakemake): every snakemake call, dry runs included, builds a :class:`Plan`.

Layout (``R`` = ``results/<dataset.name>``, ``E`` = ``results/experiments/<experiment>``, ``<d>`` = 12 hex digits
of :func:`settings_digest`)::

    R/data/<stage>/{train,heldout}            stage = <attack>-<d> | clean-<d>
    R/judges/content-<d>, R/judges/trigger-<trigger>-<d>
    R/latents/<stage>/vae-<d>.safetensors
    R/models/<stage>/train-<d>/seed<k>        (+ seed<k>.state: the resumable training state)
    R/generated/<stage>/train-<d>/seed<k>/gen-<d>/x0-<sampler>/c<condition>_s<guidance>.npy|png
                                          .../cal-<d>/...       (the calibration draw), .../allclass-<d>/ (quality)
    E/metrics/<attack>/seed<k>.json, E/calibration/<trigger>.json, E/replication/..., E/quality/...,
    E/defenses/{generated_sets/<attack>/seed<k>_s<guidance>, classifiers/<attack>/<trainset>, detection/...}
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bibaddiff.diffusion.imported import content_digests, folder_digest, import_record
from bibaddiff.diffusion.timesteps import SAMPLER_KEYS, non_default_sampler_options
from bibaddiff.errors import BibaddiffError
from bibaddiff.triggers import DETECTOR_ALPHA_RANGE

# ------------------------------------------------------------------------------------------------------ names
# Each pattern is the language of one kind of name; the wildcard constraints of the rules are these patterns.
NAME = r"[A-Za-z0-9_]+"
NUMBER = r"\d+(?:\.\d+)?"
DIGEST = r"[0-9a-f]{12}"
DUPLICATE_MODES = ("random", "duplicates")
POISONED_ATTACK = rf"{NAME}-p[0-9.]+"
DUPLICATE_ATTACK = rf"{POISONED_ATTACK}-dup_(?:random|duplicates)"
ATTACK = rf"clean|{POISONED_ATTACK}(?:-dup_(?:random|duplicates))?"
STAGE = rf"(?:{ATTACK})-{DIGEST}"
SAMPLER = r"none|clip|clip_recompute"
GENERATED_SET = rf"generated_seed\d+_s{NUMBER}"
# Where a model lies below R/models (and its generations below R/generated): trained here, <stage>/train-<d>/seed<k>;
# imported, imported/<name>-<d>, the digest of its import record (its files' contents included).
TRAINED_MODEL = rf"{STAGE}/train-{DIGEST}/seed\d+"
IMPORT = rf"{NAME}-{DIGEST}"
IMPORTED_MODEL = rf"imported/{IMPORT}"
TRAINSET = rf"clean|poisoned|{GENERATED_SET}"
DETSET = rf"training|{GENERATED_SET}"
WILDCARD_CONSTRAINTS = {
    "attack": ATTACK,
    # A shared stage's folder: the attack's name and a digest of everything that determines its data.
    "stage": STAGE,
    "model": rf"{TRAINED_MODEL}|{IMPORTED_MODEL}",
    "imported": IMPORT,
    "judge": rf"{NAME}-{DIGEST}",
    "seed": r"\d+",
    "condition": r"\d+",
    "guidance": NUMBER,
    "sampler": SAMPLER,
    "trigger": NAME,
    "trainset": TRAINSET,
    "detset": DETSET,
}
# The stages that rule poison makes, and those that rule poison_duplicates makes (same output pattern).
POISONED_STAGE = rf"{POISONED_ATTACK}-{DIGEST}"
DUPLICATE_STAGE = rf"{DUPLICATE_ATTACK}-{DIGEST}"


def _parse(pattern: str, text: str, what: str) -> re.Match:
    match = re.fullmatch(pattern, str(text))
    if match is None:
        raise BibaddiffError(f"{text!r} is not {what}")
    return match


def number(value: float | int | str) -> str:
    """How numbers appear in names: 0.1 -> '0.1', 2.0 -> '2', 5e-05 -> '0.00005' (never an exponent, which the
    wildcard patterns would refuse)."""
    return format(Decimal(repr(float(value))).normalize(), "f")


def parse_number(text: str) -> float:
    """The value of a number in a name (:func:`number`'s inverse, up to float equality)."""
    return float(_parse(NUMBER, text, "a number of a name (digits, optionally a point and digits)").group(0))


def settings_digest(settings: Any) -> str:
    """12 hex digits that change with any setting: a folder name for a stage placed by its settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AttackName:
    """What an attack's name says: ``<trigger>-p<ratio>``, ``<trigger>-p<ratio>-dup_<mode>`` or ``clean``."""

    trigger: str | None
    ratio: float
    duplicates: str | None = None


def attack_name(trigger: str | None, ratio: float = 0.0, duplicates: str | None = None) -> str:
    if trigger is None:
        return "clean"
    if duplicates is not None and duplicates not in DUPLICATE_MODES:
        raise BibaddiffError(f"duplicate-poisoning mode must be one of {', '.join(DUPLICATE_MODES)}; got {duplicates!r}")
    return f"{trigger}-p{number(ratio)}" + (f"-dup_{duplicates}" if duplicates else "")


def parse_attack(name: str) -> AttackName:
    if name == "clean":
        return AttackName(None, 0.0)
    match = _parse(rf"({NAME})-p([0-9.]+)(?:-dup_(random|duplicates))?", name, "an attack name")
    return AttackName(match.group(1), parse_number(match.group(2)), match.group(3))


def attack_series(name: str) -> str:
    """An attack's name without its ratio: the series it belongs to across ratios (``patch``, ``patch-dup_random``)."""
    parsed = parse_attack(name)
    if parsed.trigger is None:
        return name
    return parsed.trigger + (f"-dup_{parsed.duplicates}" if parsed.duplicates else "")


def stage_name(attack: str, record: Any) -> str:
    """A shared stage's folder: the attack's name and the digest of the stage's record."""
    return f"{attack}-{settings_digest(record)}"


def parse_stage(name: str) -> tuple[str, str]:
    """(attack, digest) of a stage folder's name."""
    match = _parse(rf"({ATTACK})-({DIGEST})", name, "a stage name (<attack>-<12 hex digits>)")
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class ModelName:
    """What a model's place says: a stage, training settings and seed (trained here), or an import's name and
    digest."""

    stage: str | None = None
    training_id: str | None = None
    seed: int | None = None
    imported: str | None = None


def trained_model_name(stage: str, training_id: str, seed: int | str) -> str:
    return f"{stage}/{training_id}/seed{seed}"


def imported_model_name(name: str, record: Any) -> str:
    return f"imported/{name}-{settings_digest(record)}"


def parse_model_name(text: str) -> ModelName:
    match = _parse(rf"({STAGE})/(train-{DIGEST})/seed(\d+)|imported/({IMPORT})", text,
                   "a model's place (<stage>/train-<digest>/seed<k> or imported/<name>-<digest>)")
    if match.group(4):
        return ModelName(imported=match.group(4))
    return ModelName(match.group(1), match.group(2), int(match.group(3)))


def seed_name(seed: int | str) -> str:
    return f"seed{int(seed)}"


def parse_seed_name(name: str) -> int:
    return int(_parse(r"seed(\d+)", name, "a seed folder's name (seed<k>)").group(1))


@dataclass(frozen=True)
class Cell:
    """One generated cell: a sampler (x0-clipping mode), a condition (class) and a guidance scale."""

    x0_clipping: str
    condition: int
    guidance: float

    def as_params(self) -> dict[str, Any]:
        return {"x0_clipping": self.x0_clipping, "condition": int(self.condition), "guidance": float(self.guidance)}


def cell_file(sampler: str, condition: int | str, guidance: float | str, ext: str = "npy") -> str:
    """A cell's file inside its sampling folder: ``x0-<sampler>/c<condition>_s<guidance>.<ext>``. Wildcard patterns
    (``{sampler}``) are passed through as they are."""
    def text(value: Any) -> str:
        return value if isinstance(value, str) else number(value)
    return f"x0-{sampler}/c{condition}_s{text(guidance)}.{ext}"


def parse_cell_file(path: str | Path) -> Cell:
    match = re.search(rf"x0-({SAMPLER})/c(\d+)_s({NUMBER})\.(?:npy|png)$", Path(path).as_posix())
    if match is None:
        raise BibaddiffError(f"{path}: not a generated cell's path (expected .../x0-<mode>/c<class>_s<scale>.npy)")
    return Cell(match.group(1), int(match.group(2)), parse_number(match.group(3)))


def generated_set_name(seed: int | str, guidance: float | str) -> str:
    """A generated training set as a trainset (or detset) name: ``generated_seed<k>_s<guidance>``."""
    return f"generated_seed{int(seed)}_s{guidance if isinstance(guidance, str) else number(guidance)}"


@dataclass(frozen=True)
class TrainsetName:
    """What a trainset name says: ``clean``, ``poisoned`` (or ``training``, for detection) or a generated set."""

    kind: str
    seed: int | None = None
    guidance: float | None = None


def parse_trainset(name: str) -> TrainsetName:
    if name in ("clean", "poisoned", "training"):
        return TrainsetName(name)
    match = _parse(rf"generated_seed(\d+)_s({NUMBER})", name, "a training set's name (clean, poisoned, training or "
                   "generated_seed<k>_s<guidance>)")
    return TrainsetName("generated", int(match.group(1)), parse_number(match.group(2)))


def generated_set_folder(seed: int | str, guidance: float | str) -> str:
    """A generated training set's folder under its attack: ``seed<k>_s<guidance>``."""
    return f"seed{seed}_s{guidance if isinstance(guidance, str) else number(guidance)}"


def judge_name(trigger: str, record: Any) -> str:
    return f"{trigger}-{settings_digest(record)}"


def parse_judge_name(name: str) -> tuple[str, str]:
    match = _parse(rf"({NAME})-({DIGEST})", name, "a trigger judge's name (<trigger>-<12 hex digits>)")
    return match.group(1), match.group(2)


def job_name(*parts: str) -> str:
    """How logs and benchmarks name a job: its wildcards joined by underscores (a model's place keeps its slashes, so
    a generate job's log lies in folders: logs/generate/<stage>/train-<d>/seed<k>_gen-<d>.log)."""
    return "_".join(parts)


def rule_of_job_file(path: str | Path) -> str:
    """The rule whose log or benchmark file this is: the folder right below the nearest ``logs`` or ``benchmarks``
    (:meth:`Plan.log_file` and friends; the job's name below it may hold folders)."""
    parts = Path(path).parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in ("logs", "benchmarks") and index + 2 < len(parts):
            return parts[index + 1]
    raise BibaddiffError(f"{path}: not a job's log or benchmark file (expected .../logs/<rule>/... or "
                         ".../benchmarks/<rule>/...)")


def training_launcher(python: str, processes: int, gpu_device: str | None = None) -> str:
    """The interpreter, or ``accelerate launch`` with N processes and a free port of its own per job; for a job that
    may use a GPU (``gpu_device``: the config's device), behind :mod:`bibaddiff.gpu_slots`, which holds a card per
    process and hands the command the locks."""
    python = shlex.quote(python)
    slots = f"{python} -m bibaddiff.gpu_slots --device {shlex.quote(gpu_device)} --cards {processes} -- " if gpu_device else ""
    if processes == 1:
        return slots + python
    free_port = f"$({python} -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])')"
    return (f"{slots}{python} -m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes {processes}"
            " --mixed_precision no --dynamo_backend no"
            f" --main_process_port {free_port}")


# Keys of the other kind of model are left out, so that they neither reach the trainer nor rerun its jobs.
KIND_ONLY_KEYS = {
    "ddpm": ("num_train_timesteps", "beta_schedule"),
    "stable_diffusion": ("finetune", "lora_rank", "lora_alpha", "gradient_checkpointing", "encode_batch_size"),
}
# How detectors are checked and their ratios corrected: settings of the calibration, not of any judge's training.
CALIBRATION_KEYS = ("target_fpr", "calibration_images", "detector_negatives", "dequantization", "bootstrap_samples")
# Which wildcards stay per generate job: none (one job per model), a sampler's condition, or a single cell.
PER_GENERATION_JOB = {"model": (), "condition": ("sampler", "condition"), "cell": ("sampler", "condition", "guidance")}


ORIGIN_TRAINED = "trained here"


@dataclass(frozen=True)
class ImportedModel:
    """A model of the plan that another run trained (an entry of ``imported_models``): its attack and seed in the
    tables, its config entry, and its import record (:func:`bibaddiff.diffusion.imported.import_record`), whose digest
    places its folder."""

    name: str
    attack: str
    seed: int
    entry: dict[str, Any]
    record: dict[str, Any]

    @property
    def model(self) -> str:
        return imported_model_name(self.name, self.record)

    @property
    def origin(self) -> str:
        return f"imported from {self.record['path']}"

    @property
    def rebuilds_data(self) -> bool:
        return self.entry.get("training_data") == "rebuild"


# ------------------------------------------------------------------------------------------------------ the plan
class Plan:
    """Everything the rules need from a validated config (:func:`bibaddiff.config.validate_config`): which attacks,
    models and cells there are, the records and digests that place shared stages, and every path.

    A method's string arguments default to wildcard patterns (``"{stage}"``), so the rules ask the plan for their
    output patterns as well as for concrete paths."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.dataset = config["dataset"]["name"]
        self.results = f"results/{self.dataset}"
        # What an experiment concludes (tables, figures, report, provenance) lives in its own folder; the stages it
        # computes on the way (data, models, generations) live under results, where other experiments may reuse them.
        self.experiment = config["experiment"]
        self.experiment_dir = f"results/experiments/{self.experiment}"
        self.summary_dir = f"{self.experiment_dir}/summary"
        self.provenance_dir = f"{self.experiment_dir}/provenance"
        self.target = config["target"]
        self.device = config["device"]
        self.diffusion_kind = config["diffusion"]["kind"]
        generation = config["generation"]
        training = config["diffusion"]["training"]

        # Every model is an (attack, seed): the models trained here, then the imported ones (imported_models).
        self.attacks: dict[str, dict[str, Any]] = {
            attack_name(trigger, ratio): {"trigger": trigger, "ratio": float(ratio)}
            for trigger in config["triggers"] for ratio in config["poisoning"]["ratios"] if training["seeds"]
        }
        self.duplicates = config["replication"]["duplicate_poisoning"]
        if self.duplicates["enabled"]:
            # Random vs duplicated-image poisoning at the same ratio, on the same training set with duplicates.
            trigger = self.duplicates["trigger"] or next(iter(config["triggers"]))
            for mode in DUPLICATE_MODES:
                self.attacks[attack_name(trigger, self.duplicates["ratio"], mode)] = {
                    "trigger": trigger, "ratio": float(self.duplicates["ratio"]), "duplicates": mode}
        self.clean_seeds = list(training["clean_seeds"])
        self.trained_attacks = set(self.attacks) | ({"clean"} if self.clean_seeds else set())
        self.import_entries = config.get("imported_models", {})
        self.import_slots = {}
        for name, entry in self.import_entries.items():
            trigger = None if entry.get("clean") else entry["trigger"]
            attack = attack_name(trigger, entry.get("poison_ratio", 0.0))
            self.attacks.setdefault(attack, {"trigger": trigger, "ratio": float(entry.get("poison_ratio", 0.0))})
            self.import_slots[(attack, int(entry["seed"]))] = name
        # The clean control comes last, whether trained here or imported.
        if self.clean_seeds or "clean" in self.attacks:
            self.attacks.pop("clean", None)
            self.attacks["clean"] = {"trigger": None, "ratio": 0.0}
        self.conditions = [self.target] + list(generation["other_conditions"])
        self.guidance = [number(s) for s in generation["guidance_scales"]]
        # DDIM's x0-clipping modes (a list after validation); the first one also serves the single-sampler stages.
        self.samplers = list(generation["x0_clipping"])
        # One order of (sampler, condition, guidance) cells, shared by a model's cell files and its cell parameters.
        self.cells = [(sampler, condition, s) for sampler in self.samplers for condition in self.conditions
                      for s in self.guidance]
        # The relabel-only control changes no pixel: it has no trigger detector and no trigger to test a defence with.
        self.pixel_triggers = [name for name, spec in config["triggers"].items() if spec["type"] != "relabel"]

        # ---- shared stages: placed by a readable name and a digest of their settings (and of their sources).
        self.clean_record = {"kind": "clean dataset",
                             "dataset": {k: v for k, v in config["dataset"].items() if k != "name"}}
        self.clean_stage = stage_name("clean", self.clean_record)
        self.replication = config["replication"]
        # With poisoning.draw_per_seed, each training seed's model learns from a poison set of its own (drawn with
        # poisoning.seed + the training seed); otherwise every seed shares one draw. The duplicate-poisoning pair
        # always shares its draw (its design fixes which images are poisoned).
        self.draw_per_seed = config["poisoning"]["draw_per_seed"]
        # The poisoned sets the DAG makes: those of the models trained here and of the imports that rebuild theirs.
        self.poisoned_records = {(attack, seed): self.poisoned_record(attack, seed)
                                 for attack, seed in self.models() if attack != "clean"
                                 and (self.import_slots.get((attack, seed)) is None
                                      or self.import_entries[self.import_slots[(attack, seed)]].get("training_data") == "rebuild")}
        self.stage_records = {self.clean_stage: self.clean_record,
                              **{self.stage_of(attack, seed): record
                                 for (attack, seed), record in self.poisoned_records.items()}}
        self.attack_of_stage = {self.stage_of(attack, seed): attack for attack, seed in self.models()
                                if attack == "clean" or (attack, seed) in self.poisoned_records}

        # diffusion.pretrained as the jobs see it. A base model that the DAG builds is named by its folder, which its
        # settings and the images its VAE learns from place.
        self.pretrained = config["diffusion"]["pretrained"]
        self.tiny_base = None
        if self.diffusion_kind == "stable_diffusion" and self.pretrained.get("build"):
            self.tiny_base = (f"{self.results}/base/tiny-"
                              f"{settings_digest({'build': self.pretrained, 'data': self.clean_stage})}")
            self.pretrained = {"path": self.tiny_base, "config": None}
        # Each import, placed by its record: its files' digests, how it loads, where its classes come from.
        self.imported = {(self.import_attack(name), int(entry["seed"])): ImportedModel(
            name, self.import_attack(name), int(entry["seed"]), entry,
            import_record(name, entry, config, self.pretrained, self.clean_stage))
            for name, entry in self.import_entries.items()}
        self.import_of_folder = {imported.model.removeprefix("imported/"): imported for imported in self.imported.values()}
        self.training_settings = {
            k: v for k, v in training.items()
            if k not in ("seeds", "clean_seeds", "threads", "processes", "encode_batch_size")
            and not any(k in keys for kind, keys in KIND_ONLY_KEYS.items() if kind != self.diffusion_kind)
        }
        if self.diffusion_kind == "stable_diffusion":
            self.trainer_settings = {"kind": self.diffusion_kind, "training": self.training_settings,
                                     "pretrained": self.pretrained}
        else:
            self.trainer_settings = {"training": self.training_settings, "model": config["diffusion"]["model"]}
        # The sampler is a wildcard of each cell, not a setting shared by all of them. The batch size is a resource:
        # a cell's initial noise is drawn for the whole cell at once, so its images do not depend on how it is cut
        # into batches. cells_per_job only decides which job makes a cell.
        self.sampling_settings = {k: v for k, v in generation.items()
                                  if k not in ("guidance_scales", "other_conditions", "threads", "x0_clipping",
                                               "batch_size", "cells_per_job", *SAMPLER_KEYS)}
        # generation.timesteps and precision enter the digest only when not at their defaults, so that cells made
        # before the keys existed keep their folders.
        self.sampling_settings.update(non_default_sampler_options(generation))
        self.generation_batch = generation["batch_size"]
        # Every model of a config trains with the same settings, and every cell samples with the same ones.
        self.training_id = f"train-{settings_digest(self.trainer_settings)}"
        self.sampling_id = f"gen-{settings_digest(self.sampling_settings)}"
        self.latents_id = f"vae-{settings_digest(self.pretrained)}"
        self.generation_job_wildcards = PER_GENERATION_JOB[generation["cells_per_job"]]
        self.generation_job_id = [{"sampler": "x0-{sampler}", "condition": "c{condition}", "guidance": "s{guidance}"}[name]
                                  for name in self.generation_job_wildcards]

        # ---- judges
        self.judges = config["judges"]
        self.judge_settings = {k: v for k, v in self.judges.items()
                               if k not in ("threads", "accuracy_floor", *CALIBRATION_KEYS)}
        # Every trigger detector is checked on a calibration draw of the first clean model: its cells, with a seed of
        # their own (generation.seed + 2; the all-class sets use + 1), so that nothing is tuned on the measured cells.
        self.calibration_sampling = {**self.sampling_settings, "num_images": self.judges["calibration_images"],
                                     "seed": generation["seed"] + 2, "purpose": "trigger detector calibration"}
        self.calibration_id = f"cal-{settings_digest(self.calibration_sampling)}"
        # The first clean model draws it, trained here or imported.
        self.calibration_model = self.model_name("clean", self.training_seeds("clean")[0]) if "clean" in self.attacks else None
        self.calibration_cells = [self.generated(self.calibration_model, sampler, condition, s,
                                                 sampling_id=self.calibration_id)
                                  for sampler, condition, s in self.cells] if self.calibration_model else []
        # Without a clean model there are no clean generations: detectors train on real images and are checked on
        # held-out real images, and every calibration row says so.
        self.detector_negatives = self.judges["detector_negatives"] if self.calibration_model else "real"
        # The content judge learns to ignore the triggers by seeing them stamped; a relabel-only control stamps nothing.
        self.content_judge_triggers = {name: config["triggers"][name] for name in self.pixel_triggers}
        self.content_judge_record = {"kind": "content judge", "data": self.clean_stage, "settings": self.judge_settings,
                                     "triggers": self.content_judge_triggers}
        self.content_judge = f"{self.results}/judges/content-{settings_digest(self.content_judge_record)}"
        self.trigger_judge_records = {trigger: self._trigger_judge_record(trigger) for trigger in self.pixel_triggers}
        self.trigger_judge_names = {trigger: judge_name(trigger, record)
                                    for trigger, record in self.trigger_judge_records.items()}
        self.trigger_of_judge = {judge: trigger for trigger, judge in self.trigger_judge_names.items()}

        # ---- defences: studied on the plain attacks with a trigger; the duplicate-poisoning pair is for
        # replication only, and the relabel-only control for the attack side only.
        self.defenses = config["defenses"]
        self.poisoned_attacks = [attack for attack, spec in self.attacks.items()
                                 if attack != "clean" and not spec.get("duplicates")
                                 and spec["trigger"] in self.pixel_triggers]
        # Each guidance scale of the generated training sets gives a set of its own, with its own rows in every table.
        self.generated_set_guidance = [number(s) for s in self.defenses["generated_set_guidance"]]
        # Their sampling (the first sampler; generation.seed + 1, in the job): non-default sampler options join it, so
        # that changing them makes the sets again.
        self.generated_set_sampling = {**{k: generation[k] for k in ("ddim_steps", "seed")},
                                       **non_default_sampler_options(generation)}

        # ---- generation quality: all-class generations for FID, the clean training set's class balance, the first
        # sampler and a seed of their own (generation.seed + 1, as the defences' generated training sets).
        self.quality = config["quality"]
        self.quality_guidance = number(self.quality["guidance"])
        self.quality_sampling = {"kind": "all-class generations", "balance": self.clean_stage,
                                 "num_images": self.quality["num_images"], "guidance": float(self.quality["guidance"]),
                                 "ddim_steps": generation["ddim_steps"], "seed": generation["seed"] + 1,
                                 "x0_clipping": self.samplers[0], **non_default_sampler_options(generation)}
        self.quality_set_id = f"allclass-{settings_digest(self.quality_sampling)}"

    # ---------------------------------------------------------------------------------------------- attacks, seeds
    def training_seeds(self, attack: str) -> list[int]:
        """The seeds of an attack's models: those trained here (an attack of triggers x ratios, or the clean control),
        then the imported ones."""
        training = self.config["diffusion"]["training"]
        trained = []
        if attack in self.trained_attacks:
            trained = list(training["clean_seeds"] if attack == "clean" else training["seeds"])
        return trained + [seed for (imported, seed) in self.import_slots if imported == attack]

    def import_attack(self, name: str) -> str:
        entry = self.import_entries[name]
        return attack_name(None if entry.get("clean") else entry["trigger"], entry.get("poison_ratio", 0.0))

    def imported_model(self, attack: str, seed: int | str) -> ImportedModel | None:
        """The import that is this (attack, seed), or None for a model trained here."""
        return self.imported.get((attack, int(seed)))

    def origin(self, attack: str, seed: int | str) -> str:
        """Where a model comes from, as every table says it: trained here, or imported from its path."""
        imported = self.imported_model(attack, seed)
        return ORIGIN_TRAINED if imported is None else imported.origin

    def origins(self) -> dict[str, dict[str, str]]:
        """Each attack's models' origins by seed (as the tables write seeds), for the summaries' origin column."""
        return {attack: {str(seed): self.origin(attack, seed) for seed in self.training_seeds(attack)}
                for attack in self.attacks}

    def models(self) -> list[tuple[str, int]]:
        """Every (attack, training seed) of the experiment."""
        return [(attack, seed) for attack in self.attacks for seed in self.training_seeds(attack)]

    def measured_triggers(self, attack: str) -> list[str]:
        """A poisoned model is judged for its own trigger, the clean control for every trigger."""
        trigger = self.attacks[attack]["trigger"]
        return list(self.config["triggers"]) if trigger is None else [trigger]

    def detected_triggers(self, attack: str) -> list[str]:
        """The measured triggers that a trigger detector looks for."""
        return [trigger for trigger in self.measured_triggers(attack) if trigger in self.pixel_triggers]

    def trigger_specs(self, triggers: list[str]) -> dict[str, Any]:
        return {name: self.config["triggers"][name] for name in triggers}

    def duplicate_attacks(self) -> dict[str, str]:
        """The duplicate-poisoning attacks and their modes (random, duplicates)."""
        return {attack: spec["duplicates"] for attack, spec in self.attacks.items() if spec.get("duplicates")}

    def series(self) -> dict[str, str]:
        """Each attack's series across ratios (its name without the ratio), for figures against the ratio."""
        return {attack: attack_series(attack) for attack in self.attacks}

    # ---------------------------------------------------------------------------------------------- data stages
    def poisoning_seed(self, attack: str, seed: int) -> int:
        name = self.import_slots.get((attack, int(seed)))
        if name is not None:
            return self.import_entries[name].get("poisoning_seed", self.config["poisoning"]["seed"])
        if self.draw_per_seed and not self.attacks[attack].get("duplicates"):
            return self.config["poisoning"]["seed"] + int(seed)
        return self.config["poisoning"]["seed"]

    def poisoned_record(self, attack: str, seed: int) -> dict[str, Any]:
        spec = self.attacks[attack]
        record = {"kind": "poisoned dataset", "data": self.clean_stage, "trigger": self.config["triggers"][spec["trigger"]],
                  "trigger_name": spec["trigger"], "ratio": spec["ratio"], "seed": self.poisoning_seed(attack, seed),
                  "target": self.target}
        if spec.get("duplicates"):
            record["duplicates"] = {"mode": spec["duplicates"], **self.duplicates}
            if self.duplicates["design"] == "natural":
                record["embedder"] = {k: self.replication[k] for k in ("embedder", "tau", "tau_quantile")}
        return record

    def stage_of(self, attack: str, seed: int | str | None = None) -> str:
        """The data stage a model of this attack and training seed learns from (seed None: the attack's first seed
        whose poisoned set the DAG makes, for the stages that use one poisoned set per attack, such as the defences'
        poisoned-set classifier)."""
        if attack == "clean":
            return self.clean_stage
        if seed is None:
            seed = next((s for s in self.training_seeds(attack) if (attack, s) in self.poisoned_records), None)
        if (attack, int(-1 if seed is None else seed)) not in self.poisoned_records:
            raise BibaddiffError(f"{attack} seed {seed}: no poisoned set of this config (an imported model whose "
                                 "training data is a folder of its own or a stated training share)")
        return stage_name(attack, self.poisoned_records[(attack, int(seed))])

    def stage_attack(self, stage: str) -> str:
        """The attack of this config whose stage folder a job makes."""
        if stage not in self.attack_of_stage:
            raise BibaddiffError(f"{stage} is not a stage of this config (experiment {self.experiment}); "
                                 f"its stages are {', '.join(sorted(self.attack_of_stage))}")
        return self.attack_of_stage[stage]

    def stage_trigger(self, stage: str) -> str:
        return self.attacks[self.stage_attack(stage)]["trigger"]

    def clean_split(self, split: str) -> str:
        return f"{self.results}/data/{self.clean_stage}/{split}"

    def stage_data(self, stage: str = "{stage}") -> str:
        return f"{self.results}/data/{stage}/train"

    def training_data_of(self, attack: str, seed: int | str | None = None) -> str | None:
        """A model's training set folder (seed None: the attack's first model whose training set is known): the clean
        set, a poisoned set the DAG makes, or an imported model's own folder; None for an import that states only its
        training share."""
        seeds = self.training_seeds(attack) if seed is None else [int(seed)]
        for candidate in seeds:
            imported = self.imported_model(attack, candidate)
            if imported is not None and not imported.rebuilds_data:
                if imported.entry.get("training_data") is not None:
                    return str(Path(imported.entry["training_data"]).expanduser().resolve())
                continue
            return self.clean_split("train") if attack == "clean" else self.stage_data(self.stage_of(attack, candidate))
        return None

    # ------------------------------------------------------------------------------------------- models, cells
    def base_model(self) -> list[str]:
        """The base model folder when the DAG builds it; nothing for a model on the user's disk."""
        return [self.tiny_base] if self.tiny_base else []

    def latents_file(self, stage: str = "{stage}") -> str:
        return f"{self.results}/latents/{stage}/{self.latents_id}.safetensors"

    def diffusion_training_input(self, stage: str) -> str:
        """A DDPM trains on the dataset folder; Stable Diffusion on the VAE latents cached from it."""
        return self.latents_file(stage) if self.diffusion_kind == "stable_diffusion" else self.stage_data(stage)

    def model_path(self, model: str = "{model}") -> str:
        """A model's folder below R/models: ``<stage>/train-<d>/seed<k>`` (trained here) or ``imported/<name>-<d>``,
        whose bibaddiff_model.json says where the imported files are."""
        return f"{self.results}/models/{model}"

    def model_dir(self, stage: str = "{stage}", seed: int | str = "{seed}") -> str:
        """The folder of a model trained here (train_diffusion's output)."""
        return self.model_path(trained_model_name(stage, self.training_id, seed))

    def model_of(self, attack: str, seed: int | str) -> str:
        """The model an experiment-level job (measurement, defences) reads: trained here (its attack's stage, this
        config's training) or imported."""
        return self.model_path(self.model_name(attack, seed))

    def model_name(self, attack: str, seed: int | str) -> str:
        """A model's place below R/models and R/generated: what quality results name it by."""
        imported = self.imported_model(attack, seed)
        if imported is not None:
            return imported.model
        return trained_model_name(self.stage_of(attack, seed), self.training_id, seed)

    # ---- imports
    def import_folder(self, imported: str = "{imported}") -> str:
        """An import's folder (rule import_model's output): ``R/models/imported/<name>-<d>``."""
        return self.model_path(f"imported/{imported}")

    def import_at(self, imported: str) -> ImportedModel:
        """The import whose folder is ``imported/<imported>``."""
        if imported not in self.import_of_folder:
            raise BibaddiffError(f"models/imported/{imported} is not an import of this config (experiment "
                                 f"{self.experiment}); its imports are {', '.join(sorted(self.import_of_folder)) or 'none'}")
        return self.import_of_folder[imported]

    def import_inputs(self, imported: str) -> dict[str, Any]:
        """What writing an import's folder reads: the clean training set when the model's files do not name its
        classes, and the base model when the DAG builds it."""
        record = self.import_at(imported).record
        inputs: dict[str, Any] = {"classes": self.clean_split("train")} if "classes" in record else {}
        if record.get("base") and self.tiny_base:
            inputs["base"] = self.base_model()
        return inputs

    def import_description_file(self, name: str = "{name}") -> str:
        """What an experiment imported and why it measures it so: ``E/imported/<name>.json``."""
        return f"{self.experiment_dir}/imported/{name}.json"

    def import_description(self, name: str) -> dict[str, Any]:
        """An import as the experiment uses it: its attack and seed, where it comes from, the digest of each of its
        files, and its training data (a folder with one digest of all its files, the rebuilt stage, or the stated
        share).
        Written by rule describe_import; a change of any of it reruns what reads it."""
        matches = [imported for imported in self.imported.values() if imported.name == name]
        if not matches:
            raise BibaddiffError(f"{name} is not an import of this config (experiment {self.experiment})")
        imported = matches[0]
        entry = imported.entry
        if imported.rebuilds_data:
            training = {"kind": "rebuilt", "folder": self.training_data_of(imported.attack, imported.seed)}
        elif entry.get("training_data") is not None:
            folder = self.training_data_of(imported.attack, imported.seed)
            digests = content_digests(folder)
            training = {"kind": "folder", "folder": folder, "num_files": len(digests), "digest": folder_digest(digests)}
        else:
            training = {"kind": "stated", "training_share": float(entry["training_share"])}
        return {"name": name, "attack": imported.attack, "seed": imported.seed, "origin": imported.origin,
                "model": self.model_of(imported.attack, imported.seed), "path": imported.record["path"],
                "files": imported.record["files"], "training_data": training}

    def import_descriptions_of(self, attack: str, seed: int | str) -> list[str]:
        """The description file of the model when it is imported (nothing for a model trained here)."""
        imported = self.imported_model(attack, seed)
        return [] if imported is None else [self.import_description_file(imported.name)]

    def import_descriptions(self) -> list[str]:
        return [self.import_description_file(imported.name) for imported in self.imported.values()]

    def training_state_dir(self, stage: str, seed: int | str) -> str:
        # Not a declared output: Snakemake deletes those before a job starts, and this must survive to resume.
        # Placed with its model, a state is only ever resumed by a job with the same data and training settings.
        return f"{self.model_dir(stage, seed)}.state"

    def model_record(self, stage: str, seed: int | str) -> dict[str, Any]:
        return {"kind": "diffusion model", "data": stage, "training": self.trainer_settings, "seed": int(seed)}

    def generation_record(self, model: str, sampling: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"kind": "generated cells", "model": self.model_path(model),
                "sampling": self.sampling_settings if sampling is None else sampling}

    def generated(self, model: str = "{model}", sampler: str = "{sampler}", condition: int | str = "{condition}",
                  guidance: str = "{guidance}", ext: str = "npy", sampling_id: str | None = None) -> str:
        """A generated cell of a model (its place below R/models: :meth:`model_name`)."""
        sampling_id = self.sampling_id if sampling_id is None else sampling_id
        return f"{self.results}/generated/{model}/{sampling_id}/{cell_file(sampler, condition, guidance, ext)}"

    def _job_cells(self) -> list[dict[str, Any]]:
        """One generate job's cells as (wildcard or value) per name, each once, in the order of its output files."""
        cells = []
        for sampler, condition, s in self.cells:
            values = {"sampler": sampler, "condition": condition, "guidance": s}
            cell = {name: f"{{{name}}}" if name in self.generation_job_wildcards else value
                    for name, value in values.items()}
            if cell not in cells:
                cells.append(cell)
        return cells

    def generation_job_files(self, ext: str, sampling_id: str | None = None) -> list[str]:
        """The cell files one generate job writes: every cell of its model whose per-job wildcards match (the model
        left as a wildcard)."""
        return [self.generated(**cell, ext=ext, sampling_id=sampling_id) for cell in self._job_cells()]

    def generation_job_cells(self, wildcards: dict[str, str]) -> list[dict[str, Any]]:
        """The cells (as params) of the generate job with these wildcards, in the order of its output files."""
        cells = []
        for cell in self._job_cells():
            values = {name: wildcards[name] if name in self.generation_job_wildcards else value
                      for name, value in cell.items()}
            cells.append(Cell(values["sampler"], int(values["condition"]), parse_number(values["guidance"])).as_params())
        return cells

    def calibration_job_files(self, ext: str) -> list[str]:
        """The calibration cells of the clean model, with the model left as a wildcard of the job."""
        return [self.generated(sampler=sampler, condition=condition, guidance=s, ext=ext,
                               sampling_id=self.calibration_id) for sampler, condition, s in self.cells]

    def model_cells(self) -> list[dict[str, Any]]:
        """Every cell of a model as params, in the order of :meth:`cells_of`."""
        return [Cell(sampler, int(c), float(s)).as_params() for sampler, c, s in self.cells]

    def cells_of(self, attack: str, seed: int | str) -> list[str]:
        model = self.model_name(attack, seed)
        return [self.generated(model, sampler, condition, s) for sampler, condition, s in self.cells]

    def all_cells(self) -> list[str]:
        """Every generated cell (targets of rule all: Snakemake does not regenerate a deleted intermediate file while
        what was computed from it is up to date; as a target, it is)."""
        return [cell for attack, seed in self.models() for cell in self.cells_of(attack, seed)] + (
            self.calibration_cells if self.pixel_triggers else [])

    def target_grids(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The target-class sample grid of each attack's first seed, per guidance scale, under the first sampler:
        the files, and what each shows."""
        shown = [(attack, s) for attack in self.attacks for s in self.guidance]
        files = [self.generated(self.model_name(attack, self.training_seeds(attack)[0]), self.samplers[0], self.target,
                                s, "png") for attack, s in shown]
        return files, [{"attack": attack, "guidance": float(s)} for attack, s in shown]

    # ------------------------------------------------------------------------------------------------- judges
    def detector_stamping(self, trigger: str) -> dict[str, Any] | str:
        """A blend's detector sees strengths drawn from its detector_alpha_range; every other trigger as applied."""
        spec = self.config["triggers"][trigger]
        if spec["type"] == "blend":
            return {"alpha_range": list(spec.get("detector_alpha_range", DETECTOR_ALPHA_RANGE))}
        return "as applied"

    def _trigger_judge_record(self, trigger: str) -> dict[str, Any]:
        record = {"kind": "trigger judge", "data": self.clean_stage, "settings": self.judge_settings,
                  "trigger_name": trigger, "trigger": self.config["triggers"][trigger],
                  "stamping": self.detector_stamping(trigger)}
        if self.detector_negatives == "generated":
            # Detectors of the earlier kind (real images only) keep their folders: the key is added only here.
            # The cells name the draw's guidance scales and samplers: two configs that share a results folder but not
            # their scales would otherwise train different detectors into one folder and retrain it in turn.
            generations = Path(self.calibration_cells[0]).parents[1]
            record["negatives"] = {"generations": str(generations),
                                   "cells": sorted(str(Path(cell).relative_to(generations))
                                                   for cell in self.calibration_cells),
                                   "dequantization": self.judges["dequantization"]}
        return record

    def judge_trigger(self, judge: str) -> str:
        if judge not in self.trigger_of_judge:
            raise BibaddiffError(f"judges/trigger-{judge} is not a trigger judge of this config "
                                 f"(experiment {self.experiment})")
        return self.trigger_of_judge[judge]

    def trigger_judge(self, trigger: str) -> str:
        return f"{self.results}/judges/trigger-{self.trigger_judge_names[trigger]}"

    def trigger_judge_pattern(self) -> str:
        return f"{self.results}/judges/trigger-{{judge}}"

    def trigger_judges_of(self, attack: str) -> list[str]:
        return [self.trigger_judge(trigger) for trigger in self.detected_triggers(attack)]

    def calibration_file(self, trigger: str = "{trigger}") -> str:
        return f"{self.experiment_dir}/calibration/{trigger}.json"

    def calibrations_of(self, attack: str) -> list[str]:
        return [self.calibration_file(trigger) for trigger in self.detected_triggers(attack)]

    # ----------------------------------------------------------------------------------- experiment outputs
    def metrics_file(self, attack: str = "{attack}", seed: int | str = "{seed}") -> str:
        return f"{self.experiment_dir}/metrics/{attack}/seed{seed}.json"

    def all_metrics(self) -> list[str]:
        return [self.metrics_file(attack, seed) for attack, seed in self.models()]

    def log_file(self, rule: str, *parts: str) -> str:
        """Logs of shared stages sit with them, named by the stage (so two experiments never write one log)."""
        return f"{self.results}/logs/{rule}/{job_name(*parts) or rule}.log"

    def benchmark_file(self, rule: str, *parts: str) -> str:
        return f"{self.results}/benchmarks/{rule}/{job_name(*parts) or rule}.tsv"

    def experiment_log(self, rule: str, *parts: str) -> str:
        """Logs of the rules that write an experiment's own outputs stay in its folder, next to what they wrote."""
        return f"{self.experiment_dir}/logs/{rule}/{job_name(*parts) or rule}.log"

    def experiment_benchmark(self, rule: str, *parts: str) -> str:
        return f"{self.experiment_dir}/benchmarks/{rule}/{job_name(*parts) or rule}.tsv"

    def provenance_outputs(self) -> dict[str, str]:
        return {"config": f"{self.provenance_dir}/config.yaml", "environment": f"{self.provenance_dir}/environment.yaml"}

    def summary_file(self, name: str) -> str:
        return f"{self.summary_dir}/{name}"

    def experiment_stages(self) -> list[str]:
        """Every shared stage folder this experiment uses, for its provenance record."""
        stages = [str(Path(self.clean_split("train")).parent), self.content_judge,
                  *map(self.trigger_judge, self.pixel_triggers)]
        stages += [str(Path(self.stage_data(self.stage_of(attack, seed))).parent) for attack, seed in self.poisoned_records]
        stages += [self.model_of(attack, seed) for attack, seed in self.models()]
        return sorted(set(stages + self.base_model()))

    # ------------------------------------------------------------------------------------------------ defences
    def generated_set_balance(self, attack: str) -> str:
        """The training set whose class counts a generated set copies: the clean one (as upstream) or the poisoned
        one."""
        if self.defenses["generated_set_balance"] == "clean":
            return self.clean_split("train")
        return self.training_data_of(attack)

    def generated_set(self, attack: str = "{attack}", seed: int | str = "{seed}", guidance: str = "{guidance}") -> str:
        return f"{self.experiment_dir}/defenses/generated_sets/{attack}/{generated_set_folder(seed, guidance)}"

    def generated_set_names(self, attack: str) -> list[str]:
        """The generated training sets of an attack, as trainset names: generated_seed<k>_s<guidance>."""
        return [generated_set_name(seed, s) for seed in self.training_seeds(attack) for s in self.generated_set_guidance]

    def defense_classifier(self, attack: str = "{attack}", trainset: str = "{trainset}") -> str:
        return f"{self.experiment_dir}/defenses/classifiers/{attack}/{trainset}"

    def defense_trainsets(self, attack: str) -> list[str]:
        """Training sets whose classifiers are compared: the poisoned set (when known: an import may state only its
        training share) and each generated set (seed, guidance)."""
        return (["poisoned"] if self.training_data_of(attack) else []) + self.generated_set_names(attack)

    def detection_sets(self, attack: str) -> list[str]:
        """Sets screened for poison: the poisoned training set (when known) and each generated set."""
        return (["training"] if self.training_data_of(attack) else []) + self.generated_set_names(attack)

    def trainset_data(self, attack: str, trainset: str) -> str:
        name = parse_trainset(trainset)
        if name.kind == "clean":
            return self.clean_split("train")
        if name.kind in ("poisoned", "training"):
            return self.training_data_of(attack)
        return self.generated_set(attack, name.seed, number(name.guidance))

    def trainset_description(self, attack: str, trainset: str) -> dict[str, Any]:
        """What a classifier's or a detection's set is, as the defence summary reads it: attack, set name, the
        diffusion model's training seed ("" for real sets) and the generated set's guidance (None for real sets)."""
        name = parse_trainset(trainset)
        return {"attack": attack, "set": trainset, "seed": "" if name.seed is None else str(name.seed),
                "guidance": name.guidance}

    def detection_inputs(self, attack: str, detset: str) -> dict[str, str]:
        """Detection screens a set with a classifier trained on that same set, as a defender would."""
        trainset = "poisoned" if detset == "training" else detset
        return {"data": self.trainset_data(attack, trainset), "classifier": self.defense_classifier(attack, trainset)}

    def detection_file(self, attack: str = "{attack}", detset: str = "{detset}", suffix: str = ".json") -> str:
        return f"{self.experiment_dir}/defenses/detection/{attack}/{detset}{suffix}"

    def diffusion_classifier_file(self, attack: str = "{attack}", seed: int | str = "{seed}") -> str:
        return f"{self.experiment_dir}/defenses/diffusion_classifier/{attack}/seed{seed}.json"

    def defense_attacks(self) -> dict[str, dict[str, Any]]:
        """The attacks of the defence tables: the poisoned ones and the clean control."""
        return {attack: self.attacks[attack] for attack in self.poisoned_attacks + ["clean"] if attack in self.attacks}

    def defense_sets(self) -> dict[str, list[tuple[str, str]]]:
        """(attack, set) of every detection result and every classifier the defence summary reads."""
        detection = [(attack, detset) for attack in self.poisoned_attacks for detset in self.detection_sets(attack)]
        classifiers = [(attack, trainset) for attack in self.poisoned_attacks
                       for trainset in self.defense_trainsets(attack)]
        return {"detection": detection, "classifiers": classifiers + [("clean", "clean")]}

    def defense_inputs(self) -> dict[str, list[str]]:
        sets = self.defense_sets()
        return {
            "detection": [self.detection_file(a, s) for a, s in sets["detection"]],
            "detection_items": [self.detection_file(a, s, "_items.npz") for a, s in sets["detection"]],
            "classifiers": [self.defense_classifier(a, s) for a, s in sets["classifiers"]],
            "diffusion_classifier": [self.diffusion_classifier_file(attack, seed)
                                     for attack in self.poisoned_attacks + ["clean"] if attack in self.attacks
                                     for seed in self.training_seeds(attack)],
        }

    def defense_descriptions(self) -> dict[str, list[dict[str, Any]]]:
        """What each detection result and classifier of :meth:`defense_inputs` is, in the same order."""
        return {kind: [self.trainset_description(attack, name) for attack, name in sets]
                for kind, sets in self.defense_sets().items()}

    # ---------------------------------------------------------------------------------------------- replication
    def replication_file(self, attack: str = "{attack}", seed: int | str = "{seed}", ext: str = "json") -> str:
        return f"{self.experiment_dir}/replication/{attack}/seed{seed}.{ext}"

    def replication_judge(self) -> list[str]:
        """The content classifier, only when it is the embedder."""
        return [self.content_judge] if self.replication["embedder"]["type"] == "classifier" else []

    def replication_models(self) -> list[tuple[str, int]]:
        """The models whose training images are known: replication compares generations with them."""
        return [(attack, seed) for attack, seed in self.models() if self.training_data_of(attack, seed)]

    def replication_summary_inputs(self) -> dict[str, list[str]]:
        models = self.replication_models()
        return {
            "summaries": [self.replication_file(a, s) for a, s in models],
            "neighbours": [self.replication_file(a, s, "npz") for a, s in models],
            "trains": [self.training_data_of(a, s) for a, s in models],
            "cells": [cell for a, s in models for cell in self.cells_of(a, s)],
        }

    # -------------------------------------------------------------------------------------------------- quality
    def quality_set(self, model: str = "{model}") -> str:
        return f"{self.results}/generated/{model}/{self.quality_set_id}"

    def quality_generations_of(self, attack: str, seed: int | str) -> str:
        """A defence's generated training set where it is the same set (clean balance, as many images as the clean
        set, the same guidance and sampler); otherwise the quality stage's own all-class generations."""
        same_set = (self.defenses["enabled"] and attack in self.poisoned_attacks
                    and self.defenses["generated_set_balance"] == "clean" and self.quality["num_images"] is None
                    and self.quality_guidance in self.generated_set_guidance)
        if same_set:
            return self.generated_set(attack, seed, self.quality_guidance)
        return self.quality_set(self.model_name(attack, seed))

    def quality_model_inputs(self, attack: str, seed: int | str) -> dict[str, str]:
        """The Inception weights file when configured; the model when its prompts are needed (the CLIP score)."""
        inputs = {"inception_weights": self.quality["inception_weights"]} if self.quality["inception_weights"] else {}
        if self.quality["clip_model"]:
            inputs["model"] = self.model_of(attack, seed)
        return inputs

    def quality_reference(self) -> str:
        return f"{self.experiment_dir}/quality/real_features.npz"

    def quality_file(self, attack: str = "{attack}", seed: int | str = "{seed}") -> str:
        return f"{self.experiment_dir}/quality/{attack}/seed{seed}.json"

    def quality_results(self) -> list[str]:
        return [self.quality_file(attack, seed) for attack, seed in self.models()]

    # ---------------------------------------------------------------------------------------------------- notes
    def notes(self, root: str | Path = ".") -> list[str]:
        """What a user should know about this config and the results folder in ``root`` before the run."""
        root = Path(root)
        notes = []
        if (root / "results/summary").is_dir():
            # Written by a version that put every experiment's tables in one folder; nothing reads it any more.
            notes.append("note: results/summary/ is from an older layout and is no longer written or read; each "
                         "experiment's tables are now in results/experiments/<experiment>/summary/ (this run: "
                         f"{self.summary_dir}/). Move results/summary/ away or delete it once you have what you need "
                         "from it.")
        results = root / self.results
        if (results / "data/clean").is_dir() or any((results / "models").glob("*/seed*")):
            # Folders named by the attack alone, from before stages were placed by their settings.
            notes.append(f"note: {self.results}/ holds data or models of an older layout (data/clean/, "
                         "models/<attack>/seed<k>/); this workflow neither reads nor overwrites them, and retrains what "
                         f"it needs under names with a settings digest (e.g. data/{self.clean_stage}/). Delete the old "
                         "folders when you no longer need them.")
        if self.judges["detector_negatives"] == "generated" and not self.calibration_model:
            notes.append("note: judges.detector_negatives is 'generated' but diffusion.training.clean_seeds is empty: "
                         "the trigger detectors train on real images only and are checked on held-out real images")
        return notes
