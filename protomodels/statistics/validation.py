"""``protomodels database simplify [--validate]``: build the simplified workspaces, and
check them against ATLAS' own and against the full likelihoods on real signals.

Two checks (SPEC section 9, ATL-PHYS-PUB-2021-038):

1. Reproduction.  For the results that ship both ATLAS' full and ATLAS' simplified
   workspace (ATLAS-SUSY-2018-31, -2019-09, -2018-05-ewk), our builder run on ATLAS' full
   workspace is compared bin by bin (matched by channel name) with ATLAS' simplified one:
   the ratio of the background yields and of their uncertainties.
2. Validity on signals.  For every simplified workspace in use (ours and ATLAS') and its
   full counterpart, signals spread over the signal regions are the result's own
   efficiency maps at their grid points (every txname of the result, grid points taken
   evenly along each map, the signal normalised to 10 events in total: the ratios below
   do not depend on that normalisation).  Each signal is evaluated on both workspaces with
   SModelS' own pyhf interface: the observed and expected upper limits on mu and the test
   statistic K uses, t = 2 [nll(0) - nll(mu_hat)] with mu_hat >= 0.  With ``--backend
   jax`` the full workspace is evaluated by ``fixed_signal.SignalAsParameters`` instead:
   the same likelihood, limits and root search, with the signal as fixed parameters so
   the fits compile once per workspace (SModelS' interface builds a new model, hence a
   new compilation, at every call).

A full workspace's limits take minutes to hours per signal, so each signal's outcome is
kept in the database cache (``<cache>/simplified/validation/``, one JSON line per signal,
keyed by both workspaces' content, the signal, the backend and the pyhf version): an
interrupted or extended validation (more ``--signals``) computes only what is missing.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import simplified
from ..atomic import append_keyed_line, read_keyed_lines
from ..schemas import schema_id
from .workspaces import ATLAS_SIMPLIFIED, OUR_SIMPLIFIED, file_map

logger = logging.getLogger(__name__)

SCHEMA = schema_id("simplify")
SIGNAL_EVENTS = 10.0  # total signal of each validation signal, all regions together
COSTLY_FIT_SECONDS = 10.0  # full workspaces slower than this get ``costly_signals`` signals


def simplify_database(database_path: Optional[str] = None) -> Dict[str, Any]:
    """Build every missing simplified workspace (cached) and list, per pyhf result, the
    workspaces each likelihood uses.  Raises ``DatabaseError`` as ``load_database``."""
    from ..loader import load_database

    t0 = time.perf_counter()
    db = load_database(database_path, "simplified")
    seconds = time.perf_counter() - t0
    rows = []
    for name, chosen in sorted(db.likelihoods.items()):
        for file_name, kind, provenance in zip(chosen.files, chosen.kinds,
                                               chosen.provenance or [None] * len(chosen.files)):
            row: Dict[str, Any] = {"analysis": name, "file": file_name, "kind": kind,
                                   "note": chosen.note}
            if provenance:
                row.update({"source": Path(provenance["source"]).name,
                            "source_sha256": provenance["source_sha256"],
                            "parameters": provenance["fit"]["parameters"],
                            "bins": provenance["bins"],
                            "fit_seconds": provenance["fit"]["seconds"],
                            "build_seconds": provenance["seconds"],
                            "created": provenance["created"]})
            rows.append(row)
    return {"schema": SCHEMA, "database": db.path, "seconds": round(seconds, 1),
            "workspaces": rows}


# ---------------------------------------------------------------- 1. reproduction

def _per_bin(workspace: Dict[str, Any]) -> Dict[Tuple[str, int], Tuple[float, float]]:
    """(channel, bin) -> (background yield, symmetrised uncertainty) of a simplified
    workspace in ATLAS' layout."""
    out = {}
    for channel in workspace["channels"]:
        sample = channel["samples"][0]
        modifier = next(m for m in sample["modifiers"] if m["type"] == "histosys")
        hi, lo = np.asarray(modifier["data"]["hi_data"]), np.asarray(modifier["data"]["lo_data"])
        for index, value in enumerate(sample["data"]):
            out[(channel["name"], index)] = (float(value), float(hi[index] - lo[index]) / 2.0)
    return out


