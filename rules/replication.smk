# Replication: nearest training images of every generation, and random vs duplicated-image poisoning.


rule replication:
    input:
        cells=cells_of_model,
        train=training_data,
        heldout=clean_split("heldout"),
        judge=replication_judge,
    output:
        summary=replication_file(),
        neighbours=replication_file(ext="npz"),
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
    conda:
        ENV
    script:
        "../workflow_scripts/replication.py"


rule summarize_replication:
    input:
        **replication_summary_inputs(),
    output:
        table=report(f"{SUMMARY}/replication.csv", caption="../report/replication.rst", category="Replication"),
        similarity=report(f"{SUMMARY}/replication_similarity.png", caption="../report/replication.rst", category="Replication"),
        pairs=report(f"{SUMMARY}/replication_pairs.png", caption="../report/replication_pairs.rst", category="Replication"),
    params:
        target=TARGET,
        attacks=ATTACKS,
        cells_per_model=len(CELLS),
    threads: 1
    log:
        experiment_log("summarize_replication"),
    benchmark:
        experiment_benchmark("summarize_replication")
    conda:
        ENV
    script:
        "../workflow_scripts/summarize_replication.py"


rule summarize_duplicate_poisoning:
    input:
        table=f"{SUMMARY}/trigger_amplification.csv",
    output:
        table=report(
            f"{SUMMARY}/duplicate_poisoning.csv", caption="../report/duplicate_poisoning.rst", category="Replication"
        ),
    params:
        attacks=[a for a, spec in ATTACKS.items() if spec.get("duplicates")],
    threads: 1
    log:
        experiment_log("summarize_duplicate_poisoning"),
    benchmark:
        experiment_benchmark("summarize_duplicate_poisoning")
    conda:
        ENV
    script:
        "../workflow_scripts/summarize_duplicate_poisoning.py"
