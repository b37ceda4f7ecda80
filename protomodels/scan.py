"""Scans: K over a grid of two parameters of a hiscore, everything else fixed
(``protomodels scan RUN --rank 1 --x Xt --y XZ1``, issue 15).

**The model.**  A scan varies the hiscore's *best fit*, the model ``show`` evaluates and
``hiscores/rank-<n>.slha`` holds: the stored model with every multiplier scaled by the
entry's mu_hat (``runs.best_fit``).  K is the same as for the stored model (mu_hat
profiles the overall scale; they agree to the precision of the fitted mu_hat, 1e-7 or
better), and at the hiscore's own point mu_hat is 1 and r_max is that
of the exported model, so the line r_max = r_limit is where the fitted signal, with the
hiscore's multipliers, reaches the critic's limit.  Every point is scored with the run's
own score (``polish.run_score``: its database, likelihood, r_limit, sqrts and analyses;
``--database`` replaces the database), so the grid point at the hiscore's values
reproduces its K.

**Parameters** (``--x``, ``--y``):

- a particle name of the model (``Xt``, ``XZ1``, ``model.NAMES``): its mass in GeV;
  default range the hiscore's mass +- max(40%, 100 GeV), clipped to the walks' mass range
  (its lower wall to 2400 GeV), linear;
- ``ssm:A,B``: the multiplier of the production of A and B (``ssm:Xt,Xt``: stop pairs;
  a ``~`` marks an antiparticle, ``ssm:~Xd,Xd``, needed only where both charge
  combinations are produced); default range the hiscore's value /3 to x3, clipped to the
  walks' multiplier range (0.01-100), logarithmic (0 to 1, linear, for a multiplier 0).

``--points NxM`` (default 20x20) points along x and y; ``--x-range LO:HI`` replaces a
default range.  The grid point nearest the hiscore's value on each axis is moved onto it
exactly (when the range holds it), so the hiscore is a grid point.

**Masked points.**  A point whose model breaks a model-space rule (``ProtoModel.validate``:
walls, 2400 GeV, the LSP lightest, ordered pairs, the top corridor, a channel with BR > 0
closed) is not evaluated: it is stored as ``masked`` with the rule it breaks.  (The walks'
multiplier range 0.01-100 is no rule here: it bounds the chains' unscaled multipliers,
not a best fit's.)  A point whose evaluation fails (the score rejects the model, or raises:
pyhf, a numerical failure) is stored as ``failed`` with the error, logged as a warning;
the scan goes on, and continuing it does not retry the point.

**Running.**  Points are evaluated in chunks of one grid row's length, by local worker
processes forked after the database is loaded and the hiscore itself evaluated (so they
share the database and warm caches; default min(chunks, cores)), or as Dask tasks with
``--cluster local|ADDRESS|slurm|...`` (``cluster.connect``; each worker loads the
database once).  The scan file (default ``RUN/scans/rank<R>-<x>-<y>-<key>.json``, schema
``protomodels.scan/1``, ``schemas/scan.json``) is rewritten atomically after every
finished chunk; running the same command again continues it, evaluating only the points
it lacks (``key`` hashes the model, the axes and the score's settings: another grid is
another file).  One process writes a scan file at a time (``atomic.sole_writer``).
Progress is shown by ``progress.progress_bar`` (a bar in a terminal, INFO lines
elsewhere).

Measured (the README run ``walk --walkers 2 --steps 300 --seed 7``, rank 1: XZ1 48, XZ2
450 GeV, K 5.487; ``--x XZ2 --y XZ1``, 20 x 20, 1 point masked, on 2 cores shared with
other jobs, load 6-7): 800 s with 2 local processes, 660 s with ``--cluster local`` (2
workers), the same points bit for bit; a point took 4 s of wall time on average there.
The grid's maximum is the hiscore's point, K re-evaluated 5.487 (within 1e-10).

**Plot** (``plot_scan``): filled K contours, masked points hatched, failed points
crossed, the r_max = r_limit line, the hiscore's point and the grid's best point marked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .exceptions import ModelError, ScanError
from .model import NAMES, PIDS, ProtoModel
from .moves import Space, process_keys
from .schemas import schema_id

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Score = Callable[[ProtoModel], Dict[str, Any]]

SCAN_SCHEMA = schema_id("scan")
DEFAULT_POINTS = (20, 20)
MASS_WINDOW = 0.4            # default mass range: +- 40% of the hiscore's mass ...
MIN_MASS_HALF_WIDTH = 100.0  # ... and at least +- 100 GeV
SSM_FACTOR = 3.0             # default multiplier range: /3 to x3


@dataclass(frozen=True)
class Axis:
    """One scanned parameter: a particle's mass (``kind`` "mass", ``key`` its PDG id) or a
    process' multiplier (``kind`` "ssm", ``key`` its ``model.ssm_key``), with its grid
    ``values`` (GeV for masses) and the hiscore's value."""

    parameter: str
    kind: str
    key: Any
    values: Tuple[float, ...]
    hiscore_value: float
    log: bool = False

    def value_of(self, model: ProtoModel) -> float:
        if self.kind == "mass":
            return float(model.masses[self.key])
        return float(model.ssm.get(self.key, 1.0))

    def apply(self, model: ProtoModel, value: float) -> None:
        """Set the parameter of ``model`` (in place) to ``value``; the hiscore's own value
        leaves the model untouched, so that its point is the hiscore's model exactly."""
        if value == self.value_of(model):
            return
        if self.kind == "mass":
            model.masses[self.key] = float(value)
        else:
            model.ssm[self.key] = float(value)

    @property
    def title(self) -> str:
        """Axis label with units."""
        if self.kind == "mass":
            return f"m({self.parameter}) [GeV]"
        return f"multiplier of {' '.join(_signed_name(p) for p in self.key)}"

    def to_json(self) -> Dict[str, Any]:
        return {"parameter": self.parameter, "kind": self.kind,
                "key": self.key if self.kind == "mass" else list(self.key),
                "scale": "log" if self.log else "linear", "values": list(self.values),
                "hiscore_value": self.hiscore_value}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Axis":
        """The axis of a scan file's ``x`` or ``y`` (``to_json``'s form, schema-checked)."""
        key = data["key"] if data["kind"] == "mass" else tuple(data["key"])
        return cls(data["parameter"], data["kind"], key, tuple(data["values"]),
                   data["hiscore_value"], data["scale"] == "log")