def reproduction(db) -> List[Dict[str, Any]]:
    """Check 1 (module docstring) for every result with both ATLAS workspaces."""
    rows = []
    for expresult in sorted(db.smodels.expResultList, key=lambda e: e.globalInfo.id):
        info = expresult.globalInfo
        if not (hasattr(info, "jsonFiles_FullLikelihood") and hasattr(info, "jsonFiles")):
            continue
        folder = Path(info.path).parent
        default_files = list(getattr(info, "_protomodels_default_workspaces", (info.jsonFiles,))[0])
        for full_name, atlas_name in zip(file_map(info.jsonFiles_FullLikelihood), default_files):
            full_path, atlas_path = folder / full_name, folder / atlas_name
            if not full_path.is_file():
                continue
            if not simplified.is_full(json.loads(full_path.read_text())):
                continue
            t0 = time.perf_counter()
            ours = _per_bin(simplified.cached(full_path, analysis=info.id)["workspace"])
            theirs = _per_bin(json.loads(atlas_path.read_text()))
            common = sorted(set(ours) & set(theirs))
            yields = np.array([ours[k][0] / theirs[k][0] for k in common])
            errors = np.array([ours[k][1] / theirs[k][1] for k in common])
            worst = max(common, key=lambda k: abs(ours[k][1] / theirs[k][1] - 1.0))
            rows.append({
                "analysis": info.id, "full": full_name, "atlas_simplified": atlas_name,
                "bins": len(common), "bins_only_one_side": len(set(ours) ^ set(theirs)),
                "yield_ratio": _summary(yields), "uncertainty_ratio": _summary(errors),
                "yields_within_1pct": float(np.mean(np.abs(yields - 1) <= 0.01)),
                "uncertainties_within_25pct": float(np.mean(np.abs(errors - 1) <= 0.25)),
                "worst_uncertainty_bin": {"channel": worst[0], "bin": worst[1],
                                          "ours": ours[worst], "atlas": theirs[worst]},
                "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def _summary(values: np.ndarray) -> Dict[str, float]:
    return {"min": float(np.min(values)), "median": float(np.median(values)),
            "max": float(np.max(values))}


# ---------------------------------------------------------------- 2. validity on signals

def validation_signals(expresult, regions: Sequence[str], count: int,
                       seed: int = 0) -> List[Dict[str, float]]:
    """``count`` signals (region -> events, SIGNAL_EVENTS in total) from the result's
    efficiency maps at grid points, spread evenly over its txnames and their grids."""
    from ..fakedb import grid_coordinates

    by_region = {ds.getID(): ds for ds in expresult.datasets}
    txnames = sorted({tx.txName for region in regions if region in by_region
                      for tx in by_region[region].txnameList})
    candidates: List[Dict[str, float]] = []
    for txname in txnames:
        maps = [(region, tx) for region in regions if region in by_region
                for tx in by_region[region].txnameList if tx.txName == txname]
        reference = max(maps, key=lambda m: len(m[1].txnameData.y_values))[1].txnameData
        coordinates = grid_coordinates(reference)
        points = [reference.inversePCAtransf(list(c)) for c in coordinates]
        for point in points:
            signal = {}
            for region, tx in maps:
                try:
                    value = tx.txnameData.getValueFor(point)
                except Exception:  # outside a map's domain
                    value = None
                if value:
                    signal[region] = signal.get(region, 0.0) + float(value)
            total = sum(signal.values())
            if total > 0:
                candidates.append({r: SIGNAL_EVENTS * v / total for r, v in signal.items()})
    if not candidates:
        return []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))
    # in the permutation's order: asking for more signals extends the list, so an
    # extended or interrupted validation reuses every signal already computed
    return [candidates[i] for i in order[:count]]


