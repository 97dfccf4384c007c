JUDGE_SETTINGS = {k: v for k, v in config["judges"].items() if k not in ("threads", "accuracy_floor")}


rule train_content_judge:
    input:
        train=clean_split("train"),
        heldout=clean_split("heldout"),
    output:
        judge=directory(f"{RESULTS}/judges/content"),
    params:
        settings=JUDGE_SETTINGS,
        # It learns to ignore the triggers by seeing them stamped; a relabel-only control stamps nothing, so it is
        # not an input (and adding one does not retrain this judge).
        triggers={name: config["triggers"][name] for name in PIXEL_TRIGGERS},
        device=config["device"],
    threads: config["judges"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_content_judge"),
    benchmark:
        benchmark_file("train_content_judge")
    conda:
        ENV
    script:
        "../workflow_scripts/train_judge.py"


rule train_trigger_judge:
    input:
        train=clean_split("train"),
        heldout=clean_split("heldout"),
    output:
        judge=directory(trigger_judge()),
    params:
        settings=JUDGE_SETTINGS,
        triggers=lambda wc: {wc.trigger: config["triggers"][wc.trigger]},
        # How the detector stamps its positives, defaults included, so that a change of it retrains the detector.
        stamping=lambda wc: detector_stamping(wc.trigger),
        device=config["device"],
    threads: config["judges"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_trigger_judge", "{trigger}"),
    benchmark:
        benchmark_file("train_trigger_judge", "{trigger}")
    conda:
        ENV
    script:
        "../workflow_scripts/train_judge.py"
