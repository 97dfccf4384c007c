rule prepare_data:
    output:
        train=directory(clean_split("train")),
        heldout=directory(clean_split("heldout")),
    params:
        dataset=config["dataset"],
        record=CLEAN_RECORD,
    threads: 1
    log:
        log_file("prepare_data", CLEAN_STAGE),
    benchmark:
        benchmark_file("prepare_data", CLEAN_STAGE)
    conda:
        ENV
    script:
        "../workflow_scripts/prepare_data.py"


rule poison:
    input:
        train=clean_split("train"),
    output:
        train=directory(stage_data("{stage}")),
    wildcard_constraints:
        stage=r"[A-Za-z0-9_]+-p[0-9.]+-[0-9a-f]{12}",
    params:
        trigger_name=lambda wc: ATTACKS[stage_attack(wc)]["trigger"],
        trigger=lambda wc: config["triggers"][ATTACKS[stage_attack(wc)]["trigger"]],
        ratio=lambda wc: ATTACKS[stage_attack(wc)]["ratio"],
        target=TARGET,
        seed=lambda wc: STAGE_RECORDS[wc.stage]["seed"],
        record=lambda wc: STAGE_RECORDS[wc.stage],
    threads: 1
    log:
        log_file("poison", "{stage}"),
    benchmark:
        benchmark_file("poison", "{stage}")
    conda:
        ENV
    script:
        "../workflow_scripts/poison.py"


rule poison_duplicates:
    input:
        train=clean_split("train"),
        heldout=clean_split("heldout"),
        judge=replication_judge,
    output:
        train=directory(stage_data("{stage}")),
    wildcard_constraints:
        stage=r"[A-Za-z0-9_]+-p[0-9.]+-dup_(random|duplicates)-[0-9a-f]{12}",
    params:
        trigger_name=lambda wc: ATTACKS[stage_attack(wc)]["trigger"],
        trigger=lambda wc: config["triggers"][ATTACKS[stage_attack(wc)]["trigger"]],
        mode=lambda wc: ATTACKS[stage_attack(wc)]["duplicates"],
        record=lambda wc: STAGE_RECORDS[wc.stage],
        duplicates=DUPLICATES,
        # The natural design finds duplicates with the replication embedder and threshold.
        embedder=REPLICATION["embedder"],
        tau=REPLICATION["tau"],
        tau_quantile=REPLICATION["tau_quantile"],
        target=TARGET,
        device=config["device"],
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("poison_duplicates", "{stage}"),
    benchmark:
        benchmark_file("poison_duplicates", "{stage}")
    conda:
        ENV
    script:
        "../workflow_scripts/poison_duplicates.py"
