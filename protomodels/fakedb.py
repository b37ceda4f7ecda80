"""Fake Standard-Model databases, with or without an injected signal (SPEC section 8).

A fake database is a folder holding one file, ``fakedb.json`` (schema
``protomodels.fakedb/1``): the seed, the base database (source, version, sha256), the
injected model if any, and every redrawn value.  Loading it (``--database FOLDER``)
loads the base database from its cache and replays the recorded values onto it, so
generating a fake takes seconds instead of a text-database rebuild, and the record
alone says exactly what differs from the real data.

Background sampling (``noise="poisson"``), per result, from its own background model:

- EM signal regions: b' ~ N(b, (f db)^2) clipped at 0, n_obs ~ Poisson(b'), with f the
  ``fudge`` factor (it scales the spread of the draws only; the statistical model the
  likelihoods use stays as published).  Regions of a covariance-combined result are
  drawn together, b' ~ N(b, f^2 V), so the combined likelihood sees correlated
  fluctuations.  Regions of a pyhf-combined result get one draw each as above, and the
  workspace's observation of that region is set to the same n_obs; its control regions
  keep their observed counts (they fix the background normalisation that b and db
  already are).
- The observed upper limit of an EM region follows its new count: the published limit
  times UL(n_fake) / UL(n_real), both computed by SModelS' simplified likelihood, so an
  unchanged count gives back the published number exactly.
- UL maps with an expected map: one x ~ N(0, 1) per map, UL_obs = UL_exp (1 + x/1.96)
  at every grid point, the factor floored at ``MIN_UL_FACTOR``.  Maps without an
  expected map are unchanged.

Injection adds a proto-model's signal as SModelS predicts it on the base database: EM
regions get n_obs += Poisson(s) (or s), s = sigma x eff x lumi; UL maps get the
predicted sigma x BR added to the observed limit at the grid points near the model's
masses (weight 1 at the vertices of the simplex holding the model's point, a Gaussian
of width ``INJECTION_WIDTH_GEV`` in mass distance elsewhere).  ``noise="fixed"`` draws
nothing: n_obs = b + s exactly (an Asimov database), x = 0.

Every random stream is ``default_rng([seed, crc32(result id)])``: a result's draws do
not depend on which other results exist or in which order they are visited.
"""

from __future__ import annotations

import copy
import datetime
import functools
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .atomic import read_json_record, write_json_atomic
from .exceptions import DatabaseError
from .schemas import schema_id
from .statistics.workspaces import DEFAULT_LIKELIHOOD, signal_region_bins, use_likelihood

logger = logging.getLogger(__name__)

SCHEMA = schema_id("fakedb")
RECORD = "fakedb.json"
NOISES = ("poisson", "fixed")
MIN_UL_FACTOR = 0.1
INJECTION_WIDTH_GEV = 50.0


def record_path(path: str | Path) -> Optional[Path]:
    """The ``fakedb.json`` that ``path`` names (the file or its folder), else None."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / RECORD).is_file():
        return path / RECORD
    if path.is_file() and path.name == RECORD:
        return path
    return None


# ---------------------------------------------------------------- drawing

def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _is_em(expresult) -> bool:
    return expresult.datasets[0].getType() == "efficiencyMap"


def draw_background(expresult, seed: int, fudge: float = 1.0,
                    noise: str = "poisson") -> Dict[str, Dict[str, float]]:
    """b' and the background count n_b of every signal region of one EM result."""
    rng = _rng(seed, f"{expresult.globalInfo.id}:em")
    datasets = {ds.getID(): ds for ds in expresult.datasets}
    info = expresult.globalInfo
    if hasattr(info, "covariance") and hasattr(info, "datasetOrder"):
        position = {name: i for i, name in enumerate(info.datasetOrder)}
        matrix = np.asarray(info.covariance, dtype=float)
        order = [d for d in info.datasetOrder if d in datasets]
        order += sorted(set(datasets) - set(order))
        b = np.array([float(datasets[d].dataInfo.expectedBG) for d in order])
        cov = np.diag([float(datasets[d].dataInfo.bgError) ** 2 for d in order])
        inside = [i for i, d in enumerate(order) if d in position]  # the rest: own error
        rows = [position[order[i]] for i in inside]
        cov[np.ix_(inside, inside)] = matrix[np.ix_(rows, rows)]
        drawn = (b if noise == "fixed"
                 else rng.multivariate_normal(b, fudge ** 2 * cov, method="eigh"))
        pairs = list(zip(order, b, np.sqrt(np.diag(cov)), drawn))
    else:
        pairs = []
        for d in sorted(datasets):
            info_d = datasets[d].dataInfo
            b, db = float(info_d.expectedBG), float(info_d.bgError)
            drawn = b if noise == "fixed" else rng.normal(b, fudge * db)
            pairs.append((d, b, db, drawn))
    draws = {}
    for d, b, db, drawn in pairs:
        drawn = max(float(drawn), 0.0)
        n_b = drawn if noise == "fixed" else int(rng.poisson(drawn))
        draws[d] = {"b": float(b), "db": float(db), "b_drawn": drawn, "n_background": n_b}
    return draws


