# Helpers for all rules: config validation, experiment names and every path of the results tree.
import hashlib
import json
from decimal import Decimal
import shlex
import sys
from pathlib import Path

try:
    from bibaddiff.config import load_schema, validate_config
    from bibaddiff.diffusion.timesteps import SAMPLER_KEYS, non_default_sampler_options
    from bibaddiff.errors import BibaddiffError
    from bibaddiff.gpu_slots import check_workstation_gpus
    from bibaddiff.triggers import DETECTOR_ALPHA_RANGE
except ImportError as error:
    raise WorkflowError(f"the bibaddiff package is not importable ({error}); run 'bash setup.sh' first")

try:
    _checked = validate_config(config, load_schema(Path(workflow.basedir) / "schemas" / "config.schema.yaml"))
except BibaddiffError as error:
    # One line that names the key, instead of a traceback through the rule files.
    print(f"invalid config: {error}", file=sys.stderr)
    sys.exit(1)
config.clear()
config.update(_checked)


wildcard_constraints:
    attack=r"clean|[A-Za-z0-9_]+-p[0-9.]+(-dup_(random|duplicates))?",
    # A shared stage's folder: the attack's name and a digest of everything that determines its data.
    stage=r"(clean|[A-Za-z0-9_]+-p[0-9.]+(-dup_(random|duplicates))?)-[0-9a-f]{12}",
    judge=r"[A-Za-z0-9_]+-[0-9a-f]{12}",
    seed=r"\d+",
    condition=r"\d+",
    guidance=r"\d+(\.\d+)?",
    sampler=r"none|clip|clip_recompute",
    trigger=r"[A-Za-z0-9_]+",
    trainset=r"clean|poisoned|generated_seed\d+_s\d+(\.\d+)?",
    detset=r"training|generated_seed\d+_s\d+(\.\d+)?",


DATASET = config["dataset"]["name"]
RESULTS = f"results/{DATASET}"
# What an experiment concludes (tables, figures, report, provenance) lives in its own folder; the stages it
# computes on the way (data, models, generations) live under RESULTS, where other experiments may reuse them.
EXPERIMENT = config["experiment"]
EXPERIMENT_DIR = f"results/experiments/{EXPERIMENT}"
SUMMARY = f"{EXPERIMENT_DIR}/summary"
PROVENANCE = f"{EXPERIMENT_DIR}/provenance"
if Path("results/summary").is_dir():
    # Written by a version that put every experiment's tables in one folder; nothing reads it any more.
    print("note: results/summary/ is from an older layout and is no longer written or read; each experiment's tables "
          f"are now in results/experiments/<experiment>/summary/ (this run: {SUMMARY}/). Move results/summary/ away "
          "or delete it once you have what you need from it.", file=sys.stderr)
TARGET = config["target"]
ENV = "../envs/bibaddiff.yaml"
# Rules that may use a GPU ask for one unless the config pins them to the CPU.
GPUS_PER_JOB = 0 if config["device"] == "cpu" else 1
if GPUS_PER_JOB and not (workflow.remote_exec or workflow.subprocess_exec):
    try:  # more cards asked for at once than there are: stop now rather than leave jobs waiting for a card
        check_workstation_gpus(workflow.global_resources.get("gpu").value, config["diffusion"]["training"]["processes"])
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def number(value):
    """How numbers appear in paths: 0.1 -> '0.1', 2.0 -> '2', 5e-05 -> '0.00005' (never an exponent, which the
    wildcard patterns would refuse)."""
    return format(Decimal(repr(float(value))).normalize(), "f")


ATTACKS = {
    f"{trigger}-p{number(ratio)}": {"trigger": trigger, "ratio": float(ratio)}
    for trigger in config["triggers"]
    for ratio in config["poisoning"]["ratios"]
}
DUPLICATES = config["replication"]["duplicate_poisoning"]
if DUPLICATES["enabled"]:
    # Random vs duplicated-image poisoning at the same ratio, on the same training set with duplicates.
    for mode in ("random", "duplicates"):
        trigger = DUPLICATES["trigger"] or next(iter(config["triggers"]))
        ATTACKS[f"{trigger}-p{number(DUPLICATES['ratio'])}-dup_{mode}"] = {
            "trigger": trigger, "ratio": float(DUPLICATES["ratio"]), "duplicates": mode}
