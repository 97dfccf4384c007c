"""Adapter: train (or resume) one conditional DDPM on one training set with one seed."""
from bibaddiff.data import read_dataset
from bibaddiff.diffusion.train import TrainSettings, train_ddpm
from bibaddiff.utils import run_logged, set_threads


def main(snakemake):
    set_threads(snakemake.threads)
    dataset = read_dataset(snakemake.input.train)
    settings = TrainSettings.from_config(snakemake.params.training, snakemake.params.model)
    stats = train_ddpm(dataset, snakemake.output.model, snakemake.params.state_dir, settings,
                       seed=int(snakemake.wildcards.seed), device=snakemake.params.device)
    print(f"trained {stats['steps']} steps at {stats['steps_per_second']} steps/s, final loss {stats['final_loss']}")


run_logged(snakemake.log[0], main, snakemake)
