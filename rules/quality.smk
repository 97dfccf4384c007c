# Generation quality: FID and KID of every model's all-class generations against the clean training images (content
# judge features always, Inception-v3 with quality.inception_weights), and the CLIP score with quality.clip_model.
# Enabled with quality.enabled (default true).


rule generate_quality_set:
    input:
        model=PLAN.model_path(),
        balance=PLAN.clean_split("train"),
    output:
        dataset=directory(PLAN.quality_set()),
    params:
        sampling=PLAN.quality_sampling,
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=PLAN.generation_batch,
    log:
        log_file("generate_quality_set", "{model}", PLAN.quality_set_id),
    benchmark:
        benchmark_file("generate_quality_set", "{model}", PLAN.quality_set_id)
    script:
        "../workflow_scripts/generate_quality_set.py"


rule quality_reference:
    input:
        real=PLAN.clean_split("train"),
        judge=PLAN.content_judge,
        **({"inception_weights": QUALITY["inception_weights"]} if QUALITY["inception_weights"] else {}),
    output:
        features=PLAN.quality_reference(),
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
    script:
        "../workflow_scripts/quality_reference.py"


rule quality:
    input:
        unpack(lambda wc: PLAN.quality_model_inputs(wc.attack, wc.seed)),
        generated=lambda wc: PLAN.quality_generations_of(wc.attack, wc.seed),
        reference=PLAN.quality_reference(),
        judge=PLAN.content_judge,
    output:
        result=PLAN.quality_file(),
    params:
        attack=lambda wc: PLAN.attacks[wc.attack],
        model=lambda wc: PLAN.model_name(wc.attack, wc.seed),
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
    script:
        "../workflow_scripts/quality.py"


rule summarize_quality:
    input:
        results=PLAN.quality_results(),
    output:
        table=report(
            PLAN.summary_file("generation_quality.csv"),
            caption="../report/generation_quality.rst",
            category="Generation quality",
        ),
        figure=report(
            PLAN.summary_file("generation_quality_vs_ratio.png"),
            caption="../report/generation_quality.rst",
            category="Generation quality",
        ),
    params:
        # Each attack's series across ratios (its name without the ratio), for the figure's lines.
        series=PLAN.series(),
        origins=PLAN.origins(),
    threads: 1
    log:
        experiment_log("summarize_quality"),
    benchmark:
        experiment_benchmark("summarize_quality")
    script:
        "../workflow_scripts/summarize_quality.py"
