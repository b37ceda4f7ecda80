"""The best distinct models of a run, merged from all walkers without races.

``hiscores.json`` (schema protomodels.hiscores/1) lists up to N entries by decreasing K.
Two models are the same when they have the same particles and every mass agrees within
1%; the better one is kept.  Walkers merge their candidates under a file lock and the
file is replaced atomically, so it is never truncated and no entry is lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .atomic import file_lock, read_json_record, write_json_atomic
from .exceptions import RunError
from .schemas import schema_id

SCHEMA = schema_id("hiscores")
MASS_TOLERANCE = 0.01
KEEP = 10


def same_model(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Same particle content and masses within 1% (JSON model forms)."""
    ma, mb = a["masses"], b["masses"]
    if set(ma) != set(mb):
        return False
    return all(abs(ma[p] - mb[p]) <= MASS_TOLERANCE * max(ma[p], mb[p]) for p in ma)


def merge(entries: List[Dict[str, Any]], keep: int = KEEP) -> List[Dict[str, Any]]:
    """Best ``keep`` distinct entries by K (ties: earlier walker, then earlier step)."""
    ranked = sorted(entries, key=lambda e: (-e["K"], e.get("walker", 0), e.get("step", 0)))
    distinct: List[Dict[str, Any]] = []
    for entry in ranked:
        if not any(same_model(entry["model"], kept["model"]) for kept in distinct):
            distinct.append(entry)
        if len(distinct) == keep:
            break
    return [dict(entry, rank=i + 1) for i, entry in enumerate(distinct)]


def read(path: Path) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return read_json_record(path, SCHEMA, RunError, "hiscores file", "hiscores")["entries"]


def update(path: Path, candidates: List[Dict[str, Any]], keep: int = KEEP) -> List[Dict[str, Any]]:
    """Merge ``candidates`` into the file at ``path`` (safe against concurrent writers)."""
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        entries = merge(read(path) + list(candidates), keep)
        write_json_atomic(path, {"schema": SCHEMA, "entries": entries})
    return entries
