"""Config fuzzing: every key of the schema, in every shipped config, given a wrong type, a value out of range, an
empty list, or an unknown key beside it. Each broken config must stop in validation (before any job) with one line
that names the key; a change the schema allows must either pass or stop the same way, never with a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from jsonschema import Draft202012Validator

from bibaddiff.config import load_schema, validate_config
from bibaddiff.errors import BibaddiffError
from workflow_helpers import REPO, fill_placeholders

SCHEMA = load_schema()
VALIDATOR = Draft202012Validator(SCHEMA)
SHIPPED = ["config.yaml", *sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml"))]
# Values of every JSON type; the schema decides which of them are wrong for a key.
WRONG_TYPES = ["fuzz", -3, 0.5, True, None, [], {}]
UNKNOWN_KEY = "fuzz_unknown_key"
# configs/*.yaml that only ever run dry (scale-plan) are fuzzed like the others; the counts are printed for the notes.
TRIED: dict[str, int] = {}


def schema_keys(schema: dict[str, Any], config: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """Every (key path, sub-schema) that the schema describes below ``path``; a map of user-named entries
    (``triggers``) is walked through the names the config gives it."""
    branches = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
    for branch in branches:
        for name, sub in branch.get("properties", {}).items():
            yield (*path, name), sub
            yield from schema_keys(sub, config.get(name) if isinstance(config, dict) else None, (*path, name))
        named = branch.get("additionalProperties")
        if isinstance(named, dict) and named.get("properties") and isinstance(config, dict):
            for name, value in config.items():
                yield from schema_keys(named, value, (*path, name))


def out_of_range(sub: dict[str, Any]) -> list[Any]:
    """Values of the right type that the sub-schema's bounds, enum or length refuse."""
    values: list[Any] = []
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    step = 1 if "integer" in types and "number" not in types else 0.001
    if "minimum" in sub:
        values.append(sub["minimum"] - step)
    if "maximum" in sub:
        values.append(sub["maximum"] + step)
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in sub:
            values.append(sub[bound])
    if "enum" in sub:
        values.append("fuzz_not_allowed")
    if "array" in types or any(b.get("type") == "array" for b in sub.get("oneOf", [])):
        values.append([])
    items = sub.get("items")
    if isinstance(items, dict) and ("minimum" in items or "maximum" in items or "enum" in items):
        values += [[value] for value in out_of_range(items)]
    return values


def with_value(config: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``config`` with ``value`` at ``path``; a section the config leaves out starts from its default, as
    the user who adds one key to it would write it (``replication.embedder`` needs its ``type``)."""
    changed = copy.deepcopy(config)
    node, sub = changed, SCHEMA
    for key in path[:-1]:
        sub = sub.get("properties", {}).get(key) or sub.get("additionalProperties") or {}
        if not isinstance(node.get(key), dict):
            node[key] = copy.deepcopy(sub.get("default")) if isinstance(sub.get("default"), dict) else {}
        node = node[key]
    node[path[-1]] = value
    return changed


def broken_configs(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(what was broken, the broken config, the name its error must contain)."""
    object_paths = [()]
    for path, sub in schema_keys(SCHEMA, config):
        dotted = ".".join(path)
        for value in [*WRONG_TYPES, *out_of_range(sub)]:
            yield f"{dotted} = {value!r}", with_value(config, path, value), dotted
        if sub.get("type") == "object" or "object" in (sub.get("type") or []):
            object_paths.append(path)
    for path in object_paths:
        yield f"unknown key in {'.'.join(path) or '(top level)'}", with_value(config, (*path, UNKNOWN_KEY), 1), UNKNOWN_KEY


def names_key(message: str, dotted: str) -> bool:
    """The message names the key in full, or names its section and the key's own name (as jsonschema does for a key
    that one variant of a section does not allow: "replication.embedder: 'path' is not one of [...]")."""
    section, _, leaf = dotted.rpartition(".")
    return dotted in message or (section in message and f"'{leaf}'" in message)


@pytest.fixture(scope="module")
def filled_configs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Each shipped config with its CHANGE_ME paths pointed at tiny local stand-ins, as a user would fill them."""
    configs = {}
    for name in SHIPPED:
        config = fill_placeholders(yaml.safe_load((REPO / name).read_text()), tmp_path_factory.mktemp(Path(name).stem))
        validate_config(copy.deepcopy(config), SCHEMA)  # the unbroken config is valid, so a failure below is the fuzz's
        configs[name] = config
    return configs


@pytest.mark.parametrize("name", SHIPPED)
def test_every_broken_config_stops_with_one_line_naming_the_key(name, filled_configs):
    config = filled_configs[name]
    failures, tried = [], 0
    for what, broken, key in broken_configs(config):
        refused_by_schema = not VALIDATOR.is_valid(broken)
        try:
            validate_config(broken, SCHEMA)
        except BibaddiffError as error:
            message = str(error)
            if "\n" in message or (refused_by_schema and not names_key(message, key)):
                failures.append(f"{what}: {message!r}")
        except Exception as error:  # noqa: BLE001 - any other exception is a traceback for the user
            failures.append(f"{what}: {type(error).__name__}: {error}")
        else:
            if refused_by_schema:
                failures.append(f"{what}: accepted")
        tried += refused_by_schema
    TRIED[name] = tried
    assert not failures, f"{len(failures)} of the broken configs of {name}:\n" + "\n".join(failures[:40])
    assert tried >= 100, f"{name}: only {tried} broken configs tried"
