# Snakemake glue: validate the config, build the experiment's plan (bibaddiff.plan: attacks, cells, records, digests
# and every path), and adapt wildcards to the plan's calls. Names are formatted and parsed only in the plan; a
# setting reaches a job as a param.
import json
import sys
from pathlib import Path

try:
    from bibaddiff.config import validate_config
    from bibaddiff.errors import BibaddiffError
    from bibaddiff.gpu_slots import check_workstation_gpus
    from bibaddiff.plan import (DUPLICATE_STAGE, NAME, POISONED_STAGE, WILDCARD_CONSTRAINTS, Plan, parse_number,
                                training_launcher)
except ImportError as error:
    raise WorkflowError(f"the bibaddiff package is not importable ({error}); run 'bash setup.sh' first")

try:
    _checked = validate_config(config)  # against the schema the package ships
except BibaddiffError as error:
    # One line that names the key, instead of a traceback through the rule files.
    print(f"invalid config: {error}", file=sys.stderr)
    sys.exit(1)
config.clear()
config.update(_checked)
PLAN = Plan(config)
for _note in PLAN.notes():
    print(_note, file=sys.stderr)


wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


# Rules that may use a GPU ask for one unless the config pins them to the CPU.
GPUS_PER_JOB = 0 if config["device"] == "cpu" else 1
if GPUS_PER_JOB and not (workflow.remote_exec or workflow.subprocess_exec):
    try:  # more cards asked for at once than there are: stop now rather than leave jobs waiting for a card
        check_workstation_gpus(workflow.global_resources.get("gpu").value, config["diffusion"]["training"]["processes"])
    except BibaddiffError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
TRIGGERS = config["triggers"]
TARGET = PLAN.target
JUDGES = PLAN.judges
DEFENSES = PLAN.defenses
REPLICATION = PLAN.replication
DUPLICATES = PLAN.duplicates
QUALITY = PLAN.quality
log_file, benchmark_file = PLAN.log_file, PLAN.benchmark_file
experiment_log, experiment_benchmark = PLAN.experiment_log, PLAN.experiment_benchmark


# ---------------------------------------------------------------------------- wildcards -> the plan's calls
def stage_attack(wildcards):
    return PLAN.stage_attack(wildcards.stage)


def stage_trigger(wildcards):
    return PLAN.stage_trigger(wildcards.stage)


def judge_trigger(wildcards):
    return PLAN.judge_trigger(wildcards.judge)


def training_data(wildcards):
    """The model's training set; nothing for an import that states only its training share."""
    return PLAN.training_data_of(wildcards.attack, getattr(wildcards, "seed", None)) or []


def import_description_of_model(wildcards):
    """What the experiment says about an imported model (its training data or stated share); nothing for a model
    trained here."""
    return PLAN.import_descriptions_of(wildcards.attack, wildcards.seed)


def model_of(wildcards):
    return PLAN.model_of(wildcards.attack, wildcards.seed)


def cells_of_model(wildcards):
    return PLAN.cells_of(wildcards.attack, wildcards.seed)


def model_cells(wildcards):
    return PLAN.model_cells()


def trigger_judges_of_model(wildcards):
    return PLAN.trigger_judges_of(wildcards.attack)


def calibrations_of_model(wildcards):
    return PLAN.calibrations_of(wildcards.attack)


def detected_trigger_specs(wildcards):
    return PLAN.trigger_specs(PLAN.detected_triggers(wildcards.attack))


def launcher(wildcards):
    """The interpreter, or `accelerate launch` with N processes and a free port of its own per job."""
    return training_launcher(sys.executable, config["diffusion"]["training"]["processes"],
                             config["device"] if GPUS_PER_JOB else None)


def summary_outputs():
    """Every table and figure of the experiment: the outputs of the summary rules that this config enables, each
    file named once, in its rule (call it after the summary rules are defined)."""
    enabled = [(rules.summarize_replication, REPLICATION["enabled"]),
               (rules.summarize_duplicate_poisoning, DUPLICATES["enabled"]),
               (rules.summarize_defenses, DEFENSES["enabled"]), (rules.summarize_quality, QUALITY["enabled"]),
               (rules.summarize, True)]
    return [path for rule, on in enabled if on for path in rule.output]

