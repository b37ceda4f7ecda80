"""The best distinct models of a run, merged from all walkers without races.

``hiscores.json`` (schema protomodels.hiscores/1) lists up to N entries by decreasing K.
Two models are the same when they have the same particles and every mass agrees within
1%; the better one is kept.  Walkers merge their candidates under a file lock and the
file is replaced atomically, so it is never truncated and no entry is lost.

An entry's best fit (``best_fit_model``: multipliers scaled by its mu_hat) re-evaluated on
a database (``evaluate_entry``) is what ``show``, ``plot`` and ``report`` show of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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
    return read_json_record(path, SCHEMA, RunError, "hiscores file")["entries"]


def update(path: Path, candidates: List[Dict[str, Any]], keep: int = KEEP) -> List[Dict[str, Any]]:
    """Merge ``candidates`` into the file at ``path`` (safe against concurrent writers)."""
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        entries = merge(read(path) + list(candidates), keep)
        write_json_atomic(path, {"schema": SCHEMA, "entries": entries})
    return entries


def best_fit_model(entry: Dict[str, Any]) -> Tuple[Any, Dict[Any, float]]:
    """(best-fit ``ProtoModel``, its effective cross sections in pb by (sqrts TeV, pair))
    of a hiscore entry: the model with every multiplier scaled by its mu_hat, as
    ``hiscores/rank-<n>.slha`` holds it."""
    from .model import ProtoModel
    from .runs import best_fit
    from .xsec import effective_xsecs

    model = best_fit(ProtoModel.from_dict(entry["model"]), entry.get("mu_hat") or 1.0)
    return model, effective_xsecs(model)


def evaluate_entry(run_dir: Path, entry: Dict[str, Any], db: Any,
                   config: Optional[Dict[str, Any]] = None,
                   k_by_likelihood: Optional[Dict[str, float]] = None
                   ) -> Tuple[Any, Dict[str, Any]]:
    """(``significance.Significance``, ``show --json``'s document) of one hiscore entry of
    the run in ``run_dir``: its best fit (``best_fit_model``) re-evaluated on ``db`` with
    the run's own r_limit and results (so that K is the hiscore's); what ``show`` prints
    and ``report`` draws.  The document is ``significance.significance_report``'s plus
    ``K_by_likelihood`` (likelihood -> K, NaN where not re-scored), ``model`` and
    ``xsecs_fb`` ([sqrts TeV, pid, pid, fb]).  ``config`` (run.json's, as
    ``runs.read_run_config`` gives it) and ``k_by_likelihood`` (``rescore.k_values``' row
    of the entry): already read by the caller, else read here.  Errors of the evaluation
    (``ProtomodelsError``) pass."""
    from . import rescore as rescoring, significance as sig
    from .runs import read_run_config, run_selection

    model, xsecs = best_fit_model(entry)
    config = read_run_config(run_dir) if config is None else config
    result = sig.evaluate(model, db, r_limit=config.get("r_limit", 1.0),
                          selection=run_selection(config))
    report = sig.significance_report(result, db,
                                     Path(run_dir) / f"hiscores/rank-{entry['rank']}.slha")
    report["K_by_likelihood"] = (rescoring.k_values(run_dir, [entry])[0]
                                 if k_by_likelihood is None else k_by_likelihood)
    report["model"] = model.to_dict()
    report["xsecs_fb"] = [[s, a, b, 1000.0 * v] for (s, (a, b)), v in sorted(xsecs.items())]
    return result, report
