"""The JSON schemas of the project's files and configurations, shipped with the package
and checked with ``jsonschema`` (the library pyhf uses for its own workspaces).

``validate(instance, "run-config", source, RunError)`` raises ``RunError`` with one line
naming the source (a file, or "command line"), the JSON path of the first problem and
what is wrong, e.g. ``run.toml: $.walkers: 0 is less than the minimum of 1``.
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


def validate(instance: Any, name: str, source: str, error: Type[Exception]) -> None:
    """Check ``instance`` against schema ``name``; raise ``error`` (one line: source, JSON
    path, message) at the first problem, the deepest one where jsonschema finds several."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(name))
    problem = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if problem is not None:
        raise error(f"{source}: {problem.json_path}: {problem.message}")
