rule train_content_judge:
    input:
        train=clean_split("train"),
        heldout=clean_split("heldout"),
    output:
        judge=directory(CONTENT_JUDGE),
    params:
        settings=JUDGE_SETTINGS,
        # Adding a relabel-only control does not retrain it: it stamps nothing.
        triggers=CONTENT_JUDGE_TRIGGERS,
        record=CONTENT_JUDGE_RECORD,
        device=config["device"],
    threads: config["judges"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_content_judge", Path(CONTENT_JUDGE).name),
    benchmark:
        benchmark_file("train_content_judge", Path(CONTENT_JUDGE).name)
    conda:
        ENV
    script:
        "../workflow_scripts/train_judge.py"


rule train_trigger_judge:
    input:
        train=clean_split("train"),
        heldout=clean_split("heldout"),
    output:
        judge=directory(f"{RESULTS}/judges/trigger-{{judge}}"),
    params:
        settings=JUDGE_SETTINGS,
        triggers=lambda wc: {judge_trigger(wc): config["triggers"][judge_trigger(wc)]},
        # How the detector stamps its positives, defaults included, so that a change of it retrains the detector.
        stamping=lambda wc: detector_stamping(judge_trigger(wc)),
        record=lambda wc: TRIGGER_JUDGE_RECORDS[judge_trigger(wc)],
        device=config["device"],
    threads: config["judges"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_trigger_judge", "{judge}"),
    benchmark:
        benchmark_file("train_trigger_judge", "{judge}")
    conda:
        ENV
    script:
        "../workflow_scripts/train_judge.py"
