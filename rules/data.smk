rule prepare_data:
    output:
        train=directory(PLAN.clean_split("train")),
        heldout=directory(PLAN.clean_split("heldout")),
    params:
        dataset=config["dataset"],
        record=PLAN.clean_record,
    threads: 1
    log:
        log_file("prepare_data", PLAN.clean_stage),
    benchmark:
        benchmark_file("prepare_data", PLAN.clean_stage)
    script:
        "../workflow_scripts/prepare_data.py"


rule poison:
    input:
        train=PLAN.clean_split("train"),
    output:
        train=directory(PLAN.stage_data()),
    wildcard_constraints:
        stage=POISONED_STAGE,
    params:
        trigger_name=stage_trigger,
        trigger=lambda wc: TRIGGERS[stage_trigger(wc)],
        ratio=lambda wc: PLAN.attacks[stage_attack(wc)]["ratio"],
        target=TARGET,
        seed=lambda wc: PLAN.stage_records[wc.stage]["seed"],
        record=lambda wc: PLAN.stage_records[wc.stage],
    threads: 1
    log:
        log_file("poison", "{stage}"),
    benchmark:
        benchmark_file("poison", "{stage}")
    script:
        "../workflow_scripts/poison.py"


rule poison_duplicates:
    input:
        train=PLAN.clean_split("train"),
        heldout=PLAN.clean_split("heldout"),
        judge=PLAN.replication_judge(),
    output:
        train=directory(PLAN.stage_data()),
    wildcard_constraints:
        stage=DUPLICATE_STAGE,
    params:
        trigger_name=stage_trigger,
        trigger=lambda wc: TRIGGERS[stage_trigger(wc)],
        mode=lambda wc: PLAN.attacks[stage_attack(wc)]["duplicates"],
        record=lambda wc: PLAN.stage_records[wc.stage],
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
    script:
        "../workflow_scripts/poison_duplicates.py"
