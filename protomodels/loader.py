"""The one way commands and the API open a database: real or fake, with a likelihood.

``load_database(path, likelihood)`` locates the database like ``protomodels.database``
(``--database``, ``$PROTOMODELS_DATABASE``, the shared tarball), opens a fake database
(a folder with ``fakedb.json``) through ``protomodels.fakedb`` and a real one through
``protomodels.database``, then sets every pyhf result's statistical model
(``protomodels.statistics.workspaces``: ``simplified`` by default, or ``full``).
Keeping this choice here is what lets ``database``, ``fakedb`` and ``predictor`` import
each other in one direction only.
"""

from __future__ import annotations

from typing import Optional

from . import database, fakedb
from .database import ExperimentalDatabase
from .statistics.workspaces import DEFAULT_LIKELIHOOD, check_likelihood, use_likelihood


def load_database(path: Optional[str] = None,
                  likelihood: str = DEFAULT_LIKELIHOOD) -> ExperimentalDatabase:
    """The database at ``path`` (see ``database.locate``) with the pyhf results'
    ``likelihood`` ("simplified", "full" or "surrogate").  The first use of "simplified" builds the
    simplified workspaces that are missing from the cache (minutes, once).  Raises
    ``DatabaseError`` (no or unreadable database) or ``WorkspaceError`` (unknown mode)."""
    check_likelihood(likelihood)
    source = database.locate(path)
    if fakedb.record_path(source) is not None:
        return fakedb.load(source, likelihood=likelihood)
    db = database.load(source)
    use_likelihood(db, likelihood)
    return db
