"""The JSON schemas of the project's files and configurations, shipped with the package
and checked with ``jsonschema`` (the library pyhf uses for its own workspaces).

One file per document, named after its id without the project prefix and version
(``run-config.json`` has the id ``urn:protomodels:run-config:1``); parts shared by several documents
live in ``defs.json`` and are referenced by id.  ``validate(instance, "checkpoint",
source, RunError)`` raises ``RunError`` with one line naming the source (a file, or
"walk configuration"), the JSON path of the problem and what is wrong, e.g.
``run.toml: $.walkers: 0 is less than the minimum of 1``.

A document's schema pins the value of its field ``schema`` with ``const``
(``"protomodels.fakedb/1"``): that is the one place the id is spelled.  Writers put
``schema_id(name)`` into the file; readers call ``validate`` (or
``atomic.read_json_record``), which checks that id first, so a file of another version or
kind fails with ``$.schema`` before anything else is looked at.  A new version of a
document is a new schema file (and a new id) next to the old one.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Dict, Optional, Type


@functools.lru_cache(maxsize=None)
def schema(name: str) -> Dict[str, Any]:
    """The schema ``protomodels/schemas/<name>.json``."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    documents = [json.loads(entry.read_text()) for entry in resources.files(__name__).iterdir()
                 if entry.name.endswith(".json")]
    registry = Registry().with_resources(
        (document["$id"], Resource.from_contents(document)) for document in documents)
    return jsonschema.Draft202012Validator(schema(name), registry=registry)


@functools.lru_cache(maxsize=None)
def documents() -> Dict[str, str]:
    """Schema id (the value of a file's field 'schema') -> name of the shipped schema that
    pins it; documents without such a field (``history-step``, ``swap``, ``run-config``,
    ``defs``) are not in it."""
    ids: Dict[str, str] = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".json"):
            name = entry.name[:-len(".json")]
            pinned = _pinned(name)
            if pinned is not None:
                ids[pinned] = name
    return ids


def _pinned(name: str) -> Optional[str]:
    """The ``const`` of schema ``name``'s field 'schema', if it pins one."""
    return schema(name).get("properties", {}).get("schema", {}).get("const")


def schema_id(name: str) -> str:
    """The id that files of document ``name`` carry in their field 'schema' (the ``const``
    of its schema): writers put it in, readers expect it; KeyError for a document without
    one."""
    pinned = _pinned(name)
    if pinned is None:
        raise KeyError(f"schema {name!r} pins no field 'schema'")
    return pinned


def check_id(instance: Any, expected: str, source: str, error: Type[Exception]) -> None:
    """Raise ``error`` (one line, JSON path ``$.schema``) unless ``instance`` is an object
    whose field 'schema' is ``expected``: a file of another version or kind is refused
    before its contents are read, with a message that says so (not the first field the
    other version happens to lack)."""
    if not isinstance(instance, dict):
        raise error(f"{source}: $: {instance!r:.60} is not an object")
    found = instance.get("schema")
    if found is None:
        raise error(f"{source}: $.schema: missing, expected {expected!r}")
    if found != expected:
        raise error(f"{source}: $.schema: {found!r:.60} is not {expected!r}: a version or "
                    "kind of file this protomodels does not read")


def validate(instance: Any, name: str, source: str, error: Type[Exception]) -> None:
    """Check ``instance`` against schema ``name``; raise ``error`` (one line: source, JSON
    path, message) at the most relevant problem (``jsonschema``'s ``best_match``), or at
    ``$.schema`` first when the schema pins an id (``check_id``)."""
    import jsonschema

    pinned = _pinned(name)
    if pinned is not None:
        check_id(instance, pinned, source, error)
    problem = jsonschema.exceptions.best_match(_validator(name).iter_errors(instance))
    if problem is not None:
        raise error(f"{source}: {problem.json_path}: {problem.message:.200}")
