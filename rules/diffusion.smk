if TINY_BASE:

    rule build_tiny_base:
        input:
            train=clean_split("train"),
        output:
            model=directory(TINY_BASE),
            description=report(f"{TINY_BASE}.json", caption="../report/tiny_base.rst", category="Base model"),
        params:
            settings=config["diffusion"]["pretrained"],
        threads: config["diffusion"]["training"]["threads"]
        log:
            log_file("build_tiny_base", Path(TINY_BASE).name),
        benchmark:
            benchmark_file("build_tiny_base", Path(TINY_BASE).name)
        conda:
            ENV
        script:
            "../workflow_scripts/build_tiny_base.py"


rule encode_latents:
    input:
        train=lambda wc: stage_data(wc.stage),
        base=base_model,
    output:
        latents=latents_file(),
    params:
        pretrained=PRETRAINED,
        device=config["device"],
    threads: config["diffusion"]["training"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        # Each image's latent mean and std come from the VAE alone; the batch size only sets the memory used.
        images_per_batch=config["diffusion"]["training"]["encode_batch_size"],
    log:
        log_file("encode_latents", "{stage}", LATENTS_ID),
    benchmark:
        benchmark_file("encode_latents", "{stage}", LATENTS_ID)
    conda:
        ENV
    script:
        "../workflow_scripts/encode_latents.py"


rule train_diffusion:
    input:
        train=diffusion_training_input,
        base=base_model,
    output:
        model=directory(model_dir()),
    params:
        launcher=training_launcher,
        settings=json.dumps(TRAINER_SETTINGS, sort_keys=True),
        state_dir=training_state_dir,
        record=lambda wc: json.dumps(model_record(wc), sort_keys=True),
        device=config["device"],
    threads: config["diffusion"]["training"]["threads"]
    # Trainings first: generation waits on them, and with one generate job per model, a training started after the
    # other models' generation leaves its own model's generation alone at the end (measured: 32:49 of wall time for
    # the default run, the third training starting only after the first two models had generated).
    priority: 1
    resources:
        gpu=GPUS_PER_JOB * config["diffusion"]["training"]["processes"],
    log:
        log_file("train_diffusion", "{stage}", TRAINING_ID, "seed{seed}"),
    benchmark:
        benchmark_file("train_diffusion", "{stage}", TRAINING_ID, "seed{seed}")
    conda:
        ENV
    shell:
        "{params.launcher} -m bibaddiff.diffusion.train_cli --train-data {input.train:q} --output {output.model:q}"
        " --state-dir {params.state_dir:q} --settings {params.settings:q} --seed {wildcards.seed} --record {params.record:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule generate:
    # One job per model (or per condition, or per cell: generation.cells_per_job) loads the model once. Its cells are
    # update() outputs, which Snakemake does not delete before the job: the job keeps the cells that are complete and
    # newer than the model, so deleting one cell regenerates only that cell.
    input:
        model=model_dir(),
    output:
        images=update(generation_job_files("npy")),
        grids=update(generation_job_files("png")),
    params:
        sampling=SAMPLING_SETTINGS,
        record=generation_record,
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=GENERATION_BATCH,
    log:
        log_file("generate", "{stage}", TRAINING_ID, "seed{seed}", SAMPLING_ID, *GENERATION_JOB_ID),
    benchmark:
        benchmark_file("generate", "{stage}", TRAINING_ID, "seed{seed}", SAMPLING_ID, *GENERATION_JOB_ID)
    conda:
        ENV
    script:
        "../workflow_scripts/generate.py"


rule generate_calibration:
    # The clean model's calibration draw: the measured cells with a seed of their own, for the trigger detectors.
    input:
        model=model_dir(),
    output:
        images=calibration_cells_job_files("npy"),
        grids=calibration_cells_job_files("png"),
    params:
        sampling=CALIBRATION_SAMPLING,
        record=lambda wc: {**generation_record(wc), "sampling": CALIBRATION_SAMPLING},
        device=config["device"],
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=GENERATION_BATCH,
    log:
        log_file("generate_calibration", "{stage}", TRAINING_ID, "seed{seed}", CALIBRATION_ID),
    benchmark:
        benchmark_file("generate_calibration", "{stage}", TRAINING_ID, "seed{seed}", CALIBRATION_ID)
    conda:
        ENV
    script:
        "../workflow_scripts/generate.py"


rule measure:
    input:
        cells=cells_of_model,
        train=training_data,
        content_judge=CONTENT_JUDGE,
        trigger_judges=lambda wc: list(trigger_judges_of_model(wc).values()),
        calibrations=calibrations_of_model,
    output:
        metrics=metrics_file(),
    params:
        cells=model_cells,
        triggers=lambda wc: measured_triggers(wc.attack),
        detected_triggers=lambda wc: detected_triggers(wc.attack),
        target=TARGET,
        ratio=lambda wc: ATTACKS[wc.attack]["ratio"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("measure", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("measure", "{attack}", "seed{seed}")
    conda:
        ENV
    script:
        "../workflow_scripts/measure.py"
