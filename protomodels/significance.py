"""K for one proto-model: predictions -> critic -> combiner -> prior (SPEC sections 5, 6).

This is the public pipeline a notebook or the walker calls::

    db = protomodels.database.load()
    result = protomodels.significance.evaluate(model, db)
    result.K, result.combination
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .combiner import (EMPTY, CombinabilityMatrix, Combination, ResultKey, best_combination,
                       combinability_graph)
from .database import ExperimentalDatabase
from .model import LSP, ProtoModel, ssm_key
from .predictor import Prediction, Selection, predict, predict_slha_text
from .xsec import effective_xsecs

logger = logging.getLogger(__name__)

BR_TOLERANCE = 0.05  # BRs within 5% count once in the prior
SSM_TOLERANCE = 0.03  # multipliers within 3% count once
MIN_XSEC_FB = 0.001  # processes below this cross section have no multiplier to count


def _distinct(values: Sequence[float], tolerance: float) -> int:
    """Number of clusters of values, a value joining a cluster within ``tolerance`` (relative)."""
    count, start = 0, None
    for value in sorted(values):
        if start is None or value - start > tolerance * value:
            count, start = count + 1, value
    return count


def prior_terms(model: ProtoModel) -> Dict[str, int]:
    """N_p, N_BR, N_ssm of the paper's prior pi = exp(-(N_p/2 + N_BR/4 + N_ssm/8)).

    N_p counts the unfrozen particles other than the LSP: the LSP is always present, so
    counting it would only shift every K by -1, and the LSP-only model (the SM) keeps
    K = 0 as SPEC demands (the original code counts the same way).
    """
    n_particles = sum(1 for pid in model.masses if pid != LSP)
    n_brs = 0
    for pid, brs in model.decays.items():
        if pid == LSP or pid not in model.masses:
            continue
        nonzero = [br for br in brs.values() if br > 1e-9]
        n_brs += max(_distinct(nonzero, BR_TOLERANCE) - 1, 0)
    multipliers = {ssm_key(*pair): model.multiplier(pair)
                   for (_, pair), pb in effective_xsecs(model).items() if pb * 1000.0 > MIN_XSEC_FB}
    n_ssm = _distinct(list(multipliers.values()), SSM_TOLERANCE)
    return {"particles": n_particles, "brs": n_brs, "ssms": n_ssm}


def two_ln_prior(terms: Dict[str, int]) -> float:
    """2 ln pi(BSM) = -(N_p + N_BR/2 + N_ssm/4), the prior's contribution to K."""
    return 0.0 - (terms["particles"] + terms["brs"] / 2.0 + terms["ssms"] / 4.0)


def log_prior_term(model: ProtoModel) -> float:
    return two_ln_prior(prior_terms(model))


@dataclass
class Member:
    """A member of the best combination and its share of TL."""

    prediction: Prediction
    nll0: float
    nll_mu_hat: float

    @property
    def tl(self) -> float:
        return 2.0 * (self.nll0 - self.nll_mu_hat)


@dataclass
class Significance:
    """Everything ``protomodels significance`` reports for one model."""

    K: float
    TL: float
    log_prior: float
    prior_terms: Dict[str, int]
    mu_hat: float
    mu_max: float
    r_limit: float
    r_max: float
    combination: List[Member]
    predictions: List[Prediction]
    informative: int
    timings: Dict[str, float] = field(default_factory=dict)

    def top_r(self, n: int = 10) -> List[Prediction]:
        ranked = [p for p in self.predictions if p.r_obs is not None]
        return sorted(ranked, key=lambda p: -p.r_obs)[:n]


def critic(predictions: Sequence[Prediction], r_limit: float) -> tuple[float, float]:
    """(r_max, mu_max): the largest r_obs at mu = 1 and the signal strength it allows.

    Only the largest r matters, so the costly r of a combined result is computed only if
    one CLs test cannot show it to be below the largest r known so far; the result is
    the same as taking the maximum of all r."""
    known = [p for p in predictions if p.r_known]
    costly = sorted((p for p in predictions if not p.r_known), key=lambda p: -p.xsec_fb)
    r_max = max((p.r_obs for p in known if p.r_obs is not None), default=0.0)
    for p in costly:
        if r_max > 0 and p.r_below(r_max):
            continue
        if p.r_obs is not None:
            r_max = max(r_max, p.r_obs)
    mu_max = r_limit / r_max if r_max > 0 else math.inf
    return r_max, mu_max