def stitching_optimizer():
    """pyhf's scipy optimizer (SLSQP, its default) whose fits leave the fixed parameters
    out of the minimisation (pyhf's ``do_stitch``) instead of imposing them as equality
    constraints, also where pyhf calls the fit itself (``pyhf.infer.hypotest``, which
    passes no fit options on).  Same likelihood and minimiser: with the signal as ~45
    fixed parameters (``fixed_signal``), ATLAS-SUSY-2018-16's EWKinos workspace (217
    parameters) takes 11-13 s for four fixed-mu fits instead of 72-126 s, with the
    same -2 ln L to 2e-7 (jax backend, measured on five training signals)."""
    global _STITCHING
    if _STITCHING is None:
        import pyhf

        class StitchingScipyOptimizer(pyhf.optimize.scipy_optimizer):
            def minimize(self, *args, do_stitch: bool = True, **kwargs):
                return super().minimize(*args, do_stitch=do_stitch, **kwargs)

        _STITCHING = StitchingScipyOptimizer
    return _STITCHING()


_STITCHING = None  # the optimizer class, defined on first use (pyhf imported lazily)


@contextlib.contextmanager
def pyhf_backend(name: str) -> Iterator[None]:
    """pyhf's backend for SModelS' pyhf interface inside the block ("numpy" or "jax":
    exact gradients, 20-40x faster fits of the large workspaces, fixed parameters left
    out of the fits (``stitching_optimizer``); never before a fork)."""
    import pyhf

    from ..exceptions import WorkspaceError

    previous = pyhf.get_backend()
    if name == "jax":
        try:
            import jax  # noqa: F401
        except ImportError:
            raise WorkspaceError("--backend jax: jax is not installed "
                                 "(pip install 'protomodels[jax]')") from None
        pyhf.set_backend("jax", stitching_optimizer())
    try:
        yield
    finally:
        pyhf.set_backend(*previous)


def workspace_computer(info, file_name: str, workspace: Dict[str, Any],
                       regions: List[Dict[str, Any]], signal: Dict[str, float]):
    """SModelS' pyhf computer (``PyhfUpperLimitComputer``) of ``signal`` (region -> events)
    on one workspace alone, with the result's includeCRs and signal uncertainty."""
    from smodels.statistics.pyhfInterface import PyhfData, PyhfUpperLimitComputer

    include_crs = bool(getattr(info, "includeCRs", False))
    nsig = {r["smodels"]: float(signal.get(r["smodels"], 0.0)) for r in regions
            if r.get("smodels") and (include_crs or r.get("type", "SR") == "SR")}
    data = PyhfData({file_name: nsig}, [workspace], {file_name: copy.deepcopy(regions)},
                    include_crs, getattr(info, "signalUncertainty", None))
    return PyhfUpperLimitComputer(data, cl=0.95)


def one_fit_seconds(info, file_name: str, workspace: Dict[str, Any],
                    regions: List[Dict[str, Any]], signal: Dict[str, float]) -> float:
    """Seconds of one fixed-mu fit of ``signal`` on a workspace."""
    computer = workspace_computer(info, file_name, workspace, regions, signal)
    t0 = time.perf_counter()
    computer.likelihood(1.0, workspace_index=0, return_nll=True)
    return time.perf_counter() - t0


def evaluate_signal(info, file_name: str, workspace: Dict[str, Any],
                    regions: List[Dict[str, Any]], signal: Dict[str, float]) -> Dict[str, Any]:
    """Observed and expected UL on mu and t = 2[nll(0) - nll(mu_hat >= 0)] of ``signal``
    (region -> events) on one workspace, with SModelS' pyhf interface."""
    from smodels.statistics.basicStats import apriori, observed

    computer = workspace_computer(info, file_name, workspace, regions, signal)
    t0 = time.perf_counter()
    ul_obs = computer.getUpperLimitOnMu(observed, workspace_index=0)
    ul_exp = computer.getUpperLimitOnMu(apriori, workspace_index=0)
    fit = computer.lmax(workspace_index=0, return_nll=True, allowNegativeSignals=False)
    nll_max = None if fit is None else fit.get("nll_min")
    nll_0 = computer.likelihood(0.0, workspace_index=0, return_nll=True)
    return {"ul_obs": ul_obs, "ul_exp": ul_exp,
            "mu_hat": None if fit is None else fit.get("muhat"),
            "t": None if nll_max is None or nll_0 is None else 2.0 * (nll_0 - nll_max),
            "seconds": round(time.perf_counter() - t0, 2)}


