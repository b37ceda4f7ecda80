"""Polishing a run's best models: a deterministic local optimisation of K
(``protomodels polish RUN``, issue 12).

The walker finds the right particle content and decay channels; its last few percent of
K are a slow random walk.  ``polish`` takes each of the run's ``top`` best hiscores and
maximises K over its continuous parameters with everything discrete kept as it is.

Parameters (all others fixed):

- the mass of every unfrozen particle, the LSP included, as log(mass / GeV);
- every multiplier that is neither exactly 0 nor exactly 1, as log(multiplier)
  (0 and 1 are discrete choices of the walker's reference measure: they stay; so does
  every multiplier of a process the model does not store, i.e. 1);
- the BRs of each particle with two or more channels of non-zero BR, as the log-ratios
  log(BR_i / BR_ref) to the support's last channel by name (softmax): every BR stays
  strictly positive and they sum to 1, so the support never changes.  A channel stored
  with BR 0 keeps it, and particles with one channel keep BR 1.

The optimiser is ``scipy.optimize.minimize(method="Nelder-Mead")`` on -K (K is
piecewise, from interpolated upper-limit maps and a best combination that can switch,
so it has no useful derivatives).  Coordinates are scaled so that the initial simplex is
the origin's point plus one step along each axis: 0.05 in log(mass) (5%), 0.2 in
log(multiplier), 0.5 in a BR log-ratio; scipy clips a step that would leave a bound.
Box bounds are the ``Space``'s mass ranges (default: the lower wall to 2400 GeV) and its
``ssm_range``; every other model-space rule (the LSP lightest, ordered pairs, the top
corridor, a fixed channel kinematically closed, BRs) is checked with
``moves.log_reference`` and a point that breaks one scores K = -inf without being
evaluated.  Nelder-Mead stops at xatol 1e-3 (in steps) and fatol 1e-4 (in K); while
evaluations are left and a round improved K by more than 1e-3, it restarts from the
best point with a fresh simplex.  There are no random numbers: the same run, score and
budget give the same result, byte for byte.

Budget: ``max_evaluations`` (default 150) K evaluations per model, the origin's own
re-evaluation included; repeated points (cached) and points that break a rule cost
none.  One evaluation on the real database takes about 0.2-1 s, so a model takes about
0.5-2.5 minutes and the default ``--top 5`` about 3-13 minutes, plus loading the
database (about 10 s) and the process' first, cold evaluation (up to about 30 s).
Measured on the full database: the paper's best model (tests/models.py), 40
evaluations in 27 s, K 2.04 -> 3.78.

Output: the best point found, if its K beats the origin's hiscore K (``K_before``),
becomes a new entry of ``RUN/hiscores.json`` with the score of that point, the origin's
``walker``, ``step`` and ``temperature``, ``"polished": true`` and ``K_before``; then
every hiscore is exported again as ``RUN/hiscores/rank-<n>.slha`` (``runs.export_hiscores``:
ranks move when entries come in).  A model polish cannot improve adds no entry.

The entries are added under the hiscores file's lock and the file is replaced
atomically, but not with ``hiscores.merge``: that would drop the origin wherever its
polished version is within 1% in every mass (the same model to it) and cut the list at
10 entries.  Here every existing entry stays; only a polished entry of the same origin
(walker, step) from an earlier ``polish`` is replaced (by the better of the two), so
polishing again is idempotent.  The models polished are the best ``top`` entries that are
not polished themselves.  (A later walker merge applies the file's usual rules again.)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .exceptions import RunError
from .model import LSP, ProtoModel
from .moves import Space, log_reference, process_keys

logger = logging.getLogger(__name__)

Score = Callable[[ProtoModel], Dict[str, Any]]

#: Initial simplex steps, by kind of parameter.
MASS_STEP = 0.05   # in log(mass)
SSM_STEP = 0.2     # in log(multiplier)
BR_STEP = 0.5      # in log(BR_i / BR_ref)
XATOL, FATOL = 1e-3, 1e-4  # Nelder-Mead's tolerances: in steps, in K
RESTART_GAIN = 1e-3  # restart while a round gains more K than this
INVALID = 1e30     # -K of a point that breaks a rule (finite: Nelder-Mead subtracts)
MAX_EVALUATIONS = 150


@dataclass(frozen=True)
class _Parameter:
    kind: str          # "mass", "ssm" or "br"
    key: Any           # pid; process key; (pid, index in the support)
    x0: float
    step: float
    bounds: Tuple[Optional[float], Optional[float]]  # of x (log scale), None: open


class Parametrisation:
    """The continuous parameters of one model (see the module docstring): ``model(y)``
    is the model at scaled coordinates y (y = 0 is the origin exactly)."""

    def __init__(self, model: ProtoModel, space: Space):
        self.origin = model.copy()
        self.space = space
        params: List[_Parameter] = []
        for pid in model.unfrozen:
            lo, hi = space.mass_range(pid)
            params.append(_Parameter("mass", pid, math.log(model.masses[pid]), MASS_STEP,
                                     (math.log(lo), math.log(hi))))
        lo, hi = space.ssm_range
        for key in process_keys(model):
            value = model.ssm.get(key, 1.0)
            if value not in (0.0, 1.0):
                params.append(_Parameter("ssm", key, math.log(value), SSM_STEP,
                                         (math.log(lo), math.log(hi))))
        self.supports: Dict[int, Tuple[str, ...]] = {}
        for pid in model.unfrozen:
            support = tuple(sorted(c for c, br in model.decays.get(pid, {}).items() if br > 0))
            if pid == LSP or len(support) < 2:
                continue
            self.supports[pid] = support
            ref = model.decays[pid][support[-1]]
            for i, channel in enumerate(support[:-1]):
                params.append(_Parameter("br", (pid, i), math.log(model.decays[pid][channel] / ref),
                                         BR_STEP, (None, None)))
        self.params = params

    def __len__(self) -> int:
        return len(self.params)

    def bounds(self) -> List[Tuple[Optional[float], Optional[float]]]:
        """Box bounds in scaled coordinates."""
        return [tuple(None if b is None else (b - p.x0) / p.step for b in p.bounds)
                for p in self.params]

    def model(self, y) -> ProtoModel:
        new = self.origin.copy()
        logits: Dict[int, List[float]] = {}
        moved = set()
        for p, yi in zip(self.params, y):
            yi = float(yi)
            x = p.x0 + p.step * yi
            if p.kind == "mass":
                if yi != 0.0:
                    lo, hi = self.space.mass_range(p.key)
                    new.masses[p.key] = min(max(math.exp(x), lo), hi)
            elif p.kind == "ssm":
                if yi != 0.0:
                    lo, hi = self.space.ssm_range
                    new.ssm[p.key] = min(max(math.exp(x), lo), hi)
            else:
                pid = p.key[0]
                logits.setdefault(pid, []).append(x)
                if yi != 0.0:
                    moved.add(pid)
        for pid in moved:
            z = np.array(logits[pid] + [0.0])
            brs = np.exp(z - z.max())
            brs /= brs.sum()
            for channel, br in zip(self.supports[pid], brs):
                new.decays[pid][channel] = float(br)
        return new


class _BudgetSpent(Exception):
    pass


def polish_model(model: ProtoModel, score: Score, max_evaluations: int = MAX_EVALUATIONS,
                 space: Optional[Space] = None) -> Dict[str, Any]:
    """Maximise K over ``model``'s continuous parameters (module docstring).  Returns
    {"model", "record" (the score of the best point), "K_start" (the origin's K),
    "evaluations", "seconds"}."""
    from scipy.optimize import minimize

    if max_evaluations < 1:
        raise ValueError(f"max_evaluations is {max_evaluations}; it must be at least 1")
    t0 = time.perf_counter()
    space = space or Space()
    par = Parametrisation(model, space)
    cache: Dict[Tuple[float, ...], float] = {}
    best: Dict[str, Any] = {"value": math.inf, "y": None, "record": None}
    count = [0]

    def objective(y) -> float:
        key = tuple(float(v) for v in y)
        if key in cache:
            return cache[key]
        candidate = par.model(key)
        if log_reference(candidate, space) == -math.inf:
            value = INVALID
        else:
            if count[0] >= max_evaluations:
                raise _BudgetSpent
            count[0] += 1
            record = score(candidate)
            k = float(record.get("K", -math.inf))
            value = -k if math.isfinite(k) else INVALID
            if value < best["value"]:
                best.update(value=value, y=key, record=record)
        cache[key] = value
        return value

    n = len(par)
    bounds = par.bounds()
    start = np.zeros(n)
    try:
        objective(start)
        while count[0] < max_evaluations:
            before = best["value"]
            simplex = np.vstack([start, start + np.eye(n)])  # one step along each axis
            minimize(objective, start, method="Nelder-Mead", bounds=bounds,
                     options={"initial_simplex": simplex, "xatol": XATOL, "fatol": FATOL,
                              "maxfev": 20 * max_evaluations})
            if best["y"] is None or not before - best["value"] > RESTART_GAIN:
                break
            start = np.array(best["y"])
    except _BudgetSpent:
        pass
    k_start = -cache[tuple(0.0 for _ in range(n))]
    return {"model": par.model(best["y"]) if best["y"] is not None else model.copy(),
            "record": best["record"], "K_start": k_start if k_start > -INVALID else -math.inf,
            "evaluations": count[0], "seconds": time.perf_counter() - t0}


def run_score(run_dir: Path, database: Optional[str] = None) -> Score:
    """The run's own score (its database, likelihood, r_limit and selection, as
    ``runs.load_physics_score``); ``database`` replaces its database."""
    from .runs import WalkConfig, load_physics_score

    _, score = load_physics_score(WalkConfig(**run_score_config(run_dir, database)))
    return score


def run_score_config(run_dir: Path, database: Optional[str] = None) -> Dict[str, Any]:
    """The run's configuration as ``runs.WalkConfig`` fields (what its score depends on:
    database, likelihood, r_limit, sqrts, analyses), ``database`` replacing its database;
    ``RunError`` if ``run_dir`` is not a run."""
    from .runs import WalkConfig, read_run_config

    _check_run(run_dir)
    config = read_run_config(run_dir)
    known = {f.name for f in fields(WalkConfig)}
    config = {k: v for k, v in config.items() if k in known}
    if database is not None:
        config["database"] = database
    return config


def _check_run(run_dir: Path) -> None:
    if not (Path(run_dir) / "run.json").is_file():
        raise RunError(f"{run_dir}: not a run (no run.json)")


def _origin(entry: Dict[str, Any]) -> Tuple[int, int]:
    return int(entry.get("walker", 0)), int(entry.get("step", 0))


def add_polished(path: Path, new: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Add polished entries to the hiscores file at ``path`` (module docstring: every
    existing entry stays; an earlier polished entry of the same origin is replaced by the
    better of the two), re-ranked by K; under the file's lock, written atomically."""
    from . import hiscores
    from .atomic import file_lock, write_json_atomic

    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        entries = hiscores.read(path)
        fresh = {_origin(e): e for e in new}
        kept = []
        for entry in entries:
            origin = _origin(entry)
            if entry.get("polished") and origin in fresh:
                if entry["K"] >= fresh[origin]["K"]:
                    fresh.pop(origin)
                else:
                    continue
            kept.append(entry)
        ranked = sorted(kept + list(fresh.values()),
                        key=lambda e: (-e["K"], *_origin(e), bool(e.get("polished"))))
        entries = [dict(e, rank=i + 1) for i, e in enumerate(ranked)]
        write_json_atomic(path, {"schema": hiscores.SCHEMA, "entries": entries})
    return entries