def _signed_name(pid: int) -> str:
    return ("~" if pid < 0 else "") + NAMES[abs(pid)]


def _signed_pid(token: str, option: str, text: str) -> Tuple[int, bool]:
    """(pid, whether an antiparticle was asked for) of one ``ssm:`` token."""
    anti = token.startswith("~")
    name = token[1:] if anti else token
    if name not in PIDS:
        raise ScanError(f"{option} {text!r}: {name!r} is not a particle name "
                        f"(e.g. {', '.join(sorted(PIDS)[:4])}, ...)")
    return (-PIDS[name] if anti else PIDS[name]), anti


def parse_parameter(text: str, model: ProtoModel, option: str = "--x") -> Tuple[str, Any, str]:
    """(kind, key, canonical parameter text) of ``text`` for ``model``: a particle name of
    the model (its mass) or ``ssm:A,B`` (a multiplier of one of its processes; see the
    module docstring).  ``ScanError`` naming ``option`` and ``text`` otherwise."""
    from .model import ssm_key

    text = text.strip()
    present = ", ".join(NAMES[p] for p in model.unfrozen)
    if text.lower().startswith("ssm:"):
        tokens = [t.strip() for t in text[4:].split(",")]
        if len(tokens) != 2 or not all(tokens):
            raise ScanError(f"{option} {text!r}: a multiplier is ssm:A,B with two particle "
                            "names, e.g. ssm:Xt,Xt")
        signed = [_signed_pid(t, option, text) for t in tokens]
        keys = process_keys(model)
        if any(anti for _, anti in signed):
            matches = [ssm_key(signed[0][0], signed[1][0])]
            matches = [k for k in matches if k in keys]
        else:
            wanted = sorted(abs(p) for p, _ in signed)
            matches = [k for k in keys if sorted(abs(p) for p in k) == wanted]
        offered = ", ".join("ssm:" + ",".join(_signed_name(p) for p in k) for k in keys)
        if not matches:
            raise ScanError(f"{option} {text!r}: the model does not produce this pair; its "
                            f"processes are {offered or 'none'}")
        if len(matches) > 1:
            choices = " or ".join("ssm:" + ",".join(_signed_name(p) for p in k) for k in matches)
            raise ScanError(f"{option} {text!r}: ambiguous, write {choices}")
        key = matches[0]
        return "ssm", key, "ssm:" + ",".join(_signed_name(p) for p in key)
    if text in PIDS:
        if PIDS[text] not in model.masses:
            raise ScanError(f"{option} {text!r}: the model has no {text} (it has {present})")
        return "mass", PIDS[text], text
    raise ScanError(f"{option} {text!r}: expected a particle of the model ({present}) for its "
                    "mass, or ssm:A,B for a multiplier")


