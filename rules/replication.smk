# Replication: nearest training images of every generation (random vs duplicated-image poisoning is summarised in
# summary.smk, from the trigger-amplification table).


rule replication:
    input:
        cells=cells_of_model,
        train=training_data,
        heldout=PLAN.clean_split("heldout"),
        judge=PLAN.replication_judge(),
    output:
        summary=PLAN.replication_file(),
        neighbours=PLAN.replication_file(ext="npz"),
    params:
        cells=model_cells,
        embedder=REPLICATION["embedder"],
        tau=REPLICATION["tau"],
        tau_quantile=REPLICATION["tau_quantile"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("replication", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("replication", "{attack}", "seed{seed}")
    script:
        "../workflow_scripts/replication.py"


rule summarize_replication:
    input:
        **PLAN.replication_summary_inputs(),
    output:
        table=report(PLAN.summary_file("replication.csv"), caption="../report/replication.rst", category="Replication"),
        similarity=report(
            PLAN.summary_file("replication_similarity.png"), caption="../report/replication.rst", category="Replication"
        ),
        pairs=report(
            PLAN.summary_file("replication_pairs.png"), caption="../report/replication_pairs.rst", category="Replication"
        ),
    params:
        target=TARGET,
        attacks=PLAN.attacks,
        cells_per_model=len(PLAN.cells),
        origins=PLAN.origins(),
    threads: 1
    log:
        experiment_log("summarize_replication"),
    benchmark:
        experiment_benchmark("summarize_replication")
    script:
        "../workflow_scripts/summarize_replication.py"
