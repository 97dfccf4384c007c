"""Adapter: features of the clean training images, the reference every model's generations are compared with."""
import numpy as np

from bibaddiff.data import read_dataset
from bibaddiff.gpu_slots import hold_job_gpus
from bibaddiff.judges import load_judge
from bibaddiff.quality import load_inception, quality_features
from bibaddiff.utils import run_logged, select_device, set_threads


def main(snakemake):
    hold_job_gpus(snakemake.params.device)  # a card of its own, before anything starts CUDA
    set_threads(snakemake.threads)
    device = select_device(snakemake.params.device)
    judge, _ = load_judge(snakemake.input.judge, snakemake.params.device)
    weights = snakemake.input.get("inception_weights")
    inception = load_inception(weights, device) if weights else None
    real = read_dataset(snakemake.input.real)
    features = quality_features(real.images, judge, inception, snakemake.params.batch_size)
    np.savez(snakemake.output.features, **features)
    print(f"features of {len(real)} real images: " + ", ".join(f"{k} {v.shape[1]}-d" for k, v in features.items()))


run_logged(snakemake.log[0], main, snakemake)