#: Bumped whenever the evaluation of a validation signal changes: older records are not used.
RECORD_VERSION = 2  # 2: the two sides recorded apart


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def inputs_digest(info, workspace: Dict[str, Any], regions: List[Dict[str, Any]]) -> str:
    """What a workspace's evaluations depend on besides the signal: the workspace, its
    region-to-channel mapping, includeCRs and the signal uncertainty."""
    return _digest({"workspace": workspace, "regions": regions,
                    "includeCRs": bool(getattr(info, "includeCRs", False)),
                    "signalUncertainty": getattr(info, "signalUncertainty", None)})


def signal_key(analysis: str, inputs: str, signal: Dict[str, float], evaluator: str) -> str:
    """What one side's outcome for a validation signal depends on, as a sha256 hex digest:
    that workspace's inputs (``inputs_digest``), the signal, the evaluator (SModelS' pyhf
    interface with numpy, or ``fixed_signal`` with jax), the pyhf and SModelS versions and
    ``RECORD_VERSION``.  The two sides are keyed apart, so that a rebuilt simplified
    workspace reuses the full workspace's (costly) outcomes."""
    import pyhf
    from smodels import installation

    return _digest({"analysis": analysis, "inputs": inputs, "signal": signal,
                    "evaluator": evaluator, "pyhf": pyhf.__version__,
                    "smodels": installation.version(), "record": RECORD_VERSION})


_FULL_EVALUATORS: Dict[Tuple[str, str], Any] = {}


def full_evaluator(info, file_name: str, workspace: Dict[str, Any],
                   regions: List[Dict[str, Any]]):
    """The full workspace with its signal as fixed parameters (``fixed_signal``), built once
    per file and process: with jax, its fits compile once for every signal."""
    from .fixed_signal import SignalAsParameters

    key = (info.id, file_name)
    if key not in _FULL_EVALUATORS:
        _FULL_EVALUATORS.clear()  # one full workspace at a time: each holds compiled fits
        if "jax" in sys.modules:
            sys.modules["jax"].clear_caches()  # which reference the models they were built for
        _FULL_EVALUATORS[key] = SignalAsParameters(info, file_name, workspace, regions)
    return _FULL_EVALUATORS[key]


def _record_file(analysis: str, file_name: str) -> Path:
    """Where a full workspace's validation outcomes (both sides) are kept."""
    from ..database import cache_dir

    return cache_dir() / "simplified" / "validation" / f"{analysis}-{Path(file_name).stem}.jsonl"


def _evaluate_both(info, name: str, simple_ws, regions, full_info, full_name: str, full_ws,
                   full_regions, signal: Dict[str, float], backend: str,
                   records: Dict[str, Dict[str, Any]], record_file: Path,
                   digests: Tuple[str, str]) -> Dict[str, Any]:
    """One signal on the simplified and the full workspace, each side from its record if
    present (``digests``: both workspaces' ``inputs_digest``, computed once per file)."""
    full_evaluator_name = "fixed_signal/1 jax" if backend == "jax" else f"smodels {backend}"
    keys = {"simplified": signal_key(info.id, digests[0], signal, "smodels numpy"),
            "full": signal_key(info.id, digests[1], signal, full_evaluator_name)}
    outcome = {}
    for side, key in keys.items():
        if key in records:
            outcome[side] = records[key]["outcome"]
            continue
        if side == "simplified":
            value = evaluate_signal(info, name, simple_ws, regions, signal)
        else:
            with pyhf_backend(backend):
                if backend == "jax":
                    value = full_evaluator(full_info, full_name, full_ws,
                                           full_regions).evaluate(signal)
                else:
                    value = evaluate_signal(full_info, full_name, full_ws, full_regions, signal)
        record = {"key": key, "side": side, "outcome": _plain(value)}
        append_keyed_line(record_file, record)
        records[key] = record
        outcome[side] = record["outcome"]
    return outcome