def evaluate(model: ProtoModel, database: ExperimentalDatabase, r_limit: float = 1.0,
             selection: Optional[Selection] = None,
             matrix: Optional[CombinabilityMatrix] = None) -> Significance:
    """K, TL and the best combination of ``model`` against ``database``."""
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    predictions = predict(model, database, selection)
    timings["predictions"] = time.perf_counter() - t0
    return evaluate_predictions(model, predictions, r_limit, matrix, timings)


def evaluate_general(model, database: ExperimentalDatabase, r_limit: float = 1.0,
                     selection: Optional[Selection] = None,
                     matrix: Optional[CombinabilityMatrix] = None) -> Significance:
    """K of a ``general.GeneralModel`` (any SLHA file): SModelS on the file's own masses,
    widths, decays and cross sections, then the same critic, combiner and K; the prior
    counted by ``GeneralModel.prior_terms``.  PredictionError if SModelS cannot decompose
    the model."""
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    predictions: List[Prediction] = []
    if model.produced():
        predictions = predict_slha_text(model.smodels_text(), database, selection,
                                        model.smodels_particles())
    timings["predictions"] = time.perf_counter() - t0
    return evaluate_predictions(None, predictions, r_limit, matrix, timings,
                                terms=model.prior_terms())


def evaluate_predictions(model: Optional[ProtoModel], predictions: List[Prediction],
                         r_limit: float = 1.0, matrix: Optional[CombinabilityMatrix] = None,
                         timings: Optional[Dict[str, float]] = None,
                         terms: Optional[Dict[str, int]] = None) -> Significance:
    """Critic, combiner and K of ``predictions``; the prior from ``terms`` if given, else
    from the proto-model ``model`` (``prior_terms``)."""
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    r_max, mu_max = critic(predictions, r_limit)
    informative = [p for p in predictions if p.has_likelihood]
    nodes: List[Prediction] = []
    curves = []
    # Without any r, mu is unbounded; the scan then covers what any excess could want.
    scan_max = mu_max if math.isfinite(mu_max) else 1e3
    for p in informative:
        try:
            if not p.excess(scan_max):
                continue
            curves.append(p.curve(scan_max))
            nodes.append(p)
        except Exception as error:  # a broken likelihood drops one result, not the model
            logger.warning("%s (%s): likelihood failed (%s: %s); left out of the combination",
                           p.analysis_id, p.dataset_id, type(error).__name__, error)
    timings["likelihoods"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    matrix = matrix or default_matrix()
    keys = [ResultKey(p.analysis_id, p.experiment, p.sqrts) for p in nodes]
    graph = combinability_graph(keys, matrix)
    best: Combination = best_combination(curves, graph, scan_max) if nodes else EMPTY
    timings["combiner"] = time.perf_counter() - t1
    members = []
    for i in best.members:
        p = nodes[i]
        if p.data_type == "UL":
            nll0, nllmu = float(curves[i](0.0)), float(curves[i](best.mu_hat))
        else:  # report SModelS' exact values, not the interpolant
            nll0, nllmu = p.nll(0.0), p.nll(best.mu_hat)
        members.append(Member(p, nll0, nllmu))
    tl = sum(m.tl for m in members)
    terms = prior_terms(model) if terms is None else terms
    log_prior = two_ln_prior(terms)
    K = tl + log_prior
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    return Significance(K=K, TL=tl, log_prior=log_prior, prior_terms=terms,
                        mu_hat=best.mu_hat, mu_max=mu_max, r_limit=r_limit, r_max=r_max,
                        combination=members, predictions=predictions,
                        informative=len(informative), timings=timings)


_MATRIX: Optional[CombinabilityMatrix] = None


def default_matrix() -> CombinabilityMatrix:
    """The published combinability matrices, read once per process (and before a fork,
    by ``runs.physics_score``, so that walkers share them)."""
    global _MATRIX
    if _MATRIX is None:
        _MATRIX = CombinabilityMatrix.load()
    return _MATRIX


def read_significance(path) -> Dict[str, Any]:
    """A ``protomodels significance --json`` report read back (e.g. to compare models or
    databases later), checked against its schema so that a file of another version or a
    damaged one is a ``FormatError`` naming the file and JSON path, not a misreading."""
    from .atomic import read_json_record
    from .exceptions import FormatError
    from .schemas import schema_id

    return read_json_record(path, schema_id("significance"), FormatError, "significance report")


def significance_report(result: Significance, db: ExperimentalDatabase, slha_file,
                        model: Any = None) -> Dict[str, Any]:
    """The JSON document of one significance computation (schema ``significance``;
    ``protomodels significance --json`` prints it, ``read_significance`` reads it back):
    K, TL, the prior's terms, mu_hat, mu_max (None: unbounded), r_limit, r_max, the
    combination with each member's share of TL, the top 10 r values (cross sections and
    upper limits in fb, sqrts in TeV), the database and timings (s).  ``slha_file``: the
    model's file, as named in the document; ``model``: a ``general.GeneralModel`` adds what
    SModelS was given (``model``)."""
    from . import __version__
    from .general import GeneralModel
    from .schemas import schema_id

    def pred(p) -> Dict[str, Any]:
        return {"analysis_id": p.analysis_id, "dataset": p.dataset_id, "type": p.data_type,
                "sqrts_tev": p.sqrts, "xsec_fb": p.xsec_fb, "ul_obs_fb": p.ul_obs_fb,
                "ul_exp_fb": p.ul_exp_fb, "r_obs": p.r_obs, "r_exp": p.r_exp,
                "txnames": p.txnames, **({"note": p.note} if p.note else {}),
                **({"likelihood": p.likelihood} if p.likelihood else {})}

    members = []
    for m in result.combination:
        entry = pred(m.prediction)
        entry.update({"nll_0": m.nll0, "nll_mu_hat": m.nll_mu_hat, "tl": m.tl,
                      "tl_share": m.tl / result.TL if result.TL > 0 else 0.0})
        members.append(entry)
    return {
        "schema": schema_id("significance"),
        "protomodels_version": __version__,
        "file": str(slha_file),
        "database": {"path": db.path, "version": db.version, "sha256": db.sha256,
                     "fake": db.fake},
        "likelihood": db.likelihood,
        "workspaces": {name: chosen.describe() for name, chosen in sorted(db.likelihoods.items())},
        "K": result.K, "TL": result.TL, "prior": {"two_ln_prior": result.log_prior,
                                                  **result.prior_terms},
        "mu_hat": result.mu_hat,
        "mu_max": result.mu_max if result.mu_max != float("inf") else None,
        "r_limit": result.r_limit, "r_max": result.r_max,
        "combination": members,
        "top_r": [pred(p) for p in result.top_r(10)],
        "n_predictions": len(result.predictions),
        "n_informative": result.informative,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "model": ({"kind": "general", **model.report()} if isinstance(model, GeneralModel)
                  else {"kind": "proto-model"}),
        **({"surrogates": surrogate_usage(result.predictions)}
           if db.likelihood == "surrogate" else {}),
    }


def surrogate_usage(predictions: Sequence[Prediction]) -> Dict[str, Any]:
    """--likelihood surrogate: which pyhf predictions used a surrogate (``used``: analysis
    ids), and why the others fell back to the simplified likelihood (``fallbacks``:
    analysis id -> reason)."""
    used, fallbacks = [], {}
    for p in predictions:
        if p.surrogate is None:
            continue
        if p.from_surrogate:
            used.append(p.analysis_id)
        else:
            fallbacks[p.analysis_id] = p.surrogate.reason
    return {"used": sorted(used), "fallbacks": fallbacks}