def draw_ul_shift(expresult, txname, seed: int, noise: str = "poisson") -> Optional[float]:
    """x ~ N(0, 1) for a UL map with an expected map (None without one)."""
    if txname.txnameDataExp is None:
        return None
    if noise == "fixed":
        return 0.0
    return float(_rng(seed, f"{expresult.globalInfo.id}:ul:{txname.txName}").normal())


def ul_factor(x: Optional[float]) -> Optional[float]:
    return None if x is None else max(1.0 + x / 1.96, MIN_UL_FACTOR)


# ---------------------------------------------------------------- the injected signal

def signal_predictions(model_text: str, db) -> Tuple[Dict[Tuple[str, str], float], List[Dict[str, Any]]]:
    """SModelS' predictions of a model on every result: EM signal events per (analysis,
    region), and for UL maps the sigma x BR (fb) with the model's point in each map."""
    from smodels.base.physicsUnits import fb
    from smodels.matching import theoryPrediction as tp

    from .predictor import MAX_MASS_DIST, decompose

    _, top = decompose(model_text)
    sms_dict = db.expSMSDict
    sms_match = sms_dict.getMatchesFrom(top)
    events: Dict[Tuple[str, str], float] = {}
    ul_signals: List[Dict[str, Any]] = []
    for er in db.expResultList:
        lumi = er.globalInfo.lumi.asNumber(1 / fb)
        for dataset in er.datasets:
            preds = tp._getDataSetPredictions(dataset, sms_match, sms_dict, MAX_MASS_DIST) or []
            for pred in preds:
                xsec = pred.xsection.asNumber(fb)
                if _is_em(er):
                    key = (er.globalInfo.id, dataset.getID())
                    events[key] = events.get(key, 0.0) + xsec * lumi
                    continue
                for txname in pred.txnames:
                    ul_signals.append({"analysis": er.globalInfo.id, "txname": txname.txName,
                                       "sigma_fb": xsec,
                                       "point": [float(v) for v in txname.getDataFromSMS(pred.avgSMS)]})
    return events, ul_signals


def grid_coordinates(txnd) -> np.ndarray:
    """The map's grid points in its PCA coordinates, in the order of its y values."""
    tri = txnd.tri
    if txnd.dimensionality > 1:
        return np.asarray(tri.points, dtype=float)  # scipy keeps the input order
    # SModelS' 1-D "triangulation" keeps its points sorted; simplices index the y values.
    order = [int(s[1]) for s in tri.simplices] + [int(tri.simplices[-1][0])]
    coords = np.empty((len(order), 1))
    for position, index in enumerate(order):
        coords[index, 0] = float(np.ravel(tri.points[position])[0])
    return coords


def injection_weights(txnd, point: List[float]) -> np.ndarray:
    """Per grid point, the fraction of the signal added to the limit there."""
    coords = grid_coordinates(txnd)
    target = np.asarray(txnd.PCAtransf(point), dtype=float)[:txnd.dimensionality]
    distance = np.linalg.norm(coords - target, axis=1)
    weights = np.exp(-0.5 * (distance / INJECTION_WIDTH_GEV) ** 2)
    simplex = int(np.ravel(txnd.tri.find_simplex(np.atleast_2d(target)))[0]) \
        if txnd.dimensionality > 1 else -1
    if simplex >= 0:
        weights[np.asarray(txnd.tri.simplices[simplex], dtype=int)] = 1.0
    elif txnd.dimensionality == 1:
        for pair in txnd.tri.simplices:
            lo, hi = sorted(float(coords[int(i), 0]) for i in pair)
            if lo <= target[0] <= hi:
                weights[np.asarray(pair, dtype=int)] = 1.0
    return weights


