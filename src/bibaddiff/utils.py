"""Small shared helpers: devices, threads, seeds, atomic JSON files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def select_device(prefer: str = "auto") -> torch.device:
    """The device to run on: CUDA when present (or asked for), the CPU otherwise."""
    if prefer not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be one of auto, cpu, cuda; got {prefer!r}")
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    return torch.device("cuda")


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads so that parallel jobs on one machine do not oversubscribe it."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1; got {threads}")
        torch.set_num_threads(int(threads))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically, so that an interrupted job never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=_json_default)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path) as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
