"""Re-scoring a run's hiscores with another likelihood (``protomodels rescore RUN``).

A run walks with one statistical model for its pyhf results (``run.json``'s
``config.likelihood``, by default the simplified one).  Whether its best models keep their
K with the full likelihoods is a question for its few best models, not a cost of every
step: ``rescore`` re-evaluates the hiscores with the run's r_limit and selection and the
other likelihood, and writes ``RUN/rescore-<likelihood>.json`` (schema
``protomodels.rescore/1``; rows keyed by walker, step and whether polished).  ``hiscores`` and ``show``
read these files and give every K they have; the ranking stays the run's own.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .atomic import read_json_record, write_json_atomic
from .exceptions import RunError
from .runs import read_run_config
from .schemas import schema_id
from .statistics.workspaces import LIKELIHOODS

logger = logging.getLogger(__name__)

SCHEMA = schema_id("rescore")


def rescore_path(run_dir: Path, likelihood: str) -> Path:
    return Path(run_dir) / f"rescore-{likelihood}.json"


def _read(path: Path) -> Dict[str, Any]:
    return read_json_record(path, SCHEMA, RunError, "rescore file")


def rescore(run_dir: Path, db, entries: List[Dict[str, Any]]) -> Tuple[Path, List[Dict[str, Any]]]:
    """Evaluate each hiscore entry's model on ``db`` (loaded with the likelihood to
    compare) with the run's r_limit and selection; add the rows to
    ``rescore-<db.likelihood>.json``.  Returns (file, new rows).  Raises ``RunError`` for a
    directory that is not a run or an unreadable earlier rescore file."""
    from . import significance
    from .model import ProtoModel
    from .predictor import Selection

    config = read_run_config(run_dir)
    if not (Path(run_dir) / "run.json").is_file():
        raise RunError(f"{run_dir}: not a run (no run.json)")
    selection = Selection(sqrts=tuple(config.get("sqrts", (8, 13))),
                          analyses=tuple(config.get("analyses", ("*",))))
    path = rescore_path(run_dir, db.likelihood)
    record = _read(path) if path.exists() else {"schema": SCHEMA, "likelihood": db.likelihood,
                                                "rows": []}
    rows: List[Dict[str, Any]] = []
    for entry in entries:
        t0 = time.perf_counter()
        result = significance.evaluate(ProtoModel.from_dict(entry["model"]), db,
                                       r_limit=config.get("r_limit", 1.0), selection=selection)
        rows.append({"rank": entry["rank"], "walker": entry["walker"], "step": entry["step"],
                     "polished": bool(entry.get("polished", False)), "K_run": entry["K"], "likelihood_run": config["likelihood"],
                     "K": result.K, "TL": result.TL, "mu_hat": result.mu_hat,
                     "r_max": result.r_max, "seconds": round(time.perf_counter() - t0, 2)})
    keys = {_key(r) for r in rows}
    record["rows"] = [r for r in record["rows"] if _key(r) not in keys] + rows
    record["database"] = {"path": db.path, "sha256": db.sha256}
    write_json_atomic(path, record)
    return path, rows


def rescored_likelihoods(run_dir: Path, exclude: str = "") -> List[str]:
    """The likelihoods a run's hiscores have been re-scored with (files present)."""
    return [name for name in LIKELIHOODS
            if name != exclude and rescore_path(run_dir, name).is_file()]


def k_values(run_dir: Path, entries: List[Dict[str, Any]]) -> List[Dict[str, float]]:
    """K of each hiscore entry by likelihood: the run's own, and every re-scored one
    (NaN where that model was not re-scored); run.json and each rescore file read once."""
    own = read_run_config(run_dir)["likelihood"]
    rescored = {name: {_key(r): float(r["K"]) for r in _read(rescore_path(run_dir, name))["rows"]}
                for name in rescored_likelihoods(run_dir, exclude=own)}
    return [{own: float(entry["K"]),
             **{name: rows.get(_key(entry), math.nan)
                for name, rows in rescored.items()}}
            for entry in entries]


def _key(row: Dict[str, Any]) -> tuple:
    """A hiscore's identity across files: the chain and step that found it, and whether it
    is the polished version of that model (``protomodels polish``)."""
    return (row["walker"], row["step"], bool(row.get("polished", False)))