# ---------------------------------------------------------------- generating

def generate(out: str | Path, seed: int, base: Optional[str] = None,
             inject: Optional[str | Path] = None, fudge: float = 1.0,
             noise: str = "poisson") -> Dict[str, Any]:
    """Draw a fake database from ``base`` (default: the shared database) into ``out``."""
    from . import database
    from .slha import read_slha

    out = Path(out)
    if (out / RECORD).exists():
        raise DatabaseError(f"{out / RECORD}: a fake database already exists there; "
                            "choose another --out")
    model_text = None
    if inject is not None:
        from .xsec import effective_xsecs
        from .slha import to_slha
        model = read_slha(inject)  # raises SLHAError naming the file and field
        model_text = to_slha(model, effective_xsecs(model))
    t0 = time.perf_counter()
    if base is not None and record_path(base) is not None:
        raise DatabaseError(f"{base}: a fake database cannot be the base of another")
    db = database.load(base)
    record = draw(db, seed, fudge=fudge, noise=noise, model_text=model_text,
                  model_file=None if inject is None else str(inject))
    record["seconds"] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RECORD, record)
    logger.info("fake database %s: %d signal regions, %d UL maps, %d pyhf regions in %.1f s",
                out, len(record["efficiency_maps"]), len(record["upper_limit_maps"]),
                len(record["pyhf"]), record["seconds"])
    return record


def draw(db, seed: int, fudge: float = 1.0, noise: str = "poisson",
         model_text: Optional[str] = None, model_file: Optional[str] = None) -> Dict[str, Any]:
    """The record of a fake database drawn from the loaded (real) database ``db``; ``db``
    itself is not changed."""
    from . import __version__, database

    if noise not in NOISES:
        raise DatabaseError(f"noise {noise!r}: expected one of {', '.join(NOISES)}")
    if not (fudge > 0 and np.isfinite(fudge)):
        raise DatabaseError(f"fudge {fudge!r}: expected a positive number")
    if db.fake:
        raise DatabaseError(f"{db.path}: a fake database cannot be the base of another")
    record: Dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protomodels_version": __version__,
        "smodels_version": database._smodels_version(),
        "seed": int(seed), "noise": noise, "fudge": float(fudge),
        "base": {"source": db.source, "path": db.path, "sha256": db.sha256,
                 "version": db.version},
        "injected": None,
    }
    events: Dict[Tuple[str, str], float] = {}
    ul_signals: List[Dict[str, Any]] = []
    if model_text is not None:
        events, ul_signals = signal_predictions(model_text, db.smodels)
        record["injected"] = {"file": model_file, "slha": model_text,
                              "signal_events": round(sum(events.values()), 6)}
    record["efficiency_maps"] = _draw_efficiency_maps(db.smodels, seed, fudge, noise, events)
    record["upper_limit_maps"] = _draw_ul_maps(db.smodels, seed, noise, ul_signals)
    record["pyhf"] = _pyhf_observations(db.smodels, record["efficiency_maps"])
    return record


def _draw_efficiency_maps(smodels_db, seed: int, fudge: float, noise: str,
                          events: Dict[Tuple[str, str], float]) -> List[Dict[str, Any]]:
    from smodels.base.physicsUnits import fb

    rows = []
    for er in sorted(smodels_db.expResultList, key=lambda e: e.globalInfo.id):
        if not _is_em(er):
            continue
        analysis = er.globalInfo.id
        draws = draw_background(er, seed, fudge, noise)
        signal_rng = _rng(seed, f"{analysis}:signal")
        lumi = er.globalInfo.lumi.asNumber(1 / fb)
        for ds in sorted(er.datasets, key=lambda d: d.getID()):
            info, row = ds.dataInfo, dict(draws[ds.getID()])
            s = events.get((analysis, ds.getID()), 0.0)
            n_s = s if noise == "fixed" else int(signal_rng.poisson(s))
            n_obs = row["n_background"] + n_s
            ul_real = info.upperLimit.asNumber(fb) if hasattr(info, "upperLimit") else None
            row.update({"analysis": analysis, "dataset": ds.getID(), "signal": s,
                        "n_signal": n_s, "n_obs": n_obs, "n_obs_real": _number(info.observedN),
                        "upper_limit_fb_real": ul_real,
                        "upper_limit_fb": fake_upper_limit(ul_real, n_obs, info, lumi)})
            rows.append(row)
    return rows


