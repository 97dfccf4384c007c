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
        # The clean model's calibration draw: its training part joins the real images as negatives (and, stamped,
        # as positives).
        generated=CALIBRATION_CELLS if DETECTOR_NEGATIVES == "generated" else [],
    output:
        judge=directory(f"{RESULTS}/judges/trigger-{{judge}}"),
    params:
        settings=JUDGE_SETTINGS,
        triggers=lambda wc: {judge_trigger(wc): config["triggers"][judge_trigger(wc)]},
        # How the detector stamps its positives, defaults included, so that a change of it retrains the detector.
        stamping=lambda wc: detector_stamping(judge_trigger(wc)),
        record=lambda wc: TRIGGER_JUDGE_RECORDS[judge_trigger(wc)],
        dequantization=JUDGES["dequantization"],
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


rule calibrate_trigger_judge:
    # Each detector's threshold, false- and true-positive rates per cell, on the clean model's calibration draw (or,
    # without a clean model, on held-out real images).
    input:
        judge=lambda wc: trigger_judge(wc.trigger),
        cells=CALIBRATION_CELLS,
        heldout=clean_split("heldout"),
    output:
        calibration=calibration_file(),
    params:
        cells=model_cells,
        trigger=lambda wc: config["triggers"][wc.trigger],
        target_fpr=JUDGES["target_fpr"],
        negatives=DETECTOR_NEGATIVES,
        seed=JUDGES["seed"],
        device=config["device"],
    threads: config["judges"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("calibrate_trigger_judge", "{trigger}"),
    benchmark:
        experiment_benchmark("calibrate_trigger_judge", "{trigger}")
    conda:
        ENV
    script:
        "../workflow_scripts/calibrate_trigger_judge.py"