if config["diffusion"]["training"]["clean_seeds"]:
    ATTACKS["clean"] = {"trigger": None, "ratio": 0.0}
CONDITIONS = [TARGET] + list(config["generation"]["other_conditions"])
GUIDANCE = [number(s) for s in config["generation"]["guidance_scales"]]
# DDIM's x0-clipping modes (a list after validation); the first one also serves the single-sampler stages.
SAMPLERS = config["generation"]["x0_clipping"]
# One order of (sampler, condition, guidance) cells, shared by a model's cell files and its cell parameters, which
# are zipped together.
CELLS = [(sampler, condition, s) for sampler in SAMPLERS for condition in CONDITIONS for s in GUIDANCE]


def training_seeds(attack):
    training = config["diffusion"]["training"]
    return training["clean_seeds"] if attack == "clean" else training["seeds"]


def measured_triggers(attack):
    """A poisoned model is judged for its own trigger, the clean control for every trigger."""
    trigger = ATTACKS[attack]["trigger"]
    return list(config["triggers"]) if trigger is None else [trigger]


# The relabel-only control changes no pixel: it has no trigger detector and no trigger to test a defence with.
PIXEL_TRIGGERS = [name for name, spec in config["triggers"].items() if spec["type"] != "relabel"]


def detected_triggers(attack):
    """The measured triggers that a trigger detector looks for."""
    return [trigger for trigger in measured_triggers(attack) if trigger in PIXEL_TRIGGERS]


DIFFUSION_KIND = config["diffusion"]["kind"]


