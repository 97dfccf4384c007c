rule prepare_data:
    output:
        train=directory(clean_split("train")),
        heldout=directory(clean_split("heldout")),
    params:
        dataset=config["dataset"],
    threads: 1
    log:
        log_file("prepare_data"),
    benchmark:
        benchmark_file("prepare_data")
    conda:
        ENV
    script:
        "../workflow_scripts/prepare_data.py"


rule poison:
    input:
        train=clean_split("train"),
    output:
        train=directory(f"{RESULTS}/data/{{attack}}/train"),
    wildcard_constraints:
        attack=r"[A-Za-z0-9_]+-p[0-9.]+",
    params:
        trigger_name=lambda wc: ATTACKS[wc.attack]["trigger"],
        trigger=lambda wc: config["triggers"][ATTACKS[wc.attack]["trigger"]],
        ratio=lambda wc: ATTACKS[wc.attack]["ratio"],
        target=TARGET,
        seed=config["poisoning"]["seed"],
    threads: 1
    log:
        log_file("poison", "{attack}"),
    benchmark:
        benchmark_file("poison", "{attack}")
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
        train=directory(f"{RESULTS}/data/{{attack}}/train"),
    wildcard_constraints:
        attack=r"[A-Za-z0-9_]+-p[0-9.]+-dup_(random|duplicates)",
    params:
        trigger_name=lambda wc: ATTACKS[wc.attack]["trigger"],
        trigger=lambda wc: config["triggers"][ATTACKS[wc.attack]["trigger"]],
        mode=lambda wc: ATTACKS[wc.attack]["duplicates"],
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
        log_file("poison_duplicates", "{attack}"),
    benchmark:
        benchmark_file("poison_duplicates", "{attack}")
    conda:
        ENV
    script:
        "../workflow_scripts/poison_duplicates.py"
