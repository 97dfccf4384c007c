# The provenance record is a second's work that needs the workflow's git checkout, and the summaries are seconds of
# tables and figures: they run where snakemake runs, never as cluster jobs with a queue wait each.
localrules:
    provenance,
    summarize,
    summarize_defenses,
    summarize_quality,
    summarize_replication,
    summarize_duplicate_poisoning,


rule summarize:
    input:
        metrics=PLAN.all_metrics(),
        grids=PLAN.target_grids()[0],
        calibrations=[PLAN.calibration_file(trigger) for trigger in PLAN.pixel_triggers],
    output:
        table=report(
            PLAN.summary_file("trigger_amplification.csv"),
            caption="../report/trigger_amplification.rst",
            category="Trigger amplification",
        ),
        ratio_figure=report(
            PLAN.summary_file("trigger_ratio_vs_guidance.png"),
            caption="../report/trigger_ratio.rst",
            category="Trigger amplification",
        ),
        groups_figure=report(
            PLAN.summary_file("generation_groups.png"),
            caption="../report/generation_groups.rst",
            category="Trigger amplification",
        ),
        guidance_figure=report(
            PLAN.summary_file("target_class_vs_guidance.png"),
            caption="../report/target_vs_guidance.rst",
            category="Trigger amplification",
        ),
        ratio_table=report(
            PLAN.summary_file("amplification_vs_ratio.csv"),
            caption="../report/amplification_vs_ratio.rst",
            category="Trigger amplification",
        ),
        by_ratio_figure=report(
            PLAN.summary_file("amplification_vs_ratio.png"),
            caption="../report/amplification_vs_ratio.rst",
            category="Trigger amplification",
        ),
        samples=report(
            PLAN.summary_file("samples_target.png"),
            caption="../report/samples.rst",
            category="Samples",
        ),
        calibration_table=report(
            PLAN.summary_file("judge_calibration.csv"),
            caption="../report/judge_calibration.rst",
            category="Trigger detectors",
        ),
        calibration_figure=report(
            PLAN.summary_file("judge_calibration.png"),
            caption="../report/judge_calibration.rst",
            category="Trigger detectors",
        ),
    params:
        # What each grid shows (attack, guidance), in the order of the grids.
        grids=PLAN.target_grids()[1],
        # The duplicate-poisoning attacks have a table of their own, not rows against the ratio.
        duplicate_attacks=list(PLAN.duplicate_attacks()),
        # Each model's origin (trained here, or imported from a path), for every table's origin column.
        origins=PLAN.origins(),
        accuracy_floor=JUDGES["accuracy_floor"],
        bootstrap_samples=JUDGES["bootstrap_samples"],
        seed=JUDGES["seed"],
        target=TARGET,
    threads: 1
    log:
        experiment_log("summarize"),
    benchmark:
        experiment_benchmark("summarize")
    script:
        "../workflow_scripts/summarize.py"


rule summarize_duplicate_poisoning:
    # Random vs duplicated-image poisoning, from the trigger-amplification table (same judges, intervals).
    input:
        table=rules.summarize.output.table,
    output:
        table=report(
            PLAN.summary_file("duplicate_poisoning.csv"), caption="../report/duplicate_poisoning.rst", category="Replication"
        ),
    params:
        # Each duplicate-poisoning attack and its mode (random, duplicates).
        attacks=PLAN.duplicate_attacks(),
    threads: 1
    log:
        experiment_log("summarize_duplicate_poisoning"),
    benchmark:
        experiment_benchmark("summarize_duplicate_poisoning")
    script:
        "../workflow_scripts/summarize_duplicate_poisoning.py"


rule provenance:
    # Rewritten whenever a table of the experiment is, so that it describes the code and settings that made them.
    input:
        summary_outputs(),
        # What each imported model is, with the digest of each of its files.
        imported=PLAN.import_descriptions(),
    output:
        **PLAN.provenance_outputs(),
    params:
        config=config,
        stages=PLAN.experiment_stages(),
        source_dir=workflow.basedir,
    threads: 1
    log:
        experiment_log("provenance"),
    script:
        "../workflow_scripts/provenance.py"
