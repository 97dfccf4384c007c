"""Checks of user-given numbers, written once: every public function that takes a count, a seed or a class index
fails with a message that names the key and the value."""

from __future__ import annotations

from typing import Any

import numpy as np

from bibaddiff.errors import BibaddiffError


def is_int(value: Any) -> bool:
    """An integer, numpy's included; True and False are not counts even though Python says they are ints."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_int(value: Any, key: str, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int if it is an integer within [minimum, maximum] (either bound optional), else one line
    naming ``key``."""
    if is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum is not None and maximum is not None:
        wanted = f"an integer in [{minimum}, {maximum}]"
    elif minimum == 0:
        wanted = "a non-negative integer"
    elif minimum == 1:
        wanted = "a positive integer"
    elif minimum is not None:
        wanted = f"an integer >= {minimum}"
    elif maximum is not None:
        wanted = f"an integer <= {maximum}"
    else:
        wanted = "an integer"
    raise BibaddiffError(f"{key} must be {wanted}{f' ({hint})' if hint else ''}; got {value!r}")


def check_class_index(value: Any, key: str, num_classes: int) -> int:
    if is_int(value) and 0 <= value < num_classes:
        return int(value)
    raise BibaddiffError(f"{key} must be a class index in [0, {num_classes}); got {value!r}")
