"""Where each row's model comes from: the ``origin`` column of every table (``trained here``, or ``imported from
<path>``: :meth:`bibaddiff.plan.Plan.origins`, given to each summary rule as a param)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from bibaddiff.errors import BibaddiffError

Origins = Mapping[str, Mapping[str, str]]


def origin_of(origins: Origins | None, attack: str, seed: Any = None) -> str:
    """The origin of a row of ``attack``: its model's when ``seed`` names one; for a row about no single model (a
    pooled row, a real training set) the distinct origins of the attack's models, joined by '; '. Empty when the
    origins are not known (tables written outside the workflow)."""
    if origins is None:
        return ""
    if attack not in origins:
        raise BibaddiffError(f"no origin for attack {attack!r}; the origins name {', '.join(origins) or 'no attack'}")
    by_seed = origins[attack]
    key = "" if seed is None or (isinstance(seed, float) and pd.isna(seed)) else str(seed)
    if key in by_seed:
        return by_seed[key]
    return "; ".join(dict.fromkeys(by_seed.values()))


def with_origin(table: pd.DataFrame, origins: Origins | None, after: str = "seed") -> pd.DataFrame:
    """``table`` with an ``origin`` column after ``after`` (its model's origin, from its ``attack`` and ``seed``)."""
    if table.empty:
        return table.assign(origin=pd.Series(dtype=object))
    seeds = table["seed"] if "seed" in table else pd.Series([None] * len(table), index=table.index)
    origin = [origin_of(origins, attack, seed) for attack, seed in zip(table["attack"], seeds)]
    table = table.drop(columns="origin", errors="ignore")
    position = list(table.columns).index(after) + 1 if after in table else len(table.columns)
    table.insert(position, "origin", origin)
    return table