def _number(value) -> float | int:
    value = float(value)
    return int(value) if value.is_integer() else value


@functools.lru_cache(maxsize=100_000)
def upper_limit_events(n: float, b: float, db: float) -> Optional[float]:
    """95% CL upper limit on signal events of one region (SModelS' simplified likelihood,
    no signal uncertainty); a pure function, memoised across fakes."""
    from smodels.statistics.simplifiedLikelihoods import (Data, LikelihoodComputer,
                                                          UpperLimitComputer)
    data = Data(n, b, db ** 2, nsignal=[1.0], deltas_rel=0.0)
    try:
        return UpperLimitComputer(LikelihoodComputer(data)).getUpperLimitOnMu()
    except Exception as error:  # SModelS' root finding can fail on odd inputs
        logger.warning("upper limit for n=%s b=%s db=%s failed: %s", n, b, db, error)
        return None


def fake_upper_limit(ul_real: Optional[float], n_obs: float, info, lumi: float) -> Optional[float]:
    """The observed limit (fb) of a region whose count became ``n_obs``: the published one
    times UL(n_obs)/UL(n_real), so that an unchanged count keeps the published number."""
    if ul_real is None:
        return None
    b, db = float(info.expectedBG), float(info.bgError)
    new = upper_limit_events(float(n_obs), b, db)
    old = upper_limit_events(float(info.observedN), b, db)
    if new is None:
        return None
    return ul_real * new / old if old else new / lumi


