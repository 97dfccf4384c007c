"""Figures for files, not screens: the one helper every stage's figures are drawn with."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def saved_figure(path: str | Path, *subplots_args: Any, **subplots_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(...)`` for a file, not a screen (the Agg backend): yields (figure, axes), then lays the figure
    out, saves it to ``path`` at 120 dpi and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots_args, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
