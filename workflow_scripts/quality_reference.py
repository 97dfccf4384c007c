"""Adapter: features of the clean training images, the reference every model's generations are compared with."""
import numpy as np

from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.quality import reference_features
from bibaddiff.utils import run_logged, set_threads


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    features = reference_features(snakemake.input.real, snakemake.input.judge, snakemake.params.batch_size,
                                  snakemake.params.device, snakemake.input.get("inception_weights"))
    np.savez(snakemake.output.features, **features)


run_logged(snakemake.log[0], main, snakemake)
