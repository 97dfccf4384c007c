# bibaddiff: BadNets-like data poisoning in diffusion models, from poisoned data to trigger amplification.
# Run: snakemake --cores 2            (default config.yaml)
#      snakemake --cores 2 --configfile configs/cifar10-ddpm.yaml
from snakemake.utils import min_version

min_version("8.0")


# A --configfile replaces the default config instead of being merged into it, so that a shipped config
# means exactly what it says (a trigger it does not list is not run).
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/judges.smk"
include: "rules/diffusion.smk"
include: "rules/defenses.smk"
include: "rules/replication.smk"
include: "rules/quality.smk"
include: "rules/summary.smk"


# A profile value still at its placeholder (the SLURM partition, say) stops the run here, before any submission.
from bibaddiff.config import check_default_resources

try:
    check_default_resources(list(getattr(workflow.resource_settings.default_resources, "args", None) or []))
except BibaddiffError as error:
    print(f"invalid profile: {error}", file=sys.stderr)
    sys.exit(1)


rule all:
    input:
        summary_outputs(),
        rules.provenance.output,
        # Every generated cell: Snakemake (>= 7.7) does not regenerate a deleted intermediate file while what was
        # computed from it is up to date; as a target, it is.
        PLAN.all_cells(),
    default_target: True