def parse_points(text: str) -> Tuple[int, int]:
    """``NxM`` -> (N, M), each at least 2; ``ValueError`` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 2:
        raise ValueError(f"{text!r}: expected NxM with N, M >= 2, e.g. 20x20")
    return int(match.group(1)), int(match.group(2))


def parse_range(text: str) -> Tuple[float, float]:
    """``LO:HI`` -> (LO, HI) with LO < HI; ``ValueError`` otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"{text!r}: expected LO:HI, e.g. 700:1600") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{text!r}: expected LO:HI with LO < HI")
    return lo, hi


def default_range(kind: str, key: Any, value: float, space: Space) -> Tuple[float, float, bool]:
    """(lo, hi, log scale) around the hiscore's ``value`` (module docstring)."""
    if kind == "mass":
        lo, hi = space.mass_range(key)
        half = max(MASS_WINDOW * value, MIN_MASS_HALF_WIDTH)
        return max(value - half, lo), min(value + half, hi), False
    lo, hi = space.ssm_range
    if value <= 0.0:
        return 0.0, 1.0, False
    return max(value / SSM_FACTOR, lo), min(value * SSM_FACTOR, hi), True


def grid_values(lo: float, hi: float, n: int, log: bool, snap: Optional[float]) -> Tuple[float, ...]:
    """``n`` values from ``lo`` to ``hi`` (evenly, in log for ``log``), the one nearest
    ``snap`` replaced by it when lo <= snap <= hi."""
    values = list(np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n))
    if snap is not None and lo <= snap <= hi:
        scale = (lambda v: math.log(v)) if log else (lambda v: v)
        nearest = min(range(n), key=lambda i: abs(scale(values[i]) - scale(snap)))
        values[nearest] = snap
    return tuple(float(v) for v in values)


def make_axis(text: str, model: ProtoModel, n: int, value_range: Optional[Tuple[float, float]] = None,
              option: str = "--x", space: Optional[Space] = None) -> Axis:
    """The axis of parameter ``text`` of ``model`` with ``n`` points over ``value_range``
    (default: ``default_range``).  ``ScanError`` for a parameter the model lacks or a
    range that cannot hold it (masses and multipliers are not negative; a logarithmic
    multiplier axis needs LO > 0: LO 0 makes it linear)."""
    space = space or Space()
    kind, key, parameter = parse_parameter(text, model, option)
    probe = Axis(parameter, kind, key, (), 0.0)
    value = probe.value_of(model)
    if value_range is None:
        lo, hi, log = default_range(kind, key, value, space)
    else:
        (lo, hi), log = value_range, kind == "ssm" and value_range[0] > 0
        if lo < 0 or (kind == "mass" and lo <= 0):
            raise ScanError(f"{option}-range {lo:g}:{hi:g}: "
                            + ("masses must be positive" if kind == "mass"
                               else "multipliers cannot be negative"))
    if not lo < hi:
        raise ScanError(f"{option} {parameter}: its range {lo:g}:{hi:g} is empty "
                        f"(the hiscore's value is {value:g}); give {option}-range LO:HI")
    return Axis(parameter, kind, key, grid_values(lo, hi, n, log, value), value, log)


