"""bibaddiff: bilateral data poisoning effects in diffusion models.

The library behind the Snakemake workflow: datasets, triggers, poisoning, conditional diffusion models,
judges, metrics and reports. It never imports snakemake; workflow scripts are thin adapters around it.
"""

from bibaddiff.errors import BibaddiffError

__all__ = ["BibaddiffError"]
__version__ = "0.1.0"
