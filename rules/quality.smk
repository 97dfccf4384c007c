# Generation quality: FID and KID of every model's all-class generations against the clean training images (content
# judge features always, Inception-v3 with quality.inception_weights), and the CLIP score with quality.clip_model.
# Enabled with quality.enabled (default true).


rule generate_quality_set:
    input:
        model=model_dir(),
        balance=clean_split("train"),
    output:
        dataset=directory(quality_set()),
    params:
        sampling=QUALITY_SAMPLING,
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=GENERATION_BATCH,
    log:
        log_file("generate_quality_set", "{stage}", TRAINING_ID, "seed{seed}", QUALITY_SET_ID),
    benchmark:
        benchmark_file("generate_quality_set", "{stage}", TRAINING_ID, "seed{seed}", QUALITY_SET_ID)
    conda:
        ENV
    script:
        "../workflow_scripts/generate_quality_set.py"


rule quality_reference:
    input:
        real=clean_split("train"),
        judge=CONTENT_JUDGE,
        **({"inception_weights": QUALITY["inception_weights"]} if QUALITY["inception_weights"] else {}),
    output:
        features=quality_reference(),
    params:
        batch_size=QUALITY["batch_size"],
        device=config["device"],
    threads: QUALITY["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("quality_reference"),
    benchmark:
        experiment_benchmark("quality_reference")
    conda:
        ENV
    script:
        "../workflow_scripts/quality_reference.py"


rule quality:
    input:
        unpack(quality_model_inputs),
        generated=quality_generations,
        reference=quality_reference(),
        judge=CONTENT_JUDGE,
    output:
        result=quality_file(),
    params:
        attack=lambda wc: ATTACKS[wc.attack],
        model=lambda wc: str(Path(model_of(wc)).relative_to(f"{RESULTS}/models")),
        settings={k: QUALITY[k] for k in ("guidance", "bootstrap_samples", "kid_subsets", "kid_subset_size", "batch_size",
                                          "seed", "clip_model")},
        device=config["device"],
    threads: QUALITY["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("quality", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("quality", "{attack}", "seed{seed}")
    conda:
        ENV
    script:
        "../workflow_scripts/quality.py"


rule summarize_quality:
    input:
        results=[quality_file(attack, seed) for attack in ATTACKS for seed in training_seeds(attack)],
    output:
        table=report(
            f"{SUMMARY}/generation_quality.csv", caption="../report/generation_quality.rst", category="Generation quality"
        ),
        figure=report(
            f"{SUMMARY}/generation_quality_vs_ratio.png",
            caption="../report/generation_quality.rst",
            category="Generation quality",
        ),
    threads: 1
    log:
        experiment_log("summarize_quality"),
    benchmark:
        experiment_benchmark("summarize_quality")
    conda:
        ENV
    script:
        "../workflow_scripts/summarize_quality.py"