def _plain(outcome: Dict[str, Any]) -> Dict[str, Any]:
    """JSON-ready numbers (numpy and jax scalars as floats)."""
    return {k: (None if v is None else float(v)) for k, v in outcome.items()}


def validity(db_simplified, db_full, signals: int, costly_signals: int,
             patterns: Sequence[str], backend: str = "numpy") -> List[Dict[str, Any]]:
    """Check 2 (module docstring): per simplified workspace in use, its signals' limits and
    test statistics on it and on the full workspace."""
    rows = []
    full_results = {er.globalInfo.id: er for er in db_full.smodels.expResultList
                    if hasattr(er.globalInfo, "jsonFiles")}
    for expresult in sorted(db_simplified.smodels.expResultList, key=lambda e: e.globalInfo.id):
        info = expresult.globalInfo
        chosen = db_simplified.likelihoods.get(info.id)
        full_chosen = db_full.likelihoods.get(info.id)
        if chosen is None or full_chosen is None or not hasattr(info, "jsonFiles"):
            continue
        full_info = full_results[info.id].globalInfo
        for index, (name, kind) in enumerate(zip(chosen.files, chosen.kinds)):
            if kind not in (OUR_SIMPLIFIED, ATLAS_SIMPLIFIED) or index >= len(full_chosen.files):
                continue
            if full_chosen.kinds[index] != "full":
                continue
            full_name = full_chosen.files[index]
            if not any(_selects(p, info.id, (name, full_name)) for p in patterns):
                continue
            regions = info.jsonFiles[name]
            full_regions = full_info.jsonFiles[full_name]
            srs = [r["smodels"] for r in regions if r.get("smodels") and r.get("type", "SR") == "SR"]
            with pyhf_backend(backend):
                fit_seconds = one_fit_seconds(full_info, full_name, full_info.jsons[index],
                                              full_regions, {r: SIGNAL_EVENTS / len(srs) for r in srs})
            costly = fit_seconds > COSTLY_FIT_SECONDS
            wanted = costly_signals if costly else signals
            table = []
            record_file = _record_file(info.id, full_name)  # kept per full workspace
            records = read_keyed_lines(record_file)
            digests = (inputs_digest(info, info.jsons[index], regions),
                       inputs_digest(full_info, full_info.jsons[index], full_regions))
            for number, signal in enumerate(validation_signals(expresult, srs, wanted)):
                both = _evaluate_both(info, name, info.jsons[index], regions, full_info,
                                      full_name, full_info.jsons[index], full_regions, signal,
                                      backend, records, record_file, digests)
                simple, full = both["simplified"], both["full"]
                table.append({"signal": number, "regions": {r: round(v, 4) for r, v in signal.items()},
                              "simplified": simple, "full": full,
                              "ul_obs_ratio": _ratio(simple["ul_obs"], full["ul_obs"]),
                              "ul_exp_ratio": _ratio(simple["ul_exp"], full["ul_exp"]),
                              "t_difference": (None if simple["t"] is None or full["t"] is None
                                               else simple["t"] - full["t"])})
                logger.info("%s %s signal %d: UL obs %.3g/%.3g, exp %.3g/%.3g, t %.3g/%.3g",
                            info.id, name, number, simple["ul_obs"] or 0, full["ul_obs"] or 0,
                            simple["ul_exp"] or 0, full["ul_exp"] or 0, simple["t"] or 0,
                            full["t"] or 0)
            rows.append({"analysis": info.id, "simplified": name, "kind": kind,
                         "full": full_name, "costly": costly, "backend": backend,
                         "full_fit_seconds": round(fit_seconds, 2),
                         "signals": table, **_validity_summary(table)})
    return rows


