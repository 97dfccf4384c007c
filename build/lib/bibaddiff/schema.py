"""The config's JSON schema, shipped as package data (``bibaddiff/config.schema.yaml``): the one source of every
default, read by the config check and by the trainers' settings classes alike.

The bottom floor of the package: it imports nothing of bibaddiff but its errors, so that any module may read a
default without depending on :mod:`bibaddiff.config` (which imports data, triggers, diffusion, ...).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from bibaddiff.errors import BibaddiffError

SCHEMA_FILE = Path(__file__).resolve().parent / "config.schema.yaml"
# Our schema keyword for a default that depends on diffusion.kind: ``x-default-by-kind: {ddpm: ..., stable_diffusion:
# ...}`` in place of ``default``; a kind it leaves out gets no default (the key stays absent).
DEFAULT_BY_KIND = "x-default-by-kind"
MODEL_KINDS = ("ddpm", "stable_diffusion")


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The schema in ``path``; the package's own (:data:`SCHEMA_FILE`) when none is given."""
    path = SCHEMA_FILE if path is None else Path(path)
    if not path.is_file():
        raise BibaddiffError(f"the config schema {path} is missing; bibaddiff ships it as package data next to "
                             "schema.py (reinstall the package)")
    # Every snakemake call reads the schema: libyaml's loader takes a tenth of the pure-Python one's 0.2 s.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as handle:
        return yaml.load(handle, Loader=loader)


@functools.lru_cache(maxsize=1)
def shipped_schema() -> dict[str, Any]:
    return load_schema(SCHEMA_FILE)


def schema_default(subschema: dict[str, Any], kind: str | None) -> tuple[bool, Any]:
    """``(True, value)`` when ``subschema`` gives a default for ``kind`` (its ``default``, or its entry for ``kind``
    under ``x-default-by-kind``), else ``(False, None)``."""
    if "default" in subschema:
        return True, copy.deepcopy(subschema["default"])
    by_kind = subschema.get(DEFAULT_BY_KIND)
    if isinstance(by_kind, dict) and kind in by_kind:
        return True, copy.deepcopy(by_kind[kind])
    return False, None


def section_defaults(path: tuple[str, ...], kind: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every default of the schema section at ``path`` (e.g. ``("diffusion", "training")``) for one kind of model."""
    if kind not in MODEL_KINDS:
        raise BibaddiffError(f"config key diffusion.kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}")
    node = schema if schema is not None else shipped_schema()
    for key in path:
        node = node["properties"][key]
    defaults = {}
    for key, subschema in node.get("properties", {}).items():
        found, value = schema_default(subschema, kind)
        if found:
            defaults[key] = value
    return defaults


def training_defaults(kind: str) -> dict[str, Any]:
    """``diffusion.training``'s defaults for ``kind`` (ddpm or stable_diffusion), read from the schema."""
    return section_defaults(("diffusion", "training"), kind)


def default_x0_clipping() -> dict[str, Any]:
    """``generation.x0_clipping``'s default per kind of model, read from the schema."""
    return {kind: section_defaults(("generation",), kind)["x0_clipping"] for kind in MODEL_KINDS}
