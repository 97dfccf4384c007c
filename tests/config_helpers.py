"""Config validation as the tests check it."""

from __future__ import annotations

import pytest

from bibaddiff.config import load_schema, validate_config
from bibaddiff.errors import BibaddiffError


def config_error(config: dict) -> str:
    """The one-line message with which validation refuses ``config``; fails the test if it is accepted or the
    message spans lines."""
    with pytest.raises(BibaddiffError) as info:
        validate_config(config, load_schema())
    message = str(info.value)
    assert "\n" not in message, message
    return message
