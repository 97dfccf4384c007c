# Castle walls: poisoned-data detection on training vs generated data, classifiers trained on generated data,
# and the diffusion model as a classifier. Enabled with defenses.enabled (configs/sweep-digits.yaml).


rule generate_training_set:
    input:
        model=model_of,
        balance=lambda wc: PLAN.generated_set_balance(wc.attack),
        trigger_judges=trigger_judges_of_model,
    output:
        dataset=directory(PLAN.generated_set()),
    params:
        balance=DEFENSES["generated_set_balance"],
        # Non-default sampler options join the params, so that changing them makes the sets again.
        sampling=PLAN.generated_set_sampling,
        x0_clipping=PLAN.samplers[0],
        device=config["device"],
        guidance=lambda wc: parse_number(wc.guidance),
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=PLAN.generation_batch,
    log:
        experiment_log("generate_training_set", "{attack}", "seed{seed}", "s{guidance}"),
    benchmark:
        experiment_benchmark("generate_training_set", "{attack}", "seed{seed}", "s{guidance}")
    script:
        "../workflow_scripts/generate_training_set.py"


rule train_defense_classifier:
    input:
        train=lambda wc: PLAN.trainset_data(wc.attack, wc.trainset),
        heldout=PLAN.clean_split("heldout"),
    output:
        classifier=directory(PLAN.defense_classifier()),
    params:
        settings=PLAN.judge_settings,
        triggers=detected_trigger_specs,
        target=TARGET,
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("train_defense_classifier", "{attack}", "{trainset}"),
    benchmark:
        experiment_benchmark("train_defense_classifier", "{attack}", "{trainset}")
    script:
        "../workflow_scripts/train_defense_classifier.py"


rule detect_poison:
    input:
        unpack(lambda wc: PLAN.detection_inputs(wc.attack, wc.detset)),
        heldout=PLAN.clean_split("heldout"),
    output:
        detection=PLAN.detection_file(),
        # Per-image scores and flags beside the result: the summary bootstraps AUROC differences from them.
        item_scores=PLAN.detection_file(suffix="_items.npz"),
    params:
        detectors=DEFENSES["detectors"],
        detector_settings=DEFENSES["detector_settings"],
        target=TARGET,
        seed=JUDGES["seed"],
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("detect_poison", "{attack}", "{detset}"),
    benchmark:
        experiment_benchmark("detect_poison", "{attack}", "{detset}")
    script:
        "../workflow_scripts/detect_poison.py"


rule diffusion_classifier:
    input:
        model=model_of,
        heldout=PLAN.clean_split("heldout"),
    output:
        result=PLAN.diffusion_classifier_file(),
    params:
        settings=DEFENSES["diffusion_classifier"],
        triggers=detected_trigger_specs,
        target=TARGET,
        seed=JUDGES["seed"],
        device=config["device"],
    threads: DEFENSES["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("diffusion_classifier", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("diffusion_classifier", "{attack}", "seed{seed}")
    script:
        "../workflow_scripts/diffusion_classifier.py"


rule summarize_defenses:
    input:
        **PLAN.defense_inputs(),
    output:
        detection=report(PLAN.summary_file("detection.csv"), caption="../report/detection.rst", category="Castle walls"),
        train_on_generated=report(
            PLAN.summary_file("defense_train_on_generated.csv"),
            caption="../report/train_on_generated.rst",
            category="Castle walls",
        ),
        diffusion_classifier=report(
            PLAN.summary_file("diffusion_classifier.csv"),
            caption="../report/diffusion_classifier.rst",
            category="Castle walls",
        ),
        detection_figure=report(
            PLAN.summary_file("detection_auroc.png"), caption="../report/detection.rst", category="Castle walls"
        ),
        train_on_generated_figure=report(
            PLAN.summary_file("defense_train_on_generated.png"),
            caption="../report/train_on_generated.rst",
            category="Castle walls",
        ),
        diffusion_classifier_figure=report(
            PLAN.summary_file("diffusion_classifier_asr.png"),
            caption="../report/diffusion_classifier.rst",
            category="Castle walls",
        ),
    params:
        attacks=PLAN.defense_attacks(),
        # What each detection result and classifier is (attack, set, seed, guidance), in the order of the inputs.
        sets=PLAN.defense_descriptions(),
        origins=PLAN.origins(),
        target=TARGET,
        seed=JUDGES["seed"],
    threads: 1
    log:
        experiment_log("summarize_defenses"),
    benchmark:
        experiment_benchmark("summarize_defenses")
    script:
        "../workflow_scripts/summarize_defenses.py"
