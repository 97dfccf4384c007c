rule train_content_judge:
    input:
        train=PLAN.clean_split("train"),
        heldout=PLAN.clean_split("heldout"),
    output:
        judge=directory(PLAN.content_judge),
    params:
        settings=PLAN.judge_settings,
        # Adding a relabel-only control does not retrain it: it stamps nothing.
        triggers=PLAN.content_judge_triggers,
        record=PLAN.content_judge_record,
        device=config["device"],
    threads: JUDGES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_content_judge", Path(PLAN.content_judge).name),
    benchmark:
        benchmark_file("train_content_judge", Path(PLAN.content_judge).name)
    script:
        "../workflow_scripts/train_judge.py"


rule train_trigger_judge:
    input:
        train=PLAN.clean_split("train"),
        heldout=PLAN.clean_split("heldout"),
        # The clean model's calibration draw: its training part joins the real images as negatives (and, stamped,
        # as positives).
        generated=PLAN.calibration_cells if PLAN.detector_negatives == "generated" else [],
    output:
        judge=directory(PLAN.trigger_judge_pattern()),
    params:
        settings=PLAN.judge_settings,
        triggers=lambda wc: PLAN.trigger_specs([judge_trigger(wc)]),
        # How the detector stamps its positives, defaults included, so that a change of it retrains the detector.
        stamping=lambda wc: PLAN.detector_stamping(judge_trigger(wc)),
        record=lambda wc: PLAN.trigger_judge_records[judge_trigger(wc)],
        dequantization=JUDGES["dequantization"],
        device=config["device"],
    threads: JUDGES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("train_trigger_judge", "{judge}"),
    benchmark:
        benchmark_file("train_trigger_judge", "{judge}")
    script:
        "../workflow_scripts/train_judge.py"


rule calibrate_trigger_judge:
    # Each detector's threshold, false- and true-positive rates per cell, on the clean model's calibration draw (or,
    # without a clean model, on held-out real images).
    input:
        judge=lambda wc: PLAN.trigger_judge(wc.trigger),
        cells=PLAN.calibration_cells,
        heldout=PLAN.clean_split("heldout"),
    output:
        calibration=PLAN.calibration_file(),
    params:
        cells=model_cells,
        trigger=lambda wc: TRIGGERS[wc.trigger],
        target_fpr=JUDGES["target_fpr"],
        negatives=PLAN.detector_negatives,
        seed=JUDGES["seed"],
        device=config["device"],
    threads: JUDGES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("calibrate_trigger_judge", "{trigger}"),
    benchmark:
        experiment_benchmark("calibrate_trigger_judge", "{trigger}")
    script:
        "../workflow_scripts/calibrate_trigger_judge.py"
