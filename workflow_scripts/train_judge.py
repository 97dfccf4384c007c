"""Adapter: train the content classifier (rule train_content_judge) or a trigger detector (train_trigger_judge)."""
from pathlib import Path

import numpy as np

from bibaddiff.calibration import calibration_part, dequantization_amplitude
from bibaddiff.data import read_dataset
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.images import load_generated
from bibaddiff.judges import JudgeSettings, save_judge, train_content_judge, train_trigger_judge
from bibaddiff.triggers import build_trigger
from bibaddiff.utils import run_logged, set_threads, write_json


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    train, heldout = read_dataset(snakemake.input.train), read_dataset(snakemake.input.heldout)
    params = snakemake.params
    settings = JudgeSettings.from_config(params.settings)
    triggers = [build_trigger(name, spec, train.image_size, train.channels) for name, spec in params.triggers.items()]
    if snakemake.rule == "train_content_judge":
        model, metrics = train_content_judge(train, heldout, triggers, settings, params.settings["seed"], params.device)
        kind, outputs = "content", train.num_classes
    else:
        # The training part of each calibration cell of the clean model, when the detector learns from generations.
        generated = [calibration_part(load_generated(path), "training") for path in snakemake.input.generated]
        generated = np.concatenate(generated) if generated else None
        dequantization = dequantization_amplitude(params.dequantization, train.images) if generated is not None else 0.0
        model, metrics = train_trigger_judge(train, heldout, triggers[0], settings, params.settings["seed"], params.device,
                                             generated=generated, dequantization=dequantization)
        metrics |= {"generated_negatives": 0 if generated is None else len(generated), "dequantization": dequantization}
        kind, outputs = f"trigger:{triggers[0].name}", 2
    info = {"kind": kind, "architecture": settings.architecture, "channels": train.channels, "num_outputs": outputs,
            "image_size": train.image_size, "class_names": train.class_names, "metrics": metrics}
    save_judge(snakemake.output.judge, model, info)
    write_json(Path(snakemake.output.judge) / "params.json", params.record)
    print(f"{kind}: held-out {metrics}")


run_logged(snakemake.log[0], main, snakemake)
