# Castle walls: poisoned-data detection on training vs generated data, classifiers trained on generated data,
# and the diffusion model as a classifier. Enabled with defenses.enabled (configs/sweep-digits.yaml).


rule generate_training_set:
    input:
        model=model_of,
        balance=generated_set_balance,
        trigger_judges=lambda wc: list(trigger_judges_of_model(wc).values()),
    output:
        dataset=directory(generated_set()),
    params:
        balance=DEFENSES["generated_set_balance"],
        # Non-default sampler options join the params, so that changing them makes the sets again.
        sampling={
            **{k: config["generation"][k] for k in ("ddim_steps", "seed")},
            **non_default_sampler_options(config["generation"]),
        },
        x0_clipping=SAMPLERS[0],
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=GENERATION_BATCH,
    log:
        experiment_log("generate_training_set", "{attack}", "seed{seed}", "s{guidance}"),
    benchmark:
        experiment_benchmark("generate_training_set", "{attack}", "seed{seed}", "s{guidance}")
    conda:
        ENV
    script:
        "../workflow_scripts/generate_training_set.py"


rule train_defense_classifier:
    input:
        train=defense_training_data,
        heldout=clean_split("heldout"),
    output:
        classifier=directory(defense_classifier()),
    params:
        settings=JUDGE_SETTINGS,
        triggers=lambda wc: {t: config["triggers"][t] for t in detected_triggers(wc.attack)},
        target=TARGET,
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("train_defense_classifier", "{attack}", "{trainset}"),
    benchmark:
        experiment_benchmark("train_defense_classifier", "{attack}", "{trainset}")
    conda:
        ENV
    script:
        "../workflow_scripts/train_defense_classifier.py"


rule detect_poison:
    input:
        unpack(detection_inputs),
        heldout=clean_split("heldout"),
    output:
        detection=detection_file(),
        # Per-image scores and flags beside the result: the summary bootstraps AUROC differences from them.
        item_scores=detection_file().removesuffix(".json") + "_items.npz",
    params:
        detectors=DEFENSES["detectors"],
        detector_settings=DEFENSES["detector_settings"],
        target=TARGET,
        seed=config["judges"]["seed"],
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("detect_poison", "{attack}", "{detset}"),
    benchmark:
        experiment_benchmark("detect_poison", "{attack}", "{detset}")
    conda:
        ENV
    script:
        "../workflow_scripts/detect_poison.py"


rule diffusion_classifier:
    input:
        model=model_of,
        heldout=clean_split("heldout"),
    output:
        result=diffusion_classifier_file(),
    params:
        settings=DEFENSES["diffusion_classifier"],
        triggers=lambda wc: {t: config["triggers"][t] for t in detected_triggers(wc.attack)},
        target=TARGET,
        seed=config["judges"]["seed"],
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("diffusion_classifier", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("diffusion_classifier", "{attack}", "seed{seed}")
    conda:
        ENV
    script:
        "../workflow_scripts/diffusion_classifier.py"


rule summarize_defenses:
    input:
        **defense_inputs(),
        detection_items=[path.removesuffix(".json") + "_items.npz" for path in defense_inputs()["detection"]],
    output:
        detection=report(f"{SUMMARY}/detection.csv", caption="../report/detection.rst", category="Castle walls"),
        train_on_generated=report(
            f"{SUMMARY}/defense_train_on_generated.csv",
            caption="../report/train_on_generated.rst",
            category="Castle walls",
        ),
        diffusion_classifier=report(
            f"{SUMMARY}/diffusion_classifier.csv",
            caption="../report/diffusion_classifier.rst",
            category="Castle walls",
        ),
        detection_figure=report(
            f"{SUMMARY}/detection_auroc.png", caption="../report/detection.rst", category="Castle walls"
        ),
        train_on_generated_figure=report(
            f"{SUMMARY}/defense_train_on_generated.png",
            caption="../report/train_on_generated.rst",
            category="Castle walls",
        ),
        diffusion_classifier_figure=report(
            f"{SUMMARY}/diffusion_classifier_asr.png",
            caption="../report/diffusion_classifier.rst",
            category="Castle walls",
        ),
    params:
        attacks={attack: ATTACKS[attack] for attack in POISONED_ATTACKS + ["clean"] if attack in ATTACKS},
        target=TARGET,
        seed=config["judges"]["seed"],
    threads: 1
    log:
        experiment_log("summarize_defenses"),
    benchmark:
        experiment_benchmark("summarize_defenses")
    conda:
        ENV
    script:
        "../workflow_scripts/summarize_defenses.py"
