if PLAN.tiny_base:

    rule build_tiny_base:
        input:
            train=PLAN.clean_split("train"),
        output:
            model=directory(PLAN.tiny_base),
            description=report(f"{PLAN.tiny_base}.json", caption="../report/tiny_base.rst", category="Base model"),
        params:
            settings=config["diffusion"]["pretrained"],
        threads: config["diffusion"]["training"]["threads"]
        log:
            log_file("build_tiny_base", Path(PLAN.tiny_base).name),
        benchmark:
            benchmark_file("build_tiny_base", Path(PLAN.tiny_base).name)
        script:
            "../workflow_scripts/build_tiny_base.py"


rule encode_latents:
    input:
        train=lambda wc: PLAN.stage_data(wc.stage),
        base=PLAN.base_model(),
    output:
        latents=PLAN.latents_file(),
    params:
        pretrained=PLAN.pretrained,
        device=config["device"],
    threads: config["diffusion"]["training"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        # Each image's latent mean and std come from the VAE alone; the batch size only sets the memory used.
        images_per_batch=config["diffusion"]["training"]["encode_batch_size"],
    log:
        log_file("encode_latents", "{stage}", PLAN.latents_id),
    benchmark:
        benchmark_file("encode_latents", "{stage}", PLAN.latents_id)
    script:
        "../workflow_scripts/encode_latents.py"


rule train_diffusion:
    input:
        # A DDPM trains on the dataset folder; Stable Diffusion on the VAE latents cached from it.
        train=lambda wc: PLAN.diffusion_training_input(wc.stage),
        base=PLAN.base_model(),
    output:
        model=directory(PLAN.model_dir()),
    params:
        launcher=launcher,
        settings=json.dumps(PLAN.trainer_settings, sort_keys=True),
        # Not a declared output: Snakemake deletes those before a job starts, and the state must survive to resume.
        state_dir=lambda wc: PLAN.training_state_dir(wc.stage, wc.seed),
        record=lambda wc: json.dumps(PLAN.model_record(wc.stage, wc.seed), sort_keys=True),
        device=config["device"],
    threads: config["diffusion"]["training"]["threads"]
    # Trainings first: generation waits on them, and with one generate job per model, a training started after the
    # other models' generation leaves its own model's generation alone at the end (measured: 32:49 of wall time for
    # the default run, the third training starting only after the first two models had generated).
    priority: 1
    resources:
        gpu=GPUS_PER_JOB * config["diffusion"]["training"]["processes"],
    log:
        log_file("train_diffusion", "{stage}", PLAN.training_id, "seed{seed}"),
    benchmark:
        benchmark_file("train_diffusion", "{stage}", PLAN.training_id, "seed{seed}")
    shell:
        "{params.launcher} -m bibaddiff.diffusion.train_cli --train-data {input.train:q} --output {output.model:q}"
        " --state-dir {params.state_dir:q} --settings {params.settings:q} --seed {wildcards.seed} --record {params.record:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


# An imported model's folder: bibaddiff_model.json with its classes and where its files are, checked against the
# digests the plan placed the folder by (rule generate and every other reader of the model check them again).
localrules:
    import_model,
    describe_import,


rule import_model:
    input:
        unpack(lambda wc: PLAN.import_inputs(wc.imported)),
    output:
        model=directory(PLAN.import_folder()),
    params:
        record=lambda wc: PLAN.import_at(wc.imported).record,
    threads: 1
    log:
        log_file("import_model", "{imported}"),
    script:
        "../workflow_scripts/import_model.py"


rule describe_import:
    # What the experiment imported, with the digests of its files and of its own training set (a folder): a change of
    # either reruns the measurements that read this file.
    output:
        description=PLAN.import_description_file(),
    wildcard_constraints:
        name=NAME,
    params:
        description=lambda wc: PLAN.import_description(wc.name),
    threads: 1
    log:
        experiment_log("describe_import", "{name}"),
    script:
        "../workflow_scripts/describe_import.py"


rule generate:
    # One job per model (or per condition, or per cell: generation.cells_per_job) loads the model once. Its cells are
    # update() outputs, which Snakemake does not delete before the job: the job keeps the cells that are complete and
    # newer than the model, so deleting one cell regenerates only that cell. The model is trained here or imported.
    input:
        model=PLAN.model_path(),
    output:
        images=update(PLAN.generation_job_files("npy")),
        grids=update(PLAN.generation_job_files("png")),
    params:
        sampling=PLAN.sampling_settings,
        record=lambda wc: PLAN.generation_record(wc.model),
        device=config["device"],
        # The job's cells, in the order of its files. Derived from its files (the function takes output), so
        # Snakemake does not track it as a param of its own: fewer guidance scales rerun no generation.
        cells=lambda wildcards, output: PLAN.generation_job_cells(dict(wildcards.items())),
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=PLAN.generation_batch,
    log:
        log_file("generate", "{model}", PLAN.sampling_id, *PLAN.generation_job_id),
    benchmark:
        benchmark_file("generate", "{model}", PLAN.sampling_id, *PLAN.generation_job_id)
    script:
        "../workflow_scripts/generate.py"


rule generate_calibration:
    # The clean model's calibration draw: the measured cells with a seed of their own, for the trigger detectors.
    input:
        model=PLAN.model_path(),
    output:
        images=PLAN.calibration_job_files("npy"),
        grids=PLAN.calibration_job_files("png"),
    params:
        sampling=PLAN.calibration_sampling,
        record=lambda wc: PLAN.generation_record(wc.model, PLAN.calibration_sampling),
        device=config["device"],
        cells=lambda wildcards, output: PLAN.model_cells(),
    threads: config["generation"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        images_per_batch=PLAN.generation_batch,
    log:
        log_file("generate_calibration", "{model}", PLAN.calibration_id),
    benchmark:
        benchmark_file("generate_calibration", "{model}", PLAN.calibration_id)
    script:
        "../workflow_scripts/generate.py"


rule measure:
    input:
        cells=cells_of_model,
        train=training_data,
        # An imported model's description: its stated training share when its training set is not known.
        imported=import_description_of_model,
        content_judge=PLAN.content_judge,
        trigger_judges=trigger_judges_of_model,
        calibrations=calibrations_of_model,
    output:
        metrics=PLAN.metrics_file(),
    params:
        cells=model_cells,
        triggers=lambda wc: PLAN.measured_triggers(wc.attack),
        detected_triggers=lambda wc: PLAN.detected_triggers(wc.attack),
        target=TARGET,
        ratio=lambda wc: PLAN.attacks[wc.attack]["ratio"],
        device=config["device"],
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    log:
        experiment_log("measure", "{attack}", "seed{seed}"),
    benchmark:
        experiment_benchmark("measure", "{attack}", "seed{seed}")
    script:
        "../workflow_scripts/measure.py"