def _selects(pattern: str, analysis: str, files: Sequence[str]) -> bool:
    """Does ``pattern`` ('ANALYSIS' or 'ANALYSIS/FILE', shell patterns) select a workspace
    of ``analysis`` named ``files`` (its simplified and full file)?"""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(analysis, pattern)
    return any(fnmatch.fnmatchcase(f"{analysis}/{name}", pattern) for name in files)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if not a or not b else float(a) / float(b)


def _validity_summary(table: List[Dict[str, Any]]) -> Dict[str, Any]:
    def share(values: List[Optional[float]], test) -> Optional[float]:
        known = [v for v in values if v is not None]
        return None if not known else float(np.mean([test(v) for v in known]))

    in_band = lambda r: 0.8 <= r <= 1.25  # noqa: E731
    return {"n": len(table),
            "ul_obs_in_band": share([r["ul_obs_ratio"] for r in table], in_band),
            "ul_exp_in_band": share([r["ul_exp_ratio"] for r in table], in_band),
            "t_within_0.5": share([r["t_difference"] for r in table], lambda d: abs(d) <= 0.5)}


def validate(database_path: Optional[str] = None, signals: int = 20, costly_signals: int = 5,
             patterns: Sequence[str] = ("*",), backend: str = "numpy") -> Dict[str, Any]:
    """Both checks (module docstring) on the database at ``database_path``."""
    from ..loader import load_database

    db_simplified = load_database(database_path, "simplified")
    db_full = load_database(database_path, "full")
    t0 = time.perf_counter()
    report = {"reproduction": reproduction(db_simplified)}
    report["validity"] = validity(db_simplified, db_full, signals, costly_signals, patterns,
                                  backend)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def format_report(report: Dict[str, Any]) -> str:
    def pct(x: Optional[float]) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    lines = [f"pyhf workspaces of {report['database']} (simplified likelihood, {report['seconds']} s):",
             f"  {'analysis':<28} {'file':<36} {'what':<26} {'params':>6} {'bins':>5} {'fit s':>6}"]
    for row in report["workspaces"]:
        lines.append(f"  {row['analysis']:<28} {row['file']:<36} {row['kind']:<26} "
                     f"{row.get('parameters', ''):>6} {row.get('bins', ''):>5} "
                     f"{row.get('fit_seconds', ''):>6}" + (f"  ({row['note']})" if row["note"] else ""))
    validation = report.get("validation")
    if validation:
        lines += ["", "reproduction of ATLAS' simplified workspaces (ours / ATLAS', per bin):",
                  f"  {'analysis':<24} {'full file':<24} {'bins':>4} {'yield ratio min/med/max':>26} "
                  f"{'unc. ratio min/med/max':>24} {'y<1%':>5} {'u<25%':>6}"]
        for row in validation["reproduction"]:
            y, u = row["yield_ratio"], row["uncertainty_ratio"]
            lines.append(f"  {row['analysis']:<24} {row['full']:<24} {row['bins']:>4} "
                         f"{y['min']:>8.4f} {y['median']:>8.4f} {y['max']:>8.4f} "
                         f"{u['min']:>7.3f} {u['median']:>7.3f} {u['max']:>7.3f} "
                         f"{pct(row['yields_within_1pct']):>5} {pct(row['uncertainties_within_25pct']):>6}")
        lines += ["", "simplified vs full on signals (share of signals within the band):",
                  f"  {'analysis':<24} {'simplified file':<32} {'n':>3} {'UL obs in [0.8,1.25]':>21} "
                  f"{'UL exp':>7} {'|dt|<=0.5':>10}"]
        for row in validation["validity"]:
            lines.append(f"  {row['analysis']:<24} {row['simplified']:<32} {row['n']:>3} "
                         f"{pct(row['ul_obs_in_band']):>21} {pct(row['ul_exp_in_band']):>7} "
                         f"{pct(row['t_within_0.5']):>10}")
    return "\n".join(lines) + "\n"
