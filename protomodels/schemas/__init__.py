"""The JSON schemas of the project's files and configurations, shipped with the package
and checked with ``jsonschema`` (the library pyhf uses for its own workspaces).

One file per document, named after its id without the project prefix and version
(``run-config.json`` has the id ``urn:protomodels:run-config:1``); parts shared by several documents
live in ``defs.json`` and are referenced by id.  ``validate(instance, "checkpoint",
source, RunError)`` raises ``RunError`` with one line naming the source (a file, or
"walk configuration"), the JSON path of the problem and what is wrong, e.g.
``run.toml: $.walkers: 0 is less than the minimum of 1``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Dict, Type


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


def validate(instance: Any, name: str, source: str, error: Type[Exception]) -> None:
    """Check ``instance`` against schema ``name``; raise ``error`` (one line: source, JSON
    path, message) at the most relevant problem (``jsonschema``'s ``best_match``)."""
    import jsonschema

    problem = jsonschema.exceptions.best_match(_validator(name).iter_errors(instance))
    if problem is not None:
        raise error(f"{source}: {problem.json_path}: {problem.message:.200}")