def settings_digest(settings):
    """12 hex digits that change with any setting: a folder name for a stage placed by its settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- shared stages
# Data, judges, base models, models and generated cells are placed by what determines them: a readable name and a
# digest of the settings (and of the stages they are made from). Experiments that ask for the same stage share its
# folder; a changed setting makes a new folder next to the old one, and nothing is retrained over another's work.

# What each stage folder is: written to its params.json, and digested into its name.
CLEAN_RECORD = {"kind": "clean dataset", "dataset": {k: v for k, v in config["dataset"].items() if k != "name"}}
CLEAN_STAGE = f"clean-{settings_digest(CLEAN_RECORD)}"
REPLICATION = config["replication"]


# With poisoning.draw_per_seed, each training seed's model learns from a poison set of its own (drawn with
# poisoning.seed + the training seed), so that the spread between seeds includes the draw; otherwise every seed
# shares one draw. The duplicate-poisoning pair always shares its draw (its design fixes which images are poisoned).
POISON_DRAW_PER_SEED = config["poisoning"]["draw_per_seed"]


def poisoning_seed(attack, seed):
    if POISON_DRAW_PER_SEED and not ATTACKS[attack].get("duplicates"):
        return config["poisoning"]["seed"] + int(seed)
    return config["poisoning"]["seed"]


def poisoned_record(attack, seed):
    spec = ATTACKS[attack]
    record = {"kind": "poisoned dataset", "data": CLEAN_STAGE, "trigger": config["triggers"][spec["trigger"]],
              "trigger_name": spec["trigger"], "ratio": spec["ratio"], "seed": poisoning_seed(attack, seed),
              "target": TARGET}
    if spec.get("duplicates"):
        record["duplicates"] = {"mode": spec["duplicates"], **DUPLICATES}
        if DUPLICATES["design"] == "natural":
            record["embedder"] = {k: REPLICATION[k] for k in ("embedder", "tau", "tau_quantile")}
    return record


POISONED_RECORDS = {(attack, seed): poisoned_record(attack, seed)
                    for attack in ATTACKS if attack != "clean" for seed in training_seeds(attack)}


def stage_of(attack, seed=None):
    """The data stage a model of this attack and training seed learns from (seed None: the attack's first seed, for
    the stages that use one poisoned set per attack, such as the defences' poisoned-set classifier)."""
    if attack == "clean":
        return CLEAN_STAGE
    seed = training_seeds(attack)[0] if seed is None else int(seed)
    return f"{attack}-{settings_digest(POISONED_RECORDS[(attack, seed)])}"


STAGE_RECORDS = {CLEAN_STAGE: CLEAN_RECORD,
                 **{stage_of(attack, seed): record for (attack, seed), record in POISONED_RECORDS.items()}}
ATTACK_OF_STAGE = {stage_of(attack, seed): attack for attack in ATTACKS for seed in training_seeds(attack)}
if Path(f"{RESULTS}/data/clean").is_dir() or any(Path(RESULTS, "models").glob("*/seed*")):
    # Folders named by the attack alone, from before stages were placed by their settings; nothing reads them now.
    print(f"note: {RESULTS}/ holds data or models of an older layout (data/clean/, models/<attack>/seed<k>/); this "
          "workflow neither reads nor overwrites them, and retrains what it needs under names with a settings digest "
          f"(e.g. data/{CLEAN_STAGE}/). Delete the old folders when you no longer need them.", file=sys.stderr)


def stage_attack(wildcards):
    """The attack of this config whose stage folder a job makes."""
    if wildcards.stage not in ATTACK_OF_STAGE:
        raise WorkflowError(f"{wildcards.stage} is not a stage of this config (experiment {EXPERIMENT}); "
                            f"its stages are {', '.join(sorted(ATTACK_OF_STAGE))}")
    return ATTACK_OF_STAGE[wildcards.stage]


def clean_split(split):
    return f"{RESULTS}/data/{CLEAN_STAGE}/{split}"


def stage_data(stage):
    return f"{RESULTS}/data/{stage}/train"


def training_data_of(attack, seed=None):
    return clean_split("train") if attack == "clean" else stage_data(stage_of(attack, seed))


def training_data(wildcards):
    return training_data_of(wildcards.attack, getattr(wildcards, "seed", None))


# diffusion.pretrained as the jobs see it. A base model that the DAG builds is named by its folder, which its
# settings and the images its VAE learns from place, so that changing them builds a new one and reruns everything
# trained from it.
PRETRAINED = config["diffusion"]["pretrained"]
TINY_BASE = None
if DIFFUSION_KIND == "stable_diffusion" and PRETRAINED.get("build"):
    TINY_BASE = f"{RESULTS}/base/tiny-{settings_digest({'build': PRETRAINED, 'data': CLEAN_STAGE})}"
    PRETRAINED = {"path": TINY_BASE, "config": None}


def base_model(wildcards):
    """The base model folder when the DAG builds it; nothing for a model on the user's disk."""
    return [TINY_BASE] if TINY_BASE else []


# Keys of the other kind of model are left out, so that they neither reach the trainer nor rerun its jobs.
KIND_ONLY_KEYS = {
    "ddpm": ("num_train_timesteps", "beta_schedule"),
    "stable_diffusion": ("finetune", "lora_rank", "lora_alpha", "gradient_checkpointing", "encode_batch_size"),
}
TRAINING_SETTINGS = {
    k: v
    for k, v in config["diffusion"]["training"].items()
    if k not in ("seeds", "clean_seeds", "threads", "processes", "encode_batch_size")
    and not any(k in keys for kind, keys in KIND_ONLY_KEYS.items() if kind != DIFFUSION_KIND)
}
if DIFFUSION_KIND == "stable_diffusion":
    TRAINER_SETTINGS = {"kind": DIFFUSION_KIND, "training": TRAINING_SETTINGS, "pretrained": PRETRAINED}
else:
    TRAINER_SETTINGS = {"training": TRAINING_SETTINGS, "model": config["diffusion"]["model"]}
# The sampler is a wildcard of each cell, not a setting shared by all of them. The batch size is a resource: a cell's
# initial noise is drawn for the whole cell at once, so its images do not depend on how it is cut into batches.
# cells_per_job only decides which job makes a cell.
SAMPLING_SETTINGS = {k: v for k, v in config["generation"].items()
                     if k not in ("guidance_scales", "other_conditions", "threads", "x0_clipping", "batch_size", "cells_per_job",
                                  *SAMPLER_KEYS)}
# generation.timesteps and precision enter the digest only when not at their defaults, so that cells made before the
# keys existed keep their folders.
SAMPLING_SETTINGS.update(non_default_sampler_options(config["generation"]))
GENERATION_BATCH = config["generation"]["batch_size"]
# Every model of a config trains with the same settings, and every cell samples with the same ones: one digest each.
TRAINING_ID = f"train-{settings_digest(TRAINER_SETTINGS)}"
SAMPLING_ID = f"gen-{settings_digest(SAMPLING_SETTINGS)}"
LATENTS_ID = f"vae-{settings_digest(PRETRAINED)}"


def latents_file(stage="{stage}"):
    return f"{RESULTS}/latents/{stage}/{LATENTS_ID}.safetensors"


def diffusion_training_input(wildcards):
    """A DDPM trains on the dataset folder; Stable Diffusion on the VAE latents cached from it."""
    if DIFFUSION_KIND == "stable_diffusion":
        return latents_file(wildcards.stage)
    return stage_data(wildcards.stage)


def model_dir(stage="{stage}", seed="{seed}"):
    return f"{RESULTS}/models/{stage}/{TRAINING_ID}/seed{seed}"


def model_record(wildcards):
    return {"kind": "diffusion model", "data": wildcards.stage, "training": TRAINER_SETTINGS, "seed": int(wildcards.seed)}


def generation_record(wildcards):
    return {"kind": "generated cells", "model": model_dir(wildcards.stage, wildcards.seed), "sampling": SAMPLING_SETTINGS}


def model_of(wildcards):
    """The model an experiment-level job (measurement, defences) reads: its attack's stage, this config's training."""
    return model_dir(stage_of(wildcards.attack, wildcards.seed), wildcards.seed)


def training_state_dir(wildcards):
    # Not a declared output: Snakemake deletes those before a job starts, and this must survive to resume. Placed
    # with its model, a state is only ever resumed by a job with the same data and training settings.
    return f"{model_dir(wildcards.stage, wildcards.seed)}.state"


def generated(stage="{stage}", seed="{seed}", sampler="{sampler}", condition="{condition}", guidance="{guidance}",
              ext="npy", sampling_id=SAMPLING_ID):
    return f"{RESULTS}/generated/{stage}/{TRAINING_ID}/seed{seed}/{sampling_id}/x0-{sampler}/c{condition}_s{guidance}.{ext}"


# Which wildcards stay per generate job: none (one job per model), a sampler's condition, or a single cell.
PER_GENERATION_JOB = {"model": (), "condition": ("sampler", "condition"), "cell": ("sampler", "condition", "guidance")}
GENERATION_JOB_WILDCARDS = PER_GENERATION_JOB[config["generation"]["cells_per_job"]]
GENERATION_JOB_ID = [{"sampler": "x0-{sampler}", "condition": "c{condition}", "guidance": "s{guidance}"}[name]
                     for name in GENERATION_JOB_WILDCARDS]


def generation_job_files(ext):
    """The cell files one generate job writes: every cell of its model whose per-job wildcards match."""
    files = []
    for sampler, condition, s in CELLS:
        values = {"sampler": sampler, "condition": condition, "guidance": s}
        files.append(generated(**{name: f"{{{name}}}" if name in GENERATION_JOB_WILDCARDS else value
                                  for name, value in values.items()}, ext=ext))
    return list(dict.fromkeys(files))


def detector_stamping(trigger):
    """A blend's detector sees strengths drawn from its detector_alpha_range; every other trigger as it is applied."""
    spec = config["triggers"][trigger]
    if spec["type"] == "blend":
        return {"alpha_range": list(spec.get("detector_alpha_range", DETECTOR_ALPHA_RANGE))}
    return "as applied"


JUDGES = config["judges"]
# How detectors are checked and their ratios corrected: settings of the calibration, not of any judge's training.
CALIBRATION_KEYS = ("target_fpr", "calibration_images", "detector_negatives", "dequantization", "bootstrap_samples")
JUDGE_SETTINGS = {k: v for k, v in JUDGES.items() if k not in ("threads", "accuracy_floor", *CALIBRATION_KEYS)}
# Every trigger detector is checked on a calibration draw of the first clean model: its cells, with a seed of their
# own (generation.seed + 2; the all-class sets use + 1), so that nothing is tuned on the measured generations.
CALIBRATION_SAMPLING = {**SAMPLING_SETTINGS, "num_images": JUDGES["calibration_images"],
                        "seed": config["generation"]["seed"] + 2, "purpose": "trigger detector calibration"}
CALIBRATION_ID = f"cal-{settings_digest(CALIBRATION_SAMPLING)}"
CLEAN_SEEDS = config["diffusion"]["training"]["clean_seeds"]
CALIBRATION_CELLS = [generated(CLEAN_STAGE, CLEAN_SEEDS[0], sampler, condition, s, sampling_id=CALIBRATION_ID)
                     for sampler, condition, s in CELLS] if CLEAN_SEEDS else []
# Without a clean model there are no clean generations: detectors train on real images and are checked on held-out
# real images, and every calibration row says so.
DETECTOR_NEGATIVES = JUDGES["detector_negatives"] if CLEAN_SEEDS else "real"
if JUDGES["detector_negatives"] == "generated" and not CLEAN_SEEDS:
    print("note: judges.detector_negatives is 'generated' but diffusion.training.clean_seeds is empty: the trigger "
          "detectors train on real images only and are checked on held-out real images", file=sys.stderr)


def calibration_file(trigger="{trigger}"):
    return f"{EXPERIMENT_DIR}/calibration/{trigger}.json"


def calibration_cells_job_files(ext):
    """The calibration cells of the clean model, with the stage and seed left as wildcards of the job."""
    return [generated(sampler=sampler, condition=condition, guidance=s, ext=ext, sampling_id=CALIBRATION_ID)
            for sampler, condition, s in CELLS]


# The content judge learns to ignore the triggers by seeing them stamped; a relabel-only control stamps nothing.
CONTENT_JUDGE_TRIGGERS = {name: config["triggers"][name] for name in PIXEL_TRIGGERS}
CONTENT_JUDGE_RECORD = {"kind": "content judge", "data": CLEAN_STAGE, "settings": JUDGE_SETTINGS,
                        "triggers": CONTENT_JUDGE_TRIGGERS}
CONTENT_JUDGE = f"{RESULTS}/judges/content-{settings_digest(CONTENT_JUDGE_RECORD)}"
TRIGGER_JUDGE_RECORDS = {
    trigger: {"kind": "trigger judge", "data": CLEAN_STAGE, "settings": JUDGE_SETTINGS, "trigger_name": trigger,
              "trigger": config["triggers"][trigger], "stamping": detector_stamping(trigger),
              # Detectors of the earlier kind (real images only) keep their folders: the key is added only here.
              **({"negatives": {"generations": str(Path(CALIBRATION_CELLS[0]).parents[1]),
                                "dequantization": JUDGES["dequantization"]}}
                 if DETECTOR_NEGATIVES == "generated" else {})}
    for trigger in PIXEL_TRIGGERS
}
TRIGGER_JUDGE_NAMES = {trigger: f"{trigger}-{settings_digest(record)}" for trigger, record in TRIGGER_JUDGE_RECORDS.items()}
TRIGGER_OF_JUDGE = {judge: trigger for trigger, judge in TRIGGER_JUDGE_NAMES.items()}


def judge_trigger(wildcards):
    if wildcards.judge not in TRIGGER_OF_JUDGE:
        raise WorkflowError(f"judges/trigger-{wildcards.judge} is not a trigger judge of this config (experiment {EXPERIMENT})")
    return TRIGGER_OF_JUDGE[wildcards.judge]


def trigger_judge(trigger):
    return f"{RESULTS}/judges/trigger-{TRIGGER_JUDGE_NAMES[trigger]}"


def metrics_file(attack="{attack}", seed="{seed}"):
    return f"{EXPERIMENT_DIR}/metrics/{attack}/seed{seed}.json"


def log_file(rule_name, *parts):
    """Logs of shared stages sit with them, named by the stage (so two experiments never write one log)."""
    return f"{RESULTS}/logs/{rule_name}/{'_'.join(parts) or rule_name}.log"


def benchmark_file(rule_name, *parts):
    return f"{RESULTS}/benchmarks/{rule_name}/{'_'.join(parts) or rule_name}.tsv"


def experiment_log(rule_name, *parts):
    """Logs of the rules that write an experiment's own outputs stay in its folder, next to what they wrote."""
    return f"{EXPERIMENT_DIR}/logs/{rule_name}/{'_'.join(parts) or rule_name}.log"


def experiment_benchmark(rule_name, *parts):
    return f"{EXPERIMENT_DIR}/benchmarks/{rule_name}/{'_'.join(parts) or rule_name}.tsv"


def training_launcher(wildcards):
    """The interpreter, or `accelerate launch` with N processes and a free port of its own per job; on a GPU, behind
    bibaddiff.gpu_slots, which holds a card per process and hands the command the locks."""
    python = shlex.quote(sys.executable)
    processes = config["diffusion"]["training"]["processes"]
    slots = f"{python} -m bibaddiff.gpu_slots --device {config['device']} --cards {processes} -- " if GPUS_PER_JOB else ""
    if processes == 1:
        return slots + python
    free_port = f"$({python} -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])')"
    return (f"{slots}{python} -m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes {processes}"
            " --mixed_precision no --dynamo_backend no"
            f" --main_process_port {free_port}")


def model_cells(wildcards):
    return [{"x0_clipping": sampler, "condition": int(c), "guidance": float(s)} for sampler, c, s in CELLS]


def cells_of(attack, seed):
    return [generated(stage_of(attack, seed), seed, sampler, condition, s) for sampler, condition, s in CELLS]


def cells_of_model(wildcards):
    return cells_of(wildcards.attack, wildcards.seed)


def trigger_judges_of_model(wildcards):
    return {trigger: trigger_judge(trigger) for trigger in detected_triggers(wildcards.attack)}


def calibrations_of_model(wildcards):
    return [calibration_file(trigger) for trigger in detected_triggers(wildcards.attack)]


def all_metrics():
    return [metrics_file(attack, seed) for attack in ATTACKS for seed in training_seeds(attack)]


def target_grids():
    """The target-class sample grid of each attack's first seed, per guidance scale, under the first sampler."""
    return {f"{attack}|{s}": generated(stage_of(attack), training_seeds(attack)[0], SAMPLERS[0], TARGET, s, "png")
            for attack in ATTACKS for s in GUIDANCE}


def all_cells():
    """Every generated cell. Listed as targets because Snakemake (>= 7.7) does not regenerate a deleted
    intermediate file while what was computed from it is up to date; as a target, it is."""
    return [cell for attack in ATTACKS for seed in training_seeds(attack) for cell in cells_of(attack, seed)] + (
        CALIBRATION_CELLS if PIXEL_TRIGGERS else [])


# The defences are studied on the plain attacks with a trigger; the duplicate-poisoning pair is for replication
# only, and the relabel-only control for the attack side only.
POISONED_ATTACKS = [attack for attack in ATTACKS if attack != "clean" and not ATTACKS[attack].get("duplicates")
                    and ATTACKS[attack]["trigger"] in PIXEL_TRIGGERS]
DEFENSES = config["defenses"]


def generated_set_balance(wildcards):
    """The training set whose class counts a generated set copies: the clean one (as upstream) or the poisoned one."""
    return clean_split("train") if DEFENSES["generated_set_balance"] == "clean" else training_data_of(wildcards.attack)


# Each guidance scale of the generated training sets gives a set of its own, with its own rows in every table.
GENERATED_SET_GUIDANCE = [number(s) for s in DEFENSES["generated_set_guidance"]]


def generated_set(attack="{attack}", seed="{seed}", guidance="{guidance}"):
    return f"{EXPERIMENT_DIR}/defenses/generated_sets/{attack}/seed{seed}_s{guidance}"


def generated_set_names(attack):
    """The generated training sets of an attack, as trainset names: generated_seed<k>_s<guidance>."""
    return [f"generated_seed{seed}_s{s}" for seed in training_seeds(attack) for s in GENERATED_SET_GUIDANCE]


def defense_classifier(attack="{attack}", trainset="{trainset}"):
    return f"{EXPERIMENT_DIR}/defenses/classifiers/{attack}/{trainset}"


def defense_trainsets(attack):
    """Training sets whose classifiers are compared: the poisoned set and each generated set (seed, guidance)."""
    return ["poisoned"] + generated_set_names(attack)


def trainset_data(attack, trainset):
    if trainset == "clean":
        return clean_split("train")
    if trainset == "poisoned":
        return training_data_of(attack)
    seed, guidance = trainset.removeprefix("generated_seed").split("_s")
    return generated_set(attack, seed, guidance)


def defense_training_data(wildcards):
    return trainset_data(wildcards.attack, wildcards.trainset)


def detection_inputs(wildcards):
    """Detection screens a set with a classifier trained on that same set, as a defender would."""
    trainset = "poisoned" if wildcards.detset == "training" else wildcards.detset
    return {"data": trainset_data(wildcards.attack, trainset), "classifier": defense_classifier(wildcards.attack, trainset)}


def detection_file(attack="{attack}", detset="{detset}"):
    return f"{EXPERIMENT_DIR}/defenses/detection/{attack}/{detset}.json"


def diffusion_classifier_file(attack="{attack}", seed="{seed}"):
    return f"{EXPERIMENT_DIR}/defenses/diffusion_classifier/{attack}/seed{seed}.json"


def defense_inputs():
    detection = [detection_file(attack, detset) for attack in POISONED_ATTACKS
                 for detset in ["training"] + generated_set_names(attack)]
    classifiers = [defense_classifier(attack, trainset) for attack in POISONED_ATTACKS for trainset in defense_trainsets(attack)]
    classifiers.append(defense_classifier("clean", "clean"))
    dm_classifier = [diffusion_classifier_file(attack, seed) for attack in POISONED_ATTACKS + ["clean"]
                     for seed in training_seeds(attack) if attack in ATTACKS]
    return {"detection": detection, "classifiers": classifiers, "diffusion_classifier": dm_classifier}


def defense_outputs():
    if not DEFENSES["enabled"]:
        return []
    return [f"{SUMMARY}/{name}" for name in ("detection.csv", "defense_train_on_generated.csv", "diffusion_classifier.csv",
                                             "detection_auroc.png", "defense_train_on_generated.png",
                                             "diffusion_classifier_asr.png")]


def replication_file(attack="{attack}", seed="{seed}", ext="json"):
    return f"{EXPERIMENT_DIR}/replication/{attack}/seed{seed}.{ext}"


def replication_judge(wildcards):
    """The content classifier, only when it is the embedder."""
    return [CONTENT_JUDGE] if REPLICATION["embedder"]["type"] == "classifier" else []


def replication_summary_inputs():
    models = [(attack, seed) for attack in ATTACKS for seed in training_seeds(attack)]
    return {
        "summaries": [replication_file(a, s) for a, s in models],
        "neighbours": [replication_file(a, s, "npz") for a, s in models],
        "trains": [training_data_of(a, s) for a, s in models],
        "cells": [cell for a, s in models for cell in cells_of(a, s)],
    }


def replication_outputs():
    outputs = []
    if REPLICATION["enabled"]:
        outputs += [f"{SUMMARY}/{name}" for name in ("replication.csv", "replication_similarity.png", "replication_pairs.png")]
    if DUPLICATES["enabled"]:
        outputs.append(f"{SUMMARY}/duplicate_poisoning.csv")
    return outputs


def experiment_stages():
    """Every shared stage folder this experiment uses, for its provenance record."""
    stages = [str(Path(clean_split("train")).parent), CONTENT_JUDGE, *map(trigger_judge, PIXEL_TRIGGERS)]
    stages += [str(Path(training_data_of(attack, seed)).parent) for attack in ATTACKS if attack != "clean"
               for seed in training_seeds(attack)]
    stages += [model_dir(stage_of(attack, seed), seed) for attack in ATTACKS for seed in training_seeds(attack)]
    return sorted(set(stages + ([TINY_BASE] if TINY_BASE else [])))


def provenance_outputs():
    return {"config": f"{PROVENANCE}/config.yaml", "environment": f"{PROVENANCE}/environment.yaml"}


def summary_outputs():
    return replication_outputs() + defense_outputs() + quality_outputs() + [f"{SUMMARY}/{name}" for name in (
        "trigger_amplification.csv", "trigger_ratio_vs_guidance.png", "generation_groups.png", "samples_target.png",
        "target_class_vs_guidance.png", "amplification_vs_ratio.csv", "amplification_vs_ratio.png",
        "judge_calibration.csv", "judge_calibration.png")]


# ----------------------------------------------------------------------------------------- generation quality
QUALITY = config["quality"]
QUALITY_GUIDANCE = number(QUALITY["guidance"])
# All-class generations for FID: the clean training set's class balance, the first sampler and a seed of their own
# (generation.seed + 1, as the defences' generated training sets), so that both stages make the same set.
QUALITY_SAMPLING = {"kind": "all-class generations", "balance": CLEAN_STAGE, "num_images": QUALITY["num_images"],
                    "guidance": float(QUALITY["guidance"]), "ddim_steps": config["generation"]["ddim_steps"],
                    "seed": config["generation"]["seed"] + 1, "x0_clipping": SAMPLERS[0],
                    **non_default_sampler_options(config["generation"])}
QUALITY_SET_ID = f"allclass-{settings_digest(QUALITY_SAMPLING)}"
QUALITY_FEATURES = ["judge"] + (["inception"] if QUALITY["inception_weights"] else [])


def quality_set(stage="{stage}", seed="{seed}"):
    return f"{RESULTS}/generated/{stage}/{TRAINING_ID}/seed{seed}/{QUALITY_SET_ID}"


def quality_generations_of(attack, seed):
    """A defence's generated training set where it is the same set (clean balance, as many images as the clean set,
    the same guidance and sampler); otherwise the quality stage's own all-class generations."""
    same_set = (DEFENSES["enabled"] and attack in POISONED_ATTACKS and DEFENSES["generated_set_balance"] == "clean"
                and QUALITY["num_images"] is None and QUALITY_GUIDANCE in GENERATED_SET_GUIDANCE)
    return generated_set(attack, seed, QUALITY_GUIDANCE) if same_set else quality_set(stage_of(attack, seed), seed)


def quality_generations(wildcards):
    return quality_generations_of(wildcards.attack, wildcards.seed)


def quality_model_inputs(wildcards):
    """The Inception weights file when configured; the model when its prompts are needed (the CLIP score)."""
    inputs = {"inception_weights": QUALITY["inception_weights"]} if QUALITY["inception_weights"] else {}
    if QUALITY["clip_model"]:
        inputs["model"] = model_of(wildcards)
    return inputs


def quality_reference():
    return f"{EXPERIMENT_DIR}/quality/real_features.npz"


def quality_file(attack="{attack}", seed="{seed}"):
    return f"{EXPERIMENT_DIR}/quality/{attack}/seed{seed}.json"


def quality_outputs():
    if not QUALITY["enabled"]:
        return []
    return [f"{SUMMARY}/generation_quality.csv", f"{SUMMARY}/generation_quality_vs_ratio.png"]