def _slug(parameter: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", parameter.replace("~", "anti")).strip("-")


def scan_key(model: Dict[str, Any], x: Axis, y: Axis, settings: Dict[str, Any]) -> str:
    """Ten hex digits of the sha256 of what a scan's results depend on."""
    text = json.dumps({"model": model, "x": x.to_json(), "y": y.to_json(), "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def grid_model(origin: ProtoModel, x: Axis, y: Axis, ix: int,
               iy: int) -> Tuple[ProtoModel, Optional[str]]:
    """The model of grid point (ix, iy) and why it is masked (None: it is valid)."""
    model = origin.copy()
    x.apply(model, x.values[ix])
    y.apply(model, y.values[iy])
    model = model.copy()  # canonical order, as a model read back from JSON
    try:
        model.validate(f"{x.parameter} = {x.values[ix]:.6g}, {y.parameter} = {y.values[iy]:.6g}")
    except ModelError as error:
        return model, str(error)
    return model, None


def point_record(record: Dict[str, Any]) -> Dict[str, Any]:
    """A score (``runs.physics_score``) as a scan point: status, K, TL, mu_hat, mu_max (None:
    unbounded), r_max (the evaluation's own: the largest r_obs at the scanned multipliers,
    ``significance.critic``; None where it is not finite or the score has none) and the
    combination; a non-finite K (a model the score rejected) is a ``failed`` point."""
    k = record.get("K")
    if not isinstance(k, (int, float)) or not math.isfinite(k):
        return {"status": "failed", "reason": "the evaluation failed (see the log)"}
    r_max = record.get("r_max")
    return {"status": "ok", "K": float(k), "TL": record.get("TL"), "mu_hat": record.get("mu_hat"),
            "mu_max": record.get("mu_max"),
            "r_max": r_max if isinstance(r_max, (int, float)) and math.isfinite(r_max) else None,
            "combination": [f"{c['analysis_id']}:{c['dataset']}"
                            for c in record.get("combination") or []]}


Chunk = List[Tuple[int, int, float, float, Dict[str, Any]]]  # (ix, iy, x, y, model dict)


def evaluate_chunk(chunk: Chunk, score: Score) -> List[Dict[str, Any]]:
    """Score every point of ``chunk`` (the unit of work of both runners): one record per
    point (``point_record``, with its wall seconds).  A point whose score raises (pyhf, a
    numerical failure) is a ``failed`` point naming the error, logged as a warning: it
    neither stops the scan nor is retried when the scan is continued.  ``KeyboardInterrupt``
    passes."""
    points = []
    for ix, iy, xv, yv, model in chunk:
        t0 = time.perf_counter()
        try:
            point = point_record(score(ProtoModel.from_dict(model)))
        except Exception as error:  # noqa: BLE001 - one bad point must not end the scan
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            where = "the hiscore's point" if (ix, iy) == (-1, -1) else f"point ({ix}, {iy})"
            logger.warning("scan: %s at x = %.6g, y = %.6g failed (%s)", where, xv, yv, reason)
            logger.debug("scan: the failure of %s", where, exc_info=True)
            point = {"status": "failed", "reason": reason}
        points.append({"ix": ix, "iy": iy, "x": xv, "y": yv, **point,
                       "seconds": round(time.perf_counter() - t0, 4)})
    return points


def scan_task(chunk: Chunk, config: Dict[str, Any], score_factory: Optional[Callable] = None
              ) -> List[Dict[str, Any]]:
    """A Dask task: ``evaluate_chunk`` with the worker's score for the run's ``config``
    (``cluster``: its database loaded once per worker process)."""
    from .cluster import _physics_score
    from .runs import one_blas_thread

    one_blas_thread()  # as every walker: BLAS threads only spin on tiny matrices
    score = score_factory() if score_factory is not None else _physics_score(config)
    return evaluate_chunk(chunk, score)


_FORKED: Dict[str, Any] = {}  # the score that forked workers inherit


def _forked_init() -> None:
    import signal

    from .runs import one_blas_thread

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    one_blas_thread()


def _forked_chunk(chunk: Chunk) -> List[Dict[str, Any]]:
    return evaluate_chunk(chunk, _FORKED["score"])


def read_scan(path: Path) -> Dict[str, Any]:
    """A scan file, checked against ``schemas/scan.json``; ``ScanError`` (one line naming
    the file and the JSON path) if it is not one."""
    from .atomic import read_json_record

    return read_json_record(path, SCAN_SCHEMA, ScanError, "scan file")


def _hiscore(run_dir: Path, rank: int) -> Dict[str, Any]:
    from . import hiscores
    from .exceptions import RunError

    entries = hiscores.read(run_dir / "hiscores.json")
    if not entries:
        raise RunError(f"{run_dir / 'hiscores.json'}: no hiscores yet")
    for entry in entries:
        if entry["rank"] == rank:
            return entry
    raise RunError(f"{run_dir}: no hiscore of rank {rank} (have 1-{len(entries)})")


def _store(path: Path, document: Dict[str, Any], points: Dict[Tuple[int, int], Dict[str, Any]],
           seconds: float) -> None:
    from .atomic import write_json_atomic

    n = len(document["x"]["values"]) * len(document["y"]["values"])
    document["points"] = [points[k] for k in sorted(points, key=lambda k: (k[1], k[0]))]
    document["complete"] = len(points) == n and document["hiscore"]["evaluated"] is not None
    document["seconds"] = round(seconds, 3)
    try:
        write_json_atomic(path, document)
    except OSError as error:
        raise ScanError(f"{path}: cannot write the scan file ({error.strerror or error})") from None


def scan(run_dir: Path, x: str, y: str, rank: int = 1, points: Tuple[int, int] = DEFAULT_POINTS,
         x_range: Optional[Tuple[float, float]] = None,
         y_range: Optional[Tuple[float, float]] = None, out: Optional[Path] = None,
         database: Optional[str] = None, cluster: Optional[str] = None, jobs: Optional[int] = None,
         processes: Optional[int] = None,
         score_factory: Optional[Callable[[], Score]] = None) -> Dict[str, Any]:
    """Scan parameters ``x`` and ``y`` (``parse_parameter``: a particle name, its mass in
    GeV, or ``ssm:A,B``, a multiplier) of the best fit of the run's hiscore of ``rank``
    over a ``points`` = (nx, ny) grid (counts, each >= 2; module docstring), continuing the
    scan file if it exists.  ``x_range``, ``y_range``: (lo, hi) in the parameter's unit
    (GeV, or a bare multiplier), default ``default_range``; ``out``: the scan file
    (default ``RUN/scans/rank<R>-<x>-<y>-<key>.json``); ``database``: replaces the run's.
    ``cluster``: Dask (``cluster.connect``, ``jobs`` workers), else ``processes`` local
    processes.  ``score_factory``: a score instead of the run's own (tests).  Progress:
    ``progress.progress_bar`` (a bar in a terminal, INFO lines elsewhere).

    Returns a summary (``summarise``; ``format_summary`` prints it): file, grid (points,
    ranges, each axis' kind), counts (evaluated now, done before, ok, masked, failed),
    wall seconds (this call, all calls), the hiscore's K (stored, re-evaluated) and the
    grid's best point.  A point whose evaluation raises is stored as ``failed``
    (``evaluate_chunk``) and the scan goes on.

    Raises ``RunError`` (no run, no hiscores, no such rank; from ``cluster.connect``: no
    Dask, an unreachable scheduler or bad ``cluster``); ``ScanError`` (one line naming the
    option, file or folder: a bad parameter or range, the same parameter twice, a scan
    folder that cannot be created or a scan file that cannot be written, one that is
    corrupt or belongs to another grid, one another process is writing (naming it), a Dask
    task that failed or was cancelled); and ``KeyboardInterrupt`` (finished chunks are
    kept: run again to continue)."""
    from .atomic import sole_writer
    from .polish import run_score_config
    from .progress import progress_bar
    from .runs import best_fit

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    config = run_score_config(run_dir, database)
    entry = _hiscore(run_dir, rank)
    source = f"{run_dir / 'hiscores.json'} rank {rank}"
    origin = best_fit(ProtoModel.from_dict(entry["model"], source=source),
                      entry.get("mu_hat") or 1.0)
    space = Space()
    nx, ny = points
    x_axis = make_axis(x, origin, nx, x_range, "--x", space)
    y_axis = make_axis(y, origin, ny, y_range, "--y", space)
    if (x_axis.kind, x_axis.key) == (y_axis.kind, y_axis.key):
        raise ScanError(f"--x {x!r} and --y {y!r} are the same parameter")
    settings = {"r_limit": float(config.get("r_limit", 1.0)), "database": config.get("database"),
                "likelihood": config.get("likelihood"), "sqrts": config.get("sqrts"),
                "analyses": config.get("analyses")}
    model_dict = origin.to_dict()
    key = scan_key(model_dict, x_axis, y_axis, settings)
    path = Path(out) if out else (run_dir / "scans" /
                                  f"rank{rank}-{_slug(x_axis.parameter)}-{_slug(y_axis.parameter)}-{key}.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ScanError(f"{path.parent}: cannot create the folder of the scan file "
                        f"({error.strerror or error})") from None
    with sole_writer(path.with_name(path.name + ".lock"), ScanError, f"scan file {path.name}"):
        if path.exists():
            document = read_scan(path)
            if document["key"] != key:
                raise ScanError(f"{path}: holds another scan (key {document['key']}, this one "
                                f"{key}: another model, grid or score); give another --out")
        else:
            document = {"schema": SCAN_SCHEMA, "run": str(run_dir), "rank": rank, "key": key,
                        "hiscore": {"K": entry["K"], "walker": entry.get("walker", 0),
                                    "step": entry.get("step", 0),
                                    "mu_hat": float(entry.get("mu_hat") or 1.0),
                                    "model": model_dict, "evaluated": None},
                        "settings": settings, "x": x_axis.to_json(), "y": y_axis.to_json(),
                        "points": [], "seconds": 0.0, "complete": False}
        seconds_before = float(document["seconds"])
        done = {(p["ix"], p["iy"]): p for p in document["points"]}
        before = len(done)
        on_grid = (x_axis.values.index(x_axis.hiscore_value)
                   if x_axis.hiscore_value in x_axis.values else None,
                   y_axis.values.index(y_axis.hiscore_value)
                   if y_axis.hiscore_value in y_axis.values else None)
        on_grid = on_grid if None not in on_grid else None
        pending: Chunk = []
        for iy in range(ny):
            for ix in range(nx):
                if (ix, iy) in done:
                    continue
                model, reason = grid_model(origin, x_axis, y_axis, ix, iy)
                xv, yv = x_axis.values[ix], y_axis.values[iy]
                if reason is not None:
                    done[(ix, iy)] = {"ix": ix, "iy": iy, "x": xv, "y": yv, "status": "masked",
                                      "reason": reason}
                else:
                    pending.append((ix, iy, xv, yv, model.to_dict()))
        masked_now = len(done) - before
        hiscore_point: Optional[Tuple[int, int, float, float, Dict[str, Any]]] = None
        if document["hiscore"]["evaluated"] is None:
            hiscore_point = (-1, -1, x_axis.hiscore_value, y_axis.hiscore_value, model_dict)
            if on_grid is not None and done.get(on_grid, {}).get("status") == "ok":
                document["hiscore"]["evaluated"] = {**done[on_grid], "ix": -1, "iy": -1}
                hiscore_point = None
        if hiscore_point is not None and on_grid is not None:  # evaluated as the hiscore
            pending = [p for p in pending if (p[0], p[1]) != on_grid]
        total = len(pending) + (hiscore_point is not None and on_grid is not None
                                and on_grid not in done)
        evaluated = [0]

        def finished(new: List[Dict[str, Any]]) -> None:
            for point in new:
                if (point["ix"], point["iy"]) == (-1, -1):
                    document["hiscore"]["evaluated"] = point
                    if on_grid is not None and on_grid not in done:
                        done[on_grid] = {**point, "ix": on_grid[0], "iy": on_grid[1]}
                        evaluated[0] += 1
                    continue
                done[(point["ix"], point["iy"])] = point
                evaluated[0] += 1
            _store(path, document, done, seconds_before + time.perf_counter() - t0)
            bar.update(evaluated[0])

        _store(path, document, done, seconds_before + time.perf_counter() - t0)
        runner = "nothing to evaluate"
        if pending or hiscore_point is not None:
            chunks = [pending[i:i + nx] for i in range(0, len(pending), nx)]
            with progress_bar(total, f"scan {path.name}: points") as bar:
                if cluster:
                    if hiscore_point is not None:
                        chunks.insert(0, [hiscore_point])
                    runner = _run_dask(chunks, config, cluster, jobs, score_factory, key, finished)
                else:
                    runner = _run_local(chunks, hiscore_point, config, processes,
                                        score_factory, finished)
        _store(path, document, done, seconds_before + time.perf_counter() - t0)
    return summarise(document, path, evaluated=evaluated[0], masked_now=masked_now,
                     seconds=time.perf_counter() - t0, runner=runner)


def _run_local(chunks: List[Chunk], hiscore_point, config: Dict[str, Any],
               processes: Optional[int], score_factory: Optional[Callable[[], Score]],
               finished: Callable[[List[Dict[str, Any]]], None]) -> str:
    """Evaluate the hiscore's point here (loading the database, warming the caches), then
    the chunks in processes forked from this one; returns a description of the runner."""
    import multiprocessing

    from .runs import WalkConfig, freeze_before_fork, load_physics_score

    score = score_factory() if score_factory is not None else \
        load_physics_score(WalkConfig(**config))[1]
    if hiscore_point is not None:
        finished(evaluate_chunk([hiscore_point], score))
    count = max(1, min(processes or os.cpu_count() or 1, len(chunks)))
    if count == 1 or not chunks:
        for chunk in chunks:
            finished(evaluate_chunk(chunk, score))
        return "1 local process"
    _FORKED.update(score=score)
    freeze_before_fork()
    pool = multiprocessing.get_context("fork").Pool(count, initializer=_forked_init)
    try:
        for result in pool.imap_unordered(_forked_chunk, chunks):
            finished(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _FORKED.clear()
    return f"{count} local processes"


def _run_dask(chunks: List[Chunk], config: Dict[str, Any], spec: str, jobs: Optional[int],
              score_factory: Optional[Callable[[], Score]], key: str,
              finished: Callable[[List[Dict[str, Any]]], None]) -> str:
    """One Dask task per chunk (``cluster.tasks``); results are stored as they come."""
    from .cluster import tasks

    arguments = [(chunk, config, score_factory) for chunk in chunks]
    keys = [f"protomodels-scan-{key}-{i}" for i in range(len(chunks))]
    with tasks(spec, jobs, scan_task, arguments, keys) as batch:
        logger.info("scan: %s, %d tasks", batch.label, len(chunks))
        for outcome in batch.completed():
            if outcome.error is not None:
                raise ScanError(f"--cluster {spec}: scan task {keys[outcome.index]}: "
                                f"{outcome.describe()}")
            finished(outcome.result)
        workers = batch.workers
    return f"Dask {spec} ({workers} workers)"


def _grid(document: Dict[str, Any], field: str) -> np.ma.MaskedArray:
    """``field`` of every point as an (ny, nx) masked array (masked: not an ok point)."""
    nx, ny = len(document["x"]["values"]), len(document["y"]["values"])
    values = np.zeros((ny, nx))
    mask = np.ones((ny, nx), dtype=bool)
    for p in document["points"]:
        if p["status"] == "ok" and p.get(field) is not None:
            values[p["iy"], p["ix"]] = p[field]
            mask[p["iy"], p["ix"]] = False
    return np.ma.masked_array(values, mask)


def best_point(document: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The evaluated grid point of the largest K (None if there is none)."""
    ok = [p for p in document["points"] if p["status"] == "ok"]
    return max(ok, key=lambda p: (p["K"], -p["iy"], -p["ix"])) if ok else None


def summarise(document: Dict[str, Any], path: Path, evaluated: int = 0, masked_now: int = 0,
              seconds: float = 0.0, runner: str = "") -> Dict[str, Any]:
    """What ``scan`` returns (and the command prints)."""
    statuses = [p["status"] for p in document["points"]]
    best = best_point(document)
    evaluated_hiscore = document["hiscore"]["evaluated"] or {}
    x, y = document["x"], document["y"]
    return {"file": str(path), "run": document["run"], "rank": document["rank"],
            "x": x["parameter"], "y": y["parameter"], "x_kind": x["kind"], "y_kind": y["kind"],
            "points": [len(x["values"]), len(y["values"])],
            "x_range": [min(x["values"]), max(x["values"])],
            "y_range": [min(y["values"]), max(y["values"])],
            "evaluated_now": evaluated, "masked_now": masked_now,
            "done_before": len(statuses) - evaluated - masked_now,
            "ok": statuses.count("ok"), "masked": statuses.count("masked"),
            "failed": statuses.count("failed"), "complete": document["complete"],
            "seconds": round(seconds, 2), "seconds_total": document["seconds"], "runner": runner,
            "hiscore": {"K": document["hiscore"]["K"], "K_evaluated": evaluated_hiscore.get("K"),
                        "walker": document["hiscore"].get("walker"),
                        "step": document["hiscore"].get("step"),
                        "x": x["hiscore_value"], "y": y["hiscore_value"]},
            "best": None if best is None else {k: best.get(k) for k in
                                               ("K", "TL", "mu_hat", "r_max", "x", "y", "ix", "iy",
                                                "combination")},
            "r_limit": document["settings"]["r_limit"]}


def format_value(kind: str, value: float) -> str:
    """A value of a parameter of ``kind`` (``Axis.kind``) for text: a mass in GeV, a
    multiplier bare."""
    return f"{value:.0f} GeV" if kind == "mass" else f"{value:.3g}"


def format_summary(summary: Dict[str, Any]) -> str:
    """The scan's summary (``summarise``) as text."""
    def x_value(value: float) -> str:
        return format_value(summary["x_kind"], value)

    def y_value(value: float) -> str:
        return format_value(summary["y_kind"], value)

    def at(x: float, y: float) -> str:
        return f"{summary['x']} {x_value(x)}, {summary['y']} {y_value(y)}"

    h, best = summary["hiscore"], summary["best"]
    nx, ny = summary["points"]
    lines = [f"scan of rank {summary['rank']} of {summary['run']} (walker {h['walker']}, step "
             f"{h['step']}): {summary['x']} x {summary['y']}, {nx} x {ny} points",
             f"  {summary['x']} {x_value(summary['x_range'][0])} to "
             f"{x_value(summary['x_range'][1])}; {summary['y']} "
             f"{y_value(summary['y_range'][0])} to {y_value(summary['y_range'][1])}",
             f"  {summary['evaluated_now']} points evaluated now, {summary['done_before']} done "
             f"before; {summary['ok']} evaluated, {summary['masked']} masked (break a "
             f"model-space rule), {summary['failed']} failed"
             + ("" if summary["complete"] else "; INCOMPLETE: run again to continue"),
             f"  time: {summary['seconds']:.1f} s ({summary['runner']}); all runs of this scan "
             f"{summary['seconds_total']:.1f} s",
             f"  hiscore: K {h['K']:.3f} at {at(h['x'], h['y'])}"
             + ("" if h["K_evaluated"] is None else f" (re-evaluated: {h['K_evaluated']:.3f})")]
    if best is None:
        lines.append("  grid maximum: none (no point evaluated)")
    else:
        gain = best["K"] - h["K"]
        r_max = "not finite" if best["r_max"] is None else f"{best['r_max']:.3g}"
        mu_hat = "-" if best["mu_hat"] is None else f"{best['mu_hat']:.3g}"
        lines.append(f"  grid maximum: K {best['K']:.3f} at {at(best['x'], best['y'])} "
                     f"({gain:+.3f} vs the hiscore; r_max {r_max}, mu_hat {mu_hat})")
    lines.append(f"  scan file: {summary['file']}")
    return "\n".join(lines) + "\n"


def plot_scan(document: Dict[str, Any], path: Path) -> "Figure":
    """The K map of a scan (a ``read_scan`` document) as a PNG at ``path``: filled K
    contours over the evaluated points (masked points hatched, failed ones crossed), the line
    r_max = r_limit, the hiscore's point (star) and the grid's best point (ring).
    Points not evaluated yet (a scan in progress) stay blank; points whose r_max is not
    finite (null) are left out of the r_max line.  Returns the figure; ``ProtomodelsError``
    without matplotlib (naming the extra) or when ``path`` cannot be written
    (``plots.save_figure``: written atomically, as the format its suffix names)."""
    from .plots import figure, require_matplotlib, save_figure

    require_matplotlib()  # before importing from matplotlib: the one-line error
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    xa, ya = document["x"], document["y"]
    xs, ys = np.array(xa["values"]), np.array(ya["values"])
    k = _grid(document, "K")
    r = _grid(document, "r_max")
    r_limit = document["settings"]["r_limit"]
    fig = figure(7.2, 5.6)
    ax = fig.add_subplot()
    handles: List[Any] = []
    if k.count() >= 1:
        from matplotlib.ticker import MaxNLocator

        lo, hi = float(k.min()), float(k.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        levels = MaxNLocator(nbins=16).tick_values(lo, hi)
        filled = ax.contourf(xs, ys, k, levels=levels, cmap="viridis")
        fig.colorbar(filled, ax=ax, label="K")
    invalid = np.zeros(k.shape, dtype=bool)
    for p in document["points"]:
        invalid[p["iy"], p["ix"]] = p["status"] == "masked"
    if invalid.any():
        ax.contourf(xs, ys, invalid.astype(float), levels=[0.5, 1.5], colors="none",
                    hatches=["////"])
        ax.plot(xs[np.nonzero(invalid)[1]], ys[np.nonzero(invalid)[0]], marker=".",
                markersize=2, color="0.4", linestyle="none")
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="////",
                             label="breaks a model-space rule (not evaluated)"))
    failed = [p for p in document["points"] if p["status"] == "failed"]
    if failed:
        ax.plot([p["x"] for p in failed], [p["y"] for p in failed], marker="x", color="tab:red",
                linestyle="none")
        handles.append(Line2D([], [], marker="x", color="tab:red", linestyle="none",
                              label="evaluation failed"))
    if r.count() >= 4 and r.min() < r_limit < r.max():
        ax.contour(xs, ys, r, levels=[r_limit], colors="tab:red", linewidths=1.8,
                   linestyles="--")
        handles.append(Line2D([], [], color="tab:red", linestyle="--",
                              label=f"r_max = r_limit ({r_limit:g}) at the hiscore's multipliers"))
    elif r.count():
        side = "below" if r.max() < r_limit else "above"
        handles.append(Line2D([], [], linestyle="none",
                              label=f"r_max {side} r_limit ({r_limit:g}) everywhere "
                                    f"({r.min():.2g}-{r.max():.2g})"))
    h = document["hiscore"]
    ax.plot(xa["hiscore_value"], ya["hiscore_value"], marker="*", markersize=16, color="white",
            markeredgecolor="black", linestyle="none")
    handles.append(Line2D([], [], marker="*", markersize=12, color="white",
                          markeredgecolor="black", linestyle="none",
                          label=f"hiscore: K = {h['K']:.2f}"))
    best = best_point(document)
    if best is not None:
        ring = dict(marker="o", markersize=20, markerfacecolor="none", markeredgewidth=2.2,
                    color="magenta", linestyle="none")
        ax.plot(best["x"], best["y"], **ring)
        handles.append(Line2D([], [], **{**ring, "markersize": 12},
                              label=f"grid maximum: K = {best['K']:.2f}"))
    for axis, setter in ((xa, ax.set_xscale), (ya, ax.set_yscale)):
        if axis["scale"] == "log":
            setter("log")
    ax.set_xlabel(Axis.from_json(xa).title)
    ax.set_ylabel(Axis.from_json(ya).title)
    ax.set_xlim(xs.min(), xs.max())
    ax.set_ylim(ys.min(), ys.max())
    ax.set_title(f"{Path(document['run']).name}, rank {document['rank']}: K of the best fit",
                 fontsize=10)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
              fontsize="small", frameon=False)
    fig.tight_layout()
    save_figure(fig, Path(path))
    return fig


def default_plot_path(scan_file: Path) -> Path:
    """Where the command draws a scan by default: next to its file, as .png."""
    return Path(scan_file).with_suffix(".png")


__all__: Sequence[str] = ("Axis", "scan", "read_scan", "plot_scan", "format_summary",
                          "format_value", "make_axis", "parse_parameter", "parse_points",
                          "parse_range", "grid_model", "point_record", "best_point",
                          "default_plot_path")
