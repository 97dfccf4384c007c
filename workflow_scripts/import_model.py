"""Adapter: an imported model's folder (bibaddiff_model.json: its classes and where its checked files are)."""
from bibaddiff.diffusion.imported import write_import_folder
from bibaddiff.utils import run_logged


def main(snakemake):
    info = write_import_folder(snakemake.output.model, snakemake.params.record, snakemake.input.get("classes"))
    print(f"imported {info['imported']['path']} ({info['imported']['layout']}, {len(info['imported']['files'])} files, "
          f"{info['num_classes']} classes)")


run_logged(snakemake.log[0], main, snakemake)
