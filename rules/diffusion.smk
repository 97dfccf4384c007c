TRAINING_SETTINGS = {
    k: v
    for k, v in config["diffusion"]["training"].items()
    if k not in ("seeds", "clean_seeds", "threads", "processes")
}
SAMPLING_SETTINGS = {k: v for k, v in config["generation"].items() if k not in ("guidance_scales", "other_conditions", "threads")}


rule train_diffusion:
    input:
        train=training_data,
    output:
        model=directory(model_dir()),
    params:
        launcher=training_launcher,
        settings=json.dumps({"training": TRAINING_SETTINGS, "model": config["diffusion"]["model"]}, sort_keys=True),
        state_dir=training_state_dir,
        device=config["device"],
    threads: config["diffusion"]["training"]["threads"]
    resources:
        gpu=GPUS_PER_JOB * config["diffusion"]["training"]["processes"],
    log:
        log_file("train_diffusion", "{attack}", "seed{seed}"),
    benchmark:
        benchmark_file("train_diffusion", "{attack}", "seed{seed}")
    conda:
        ENV
    shell:
        "{params.launcher} -m bibaddiff.diffusion.train_cli --train-data {input.train:q} --output {output.model:q}"
        " --state-dir {params.state_dir:q} --settings {params.settings:q} --seed {wildcards.seed}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule generate:
    input:
        model=model_dir(),
    output:
        images=generated(),
        grid=generated(ext="png"),
    params:
        sampling=SAMPLING_SETTINGS,
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_file("generate", "{attack}", "seed{seed}", "c{condition}", "s{guidance}"),
    benchmark:
        benchmark_file("generate", "{attack}", "seed{seed}", "c{condition}", "s{guidance}")
    conda:
        ENV
    script:
        "../workflow_scripts/generate.py"


rule measure:
    input:
        cells=cells_of_model,
        train=training_data,
        content_judge=f"{RESULTS}/judges/content",
        trigger_judges=lambda wc: list(trigger_judges_of_model(wc).values()),
    output:
        metrics=metrics_file(),
    params:
        cells=model_cells,
        triggers=lambda wc: list(trigger_judges_of_model(wc)),
        target=TARGET,
        ratio=lambda wc: ATTACKS[wc.attack]["ratio"],
        device=config["device"],
    threads: 1
    log:
        log_file("measure", "{attack}", "seed{seed}"),
    benchmark:
        benchmark_file("measure", "{attack}", "seed{seed}")
    conda:
        ENV
    script:
        "../workflow_scripts/measure.py"