def _draw_ul_maps(smodels_db, seed: int, noise: str,
                  ul_signals: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from smodels.base.physicsUnits import fb

    rows = []
    for er in sorted(smodels_db.expResultList, key=lambda e: e.globalInfo.id):
        if _is_em(er):
            continue
        for txname in sorted(er.datasets[0].txnameList, key=lambda t: t.txName):
            x = draw_ul_shift(er, txname, seed, noise)
            row: Dict[str, Any] = {"analysis": er.globalInfo.id, "txname": txname.txName,
                                   "x": x, "factor": ul_factor(x), "signal_points": []}
            source = txname.txnameData if x is None else txname.txnameDataExp
            added = np.zeros(len(source.y_values))
            for signal in ul_signals:
                if (signal["analysis"], signal["txname"]) != (row["analysis"], txname.txName):
                    continue
                sigma = (signal["sigma_fb"] * fb).asNumber(txname.y_unit)
                added += sigma * injection_weights(source, signal["point"])
            keep = np.nonzero(added > 1e-6 * max(added.max(initial=0.0), 1e-300))[0]
            row["signal_points"] = [[int(i), float(added[i])] for i in keep if added[i] > 0]
            rows.append(row)
    return rows


def _pyhf_observations(smodels_db, em_rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Where each pyhf signal region's observation goes in the workspaces in use, with
    its fake count.  The record keeps the channel for reference; ``apply`` resolves the
    region again in whichever workspaces are in use then (full or simplified)."""
    counts = {(r["analysis"], r["dataset"]): r["n_obs"] for r in em_rows}
    rows = []
    for er in sorted(smodels_db.expResultList, key=lambda e: e.globalInfo.id):
        info = er.globalInfo
        if not (hasattr(info, "jsonFiles") and hasattr(info, "jsons")):
            continue
        bins = signal_region_bins(info.jsonFiles, info.jsons,
                                  bool(getattr(info, "includeCRs", False)))
        for region, (index, name, channel, bin_index) in sorted(bins.items()):
            channels = {o["name"]: o for o in info.jsons[index]["observations"]}
            key = (info.id, region)
            if channel not in channels or key not in counts:
                raise DatabaseError(f"{info.id}: pyhf region {region} of {name} matches "
                                    "no channel or signal region")
            rows.append({"analysis": info.id, "workspace": index, "json": name,
                         "channel": channel, "bin": bin_index, "dataset": region,
                         "n_obs": counts[key],
                         "n_obs_real": _number(channels[channel]["data"][bin_index])})
    return rows


# ---------------------------------------------------------------- loading

def read_record(path: Path) -> Dict[str, Any]:
    """The record of a fake database, checked against its schema (``fakedb``): a
    ``DatabaseError`` naming the file and JSON path before any value reaches SModelS."""
    return read_json_record(path, SCHEMA, DatabaseError, "fake database record")


def load(path: str | Path, likelihood: str = DEFAULT_LIKELIHOOD):
    """Load the base database with the pyhf results' ``likelihood`` (see
    ``statistics.workspaces``) and replay the fake's recorded values onto it; the pyhf
    counts go into the workspaces in use.  Raises ``DatabaseError`` naming the record."""
    from . import database

    record_file = record_path(path)
    if record_file is None:
        raise DatabaseError(f"{path}: no {RECORD} there")
    record = read_record(record_file)
    base = record["base"]
    source = base.get("source")
    if not source or not Path(source).exists():
        logger.warning("%s: base database %s not found, using the default one", record_file, source)
        source = None
    db = database.load(source)
    if base.get("sha256") and db.sha256 != base["sha256"]:
        raise DatabaseError(f"{record_file}: field 'base.sha256' is {base['sha256'][:16]}..., but "
                            f"the base database {db.source} has {db.sha256[:16] or 'none'}...")
    use_likelihood(db, likelihood)
    apply(db.smodels, record, record_file)
    db.statistics.clear()
    db.fake = summary(record, record_file)
    db.path = db.source = str(record_file.parent)
    db.sha256 = database._sha256(record_file)
    return db


def summary(record: Dict[str, Any], record_file: Path) -> Dict[str, Any]:
    injected = record.get("injected") or {}
    return {"record": str(record_file), "seed": record["seed"], "noise": record["noise"],
            "fudge": record["fudge"], "injected": injected.get("file"),
            "base_sha256": record["base"].get("sha256")}


def apply(smodels_db, record: Dict[str, Any], where: Path | str = RECORD) -> None:
    """Set the recorded observations, limits and maps on a loaded SModelS database."""
    from smodels.base.physicsUnits import fb

    results = {(er.globalInfo.id, _is_em(er)): er for er in smodels_db.expResultList}

    def find(row: Dict[str, Any], what: str, em: bool = True):
        er = results.get((row.get("analysis"), em))
        if er is None:
            raise DatabaseError(f"{where}: {what} names analysis {row.get('analysis')!r}, "
                                "which the base database does not have")
        return er

    try:
        for row in record["efficiency_maps"]:
            er = find(row, "efficiency_maps")
            dataset = {d.getID(): d for d in er.datasets}.get(row["dataset"])
            if dataset is None:
                raise DatabaseError(f"{where}: efficiency_maps names region {row['dataset']!r} "
                                    f"of {row['analysis']}, which does not exist")
            info = dataset.dataInfo
            info.observedN = row["n_obs"]
            if row.get("upper_limit_fb") is not None:
                info.upperLimit = row["upper_limit_fb"] * fb
            elif hasattr(info, "upperLimit") and row.get("upper_limit_fb_real") is not None:
                del info.upperLimit  # a limit that could not be recomputed is not kept stale
        for row in record["upper_limit_maps"]:
            er = find(row, "upper_limit_maps", em=False)
            txname = {t.txName: t for t in er.datasets[0].txnameList}.get(row["txname"])
            if txname is None:
                raise DatabaseError(f"{where}: upper_limit_maps names map {row['txname']!r} of "
                                    f"{row['analysis']}, which does not exist")
            if row["factor"] is None and not row["signal_points"]:
                continue
            source = txname.txnameData if row["factor"] is None else txname.txnameDataExp
            values = np.array(source.y_values, dtype=float) * (row["factor"] or 1.0)
            for index, added in row["signal_points"]:
                values[int(index)] += float(added)
            fake = copy.copy(source)  # shares the triangulation; a new object, so no cached lookups
            fake.y_values = values
            fake._id = f"{source._id}:fake"
            txname.txnameData = fake
        bins: Dict[str, Dict[str, Tuple[int, str, str, int]]] = {}
        for row in record["pyhf"]:
            er = find(row, "pyhf")
            info = er.globalInfo
            if info.id not in bins:
                bins[info.id] = signal_region_bins(info.jsonFiles, info.jsons,
                                                   bool(getattr(info, "includeCRs", False)))
            where_to = bins[info.id].get(row["dataset"])
            if where_to is None:
                raise DatabaseError(f"{where}: pyhf names region {row['dataset']!r} of "
                                    f"{info.id}, which its workspaces do not have")
            index, _, channel_name, bin_index = where_to
            workspace = info.jsons[index]
            channel = next(o for o in workspace["observations"] if o["name"] == channel_name)
            channel["data"][bin_index] = row["n_obs"]
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as error:
        raise DatabaseError(f"{where}: malformed entry ({type(error).__name__}: {error})") from None