def polish(run_dir: Path, top: int = 5, max_evaluations: int = MAX_EVALUATIONS,
           score: Optional[Score] = None, space: Optional[Space] = None,
           report: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """Polish the run's ``top`` best (unpolished) hiscores; add the improved ones to its
    hiscores file and export every hiscore as SLHA again.  ``score`` defaults to the
    run's own (``run_score``); ``report`` is called with each model's result as it is
    done.  Returns one dict per model: rank_before, walker, step, K_before (the entry's
    K), K_start (the origin re-evaluated with ``score``), K_after and model (the best point
    found; -inf if none could be evaluated), improved (K_after > K_before: only then is an
    entry added), evaluations, seconds, and rank and slha of the new entry (else None)."""
    from . import hiscores
    from .runs import export_hiscores

    run_dir = Path(run_dir)
    _check_run(run_dir)
    path = run_dir / "hiscores.json"
    entries = [e for e in hiscores.read(path) if not e.get("polished")][:top]
    if not entries:
        raise RunError(f"{path}: no hiscores to polish yet")
    if score is None:
        score = run_score(run_dir)
    results, new = [], []
    for entry in entries:
        origin = ProtoModel.from_dict(entry["model"], source=f"{path} rank {entry['rank']}")
        found = polish_model(origin, score, max_evaluations, space)
        record = found["record"] or {"K": -math.inf}
        improved = float(record["K"]) > float(entry["K"])
        result = {"rank_before": entry["rank"], "walker": entry.get("walker", 0),
                  "step": entry.get("step", 0), "K_before": entry["K"], "K_start": found["K_start"],
                  "K_after": float(record["K"]), "improved": improved,
                  "evaluations": found["evaluations"], "seconds": round(found["seconds"], 3),
                  "model": found["model"].to_dict(), "rank": None, "slha": None}
        logger.info("rank %d: K %.4f -> %.4f in %d evaluations, %.1f s", entry["rank"],
                    entry["K"], result["K_after"], found["evaluations"], found["seconds"])
        if improved:
            new.append({**{k: v for k, v in record.items() if k != "K"}, "K": float(record["K"]),
                        "walker": result["walker"], "step": result["step"],
                        **({"temperature": entry["temperature"]} if "temperature" in entry else {}),
                        "model": result["model"], "polished": True, "K_before": entry["K"]})
        results.append(result)
        if report is not None:
            report(result)
    if new:
        add_polished(path, new)
        paths = export_hiscores(run_dir)
        for entry, slha in zip(hiscores.read(path), paths):
            if entry.get("polished"):
                for result in results:
                    if result["improved"] and (result["walker"], result["step"]) == _origin(entry):
                        result.update(rank=entry["rank"], slha=str(slha))
    return results
