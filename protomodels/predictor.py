"""Theory predictions of a proto-model through SModelS 3.1 (SPEC section 4).

One decomposition per model, then per experimental result the same steps as SModelS'
``theoryPredictionsFor`` (best signal region, or the combined result where the database
has a covariance matrix or pyhf workspace), but each result in its own ``try``: a result
whose combination fails falls back to its best signal region and is reported, instead of
aborting the predictions of all results as ``theoryPredictionsFor`` does.

Each ``Prediction`` keeps r_obs, r_exp and, on demand, its likelihood curve nll(mu):
SModelS' own likelihood for EM and combined results (sampled on a grid [0, M] with M
the first rung of a fixed ladder at or above mu_max); the paper's truncated Gaussian for
UL results with an expected limit; none otherwise.

A UL result whose observed limit exceeds ``MAX_UL_RATIO`` times its expected one gets no
likelihood either (it still constrains through r_obs).  In the truncated Gaussian a ratio
of 10.7 is an 8.9 sigma excess (TL = 79): such ratios are interpolation artefacts at the
edges of the maps, not data.  Over the 555,699 grid points of the observed UL maps of
database 3.0.0 that have an expected map, UL_obs/UL_exp has median 1.04, 99.9% quantile
2.68 (TL 4.7), and exceeds 3 at 0.06% of them, mostly in four maps (CMS-SUS-19-011
T2tt/T2ttoff, CMS-SUS-20-001 TSlepSlep, CMS-SUS-18-002 T6ttZg), up to 1452.  A
replica-exchange walker's coldest chain found one within 170 steps: a smuon at 393 GeV
over XZ1 at 339 GeV, where CMS-SUS-20-001's expected map (undefined 13 GeV lower)
interpolates UL_exp = 91 fb against UL_obs = 973 fb, for K = 29 from that one result.
At the cut the truncated Gaussian gives TL = 6.1 (2.5 sigma), the most an upper-limit
map alone is trusted with here; dropping the likelihood beyond it (rather than capping
the ratio) leaves the artefact regions flat at TL = 0 instead of a plateau at 6.  The
guard is for real databases only: a fake one (``fakedb``) draws UL_obs from UL_exp at
each grid point, so it has no such artefacts, and its large ratios are injected signals.

The statistics of an EM or combined result (its upper limits, likelihood values and curves)
depend on nothing but the result and its signal yields per region, and they are what
costs: a pyhf upper limit takes up to a minute.  ``StatisticsCache`` memoises them by
exactly that key, so a walker step that leaves a result's yields unchanged (a move of a
particle it does not see) reuses them.  Every cached quantity is a pure function of its
key, which is why a warm cache gives the same numbers as an empty one.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, List, Optional, Sequence

from .database import ExperimentalDatabase
from .statistics.cache import ResultStatistics, StatisticsCache
from .statistics.workspaces import choice as workspace_choice, tag as workspace_tag
from .exceptions import PredictionError
from .likelihood import NllCurve, TabulatedNll, TruncatedGaussian
from .model import NAMES, ProtoModel
from .slha import SQRTS, to_slha
from .xsec import effective_xsecs

logger = logging.getLogger(__name__)

SIGMACUT_FB = 0.005
MINMASSGAP_GEV = 5.0
MAX_MASS_DIST = 0.2  # SModelS' default clustering distance
NLL_SAMPLES = 14  # grid points per sampled likelihood (plus its minimum)
LADDER_STEPS = 4  # rungs per factor 2 for the end of a likelihood's sampling grid
CLS_MARGIN = 0.01  # CLs this close to 0.05 decides nothing: compute the limit
MAX_UL_RATIO = 3.0  # UL results with UL_obs > this x UL_exp: no likelihood (module docstring)


def grid_end(mu_max: float) -> float:
    """The sampling range of a likelihood curve: the first rung 2^(k/4) >= mu_max.

    A fixed ladder makes the curve a function of (yields, rung) alone, so cached curves
    are exactly what a fresh evaluation would compute; [0, mu_max] still gets at least
    (NLL_SAMPLES - 1) / 2^(1/4) ~ 11 grid intervals.
    """
    if not (mu_max > 0):
        raise ValueError(f"mu_max must be positive, got {mu_max}")
    return 2.0 ** (math.ceil(LADDER_STEPS * math.log2(mu_max) - 1e-9) / LADDER_STEPS)


@dataclass
class Selection:
    """Which results take part: SPEC section 4's 'selectable' options."""

    sqrts: Sequence[int] = SQRTS
    analyses: Sequence[str] = ("*",)  # shell patterns on analysis ids
    data_types: Sequence[str] = ("UL", "EM", "combined")
    superseded: bool = False

    def accepts(self, expresult) -> bool:
        info = expresult.globalInfo
        if int(round(info.sqrts.asNumber())) not in self.sqrts:
            return False
        if not self.superseded and hasattr(info, "supersededBy"):
            return False
        return any(fnmatch.fnmatchcase(info.id, p) for p in self.analyses)


@dataclass
class Prediction:
    """One prediction of one result: what the critic, the combiner and reports need."""

    analysis_id: str
    dataset_id: str  # signal region id, "combined", or "(UL)"
    data_type: str  # "UL", "EM" or "combined"
    experiment: str
    sqrts: int
    xsec_fb: float  # predicted sigma x eff (x BR)
    txnames: List[str]
    note: str = ""
    likelihood: str = ""  # pyhf results: which workspaces (full, simplified; see statistics.workspaces)
    theory: Any = field(default=None, repr=False)  # the SModelS TheoryPrediction
    stats: ResultStatistics = field(default_factory=ResultStatistics, repr=False)
    _curve: Optional[NllCurve] = field(default=None, repr=False)  # UL results' own curve
    #: UL results: no likelihood above this UL_obs/UL_exp (None: no limit; fake databases)
    max_ul_ratio: Optional[float] = MAX_UL_RATIO
    #: --likelihood surrogate: the result's surrogates for this signal (statistics.surrogate)
    surrogate: Any = field(default=None, repr=False)

    @property
    def from_surrogate(self) -> bool:
        """Do this prediction's likelihood and limits come from a surrogate?"""
        return self.surrogate is not None and self.surrogate.usable

    @property
    def ul_obs_fb(self) -> Optional[float]:
        """Observed upper limit on sigma x eff (fb); for combined results computed (a CLs
        root search, up to a minute for pyhf) only when asked for."""
        return self._upper_limit("obs")

    @property
    def ul_exp_fb(self) -> Optional[float]:
        return self._upper_limit("exp")

    def _upper_limit(self, which: str) -> Optional[float]:
        if which not in self.stats.uls and self.from_surrogate:
            mu = self.surrogate.upper_limit(expected=which == "exp")
            self.stats.uls[which] = None if mu is None else mu * self.xsec_fb
        if which not in self.stats.uls:
            from smodels.base.physicsUnits import fb
            from smodels.statistics.basicStats import apriori, observed

            try:
                ul = self.theory.getUpperLimit(observed if which == "obs" else apriori)
            except Exception as error:  # SModelS or pyhf; one result must not stop a model
                logger.warning("%s (%s): %s upper limit failed (%s: %s); no r for it",
                               self.analysis_id, self.dataset_id, which,
                               type(error).__name__, error)
                ul = None
            self.stats.uls[which] = None if ul is None else float(ul.asNumber(fb))
        return self.stats.uls[which]

    @property
    def r_known(self) -> bool:
        """Is r_obs available without a costly computation?  Only pyhf limits are: their
        root search repeats full hypothesis tests, where a simplified likelihood's reuses
        one fit (so that a CLs test would cost as much as its limit)."""
        return (self.data_type != "combined" or "obs" in self.stats.uls
                or self.from_surrogate or self.theory.statsComputer.dataType != "pyhf")

    def r_below(self, bound: float) -> bool:
        """Is r_obs < bound?  For a combined result whose limit is not known yet, decided
        by one CLs test at mu = 1/bound (r < bound iff mu_UL > 1/bound iff CLs(1/bound) >
        0.05, CLs falling in mu) instead of the full root search; within CLS_MARGIN of
        0.05, or if the test fails, the limit is computed after all."""
        if not self.r_known:
            key = _rounded(1.0 / bound)
            cls = self.stats.cls.get(key)
            if cls is None:
                try:
                    cls = _observed_cls(self.theory, key)
                except Exception as error:  # SModelS or pyhf: fall back to the limit
                    logger.debug("%s: CLs test failed (%s)", self.analysis_id, error)
                    cls = math.nan
                self.stats.cls[key] = cls = math.nan if cls is None else float(cls)
            if math.isfinite(cls) and abs(cls - 0.05) > CLS_MARGIN:
                return cls > 0.05
        r = self.r_obs
        return r is None or r < bound

    @property
    def r_obs(self) -> Optional[float]:
        return self.xsec_fb / self.ul_obs_fb if self.ul_obs_fb else None

    @property
    def r_exp(self) -> Optional[float]:
        return self.xsec_fb / self.ul_exp_fb if self.ul_exp_fb else None

    @property
    def has_likelihood(self) -> bool:
        """EM and combined results always; UL results with an expected limit no more than
        ``MAX_UL_RATIO`` times below the observed one (module docstring)."""
        if self.data_type == "UL":
            return bool(self.ul_obs_fb and self.ul_exp_fb and (
                self.max_ul_ratio is None or self.ul_obs_fb <= self.max_ul_ratio * self.ul_exp_fb))
        return True

    def excess(self, mu_max: float) -> bool:
        """Can this prediction raise TL on [0, mu_max], i.e. is its best-fit mu positive
        with a likelihood gain above 1e-9?  For SModelS likelihoods, first the slope at 0
        (one probe at 1e-6 of the range: no fit), then the sampled curve decides."""
        if self.data_type == "UL":
            return self.has_likelihood and self.curve(math.inf).mu_hat > 0
        end = grid_end(mu_max)
        if self.nll(1e-6 * end) >= self.nll(0.0):
            return False
        curve = self.curve(mu_max)
        return curve.mu_hat > 0 and self.nll(0.0) - float(curve(curve.mu_hat)) > 1e-9

    def curve(self, mu_max: float) -> NllCurve:
        """The nll(mu) curve, valid on [0, mu_max] (UL: analytic; else sampled on
        [0, grid_end(mu_max)] once per signal and rung)."""
        if self.data_type == "UL":
            if self._curve is None:
                self._curve = TruncatedGaussian.from_limits(self.ul_obs_fb / self.xsec_fb,
                                                            self.ul_exp_fb / self.xsec_fb)
            return self._curve
        end = grid_end(mu_max)
        curve = self.stats.curves.get(end)
        if curve is None:
            curve = TabulatedNll.sample(self.nll, end, math.nan, n=NLL_SAMPLES)
            self.stats.curves[end] = curve
        return curve

    def nll(self, mu: float) -> float:
        """SModelS' own -ln L(mu) (EM and combined results), or the surrogate's."""
        mu = float(mu)
        value = self.stats.nlls.get(mu)
        if value is None:
            value = (self.surrogate.nll(mu) if self.from_surrogate
                     else self.theory.likelihood(mu=mu, return_nll=True))
            if value is None or not math.isfinite(value):
                raise PredictionError(f"{self.analysis_id}: SModelS likelihood at mu={mu} "
                                      f"is {value}")
            value = self.stats.nlls[mu] = float(value)
        return value


def _observed_cls(theory, mu: float) -> Optional[float]:
    """Observed CLs of a combined prediction at signal strength mu, prepared the way
    SModelS prepares its own limit computation (``StatsComputer.poi_upper_limit``)."""
    from smodels.statistics.basicStats import observed

    computer = theory.statsComputer
    limits = computer.upperLimitComputer
    if computer.dataType == "pyhf":  # load the signals, as getUpperLimitOnMu does first
        limits.__init__(limits.data, limits.cl, limits.lumi)
    elif computer.dataType in ("SL", "1bin"):
        limits.likelihoodComputer.model = computer.data
    return limits.CLs(mu, observed)


def _smodels_model(slha_text: str, particles: Optional[Sequence[Any]] = None):
    from smodels.base.model import Model
    from smodels.base.physicsUnits import GeV
    from smodels.share.models import mssm
    from smodels.share.models.SMparticles import SMList

    bsm = (list(particles) if particles is not None
           else [p for p in mssm.BSMList if abs(p.pdg) in NAMES])
    model = Model(BSMparticles=bsm, SMparticles=SMList, label="protomodel")
    model.updateParticles(inputFile=slha_text, minMass=1.0 * GeV)
    return model


def decompose(slha_text: str, particles: Optional[Sequence[Any]] = None):
    """SModelS model and its SMS topologies for one SLHA text; ``particles``: SModelS'
    BSM particle objects (default: the proto-model candidates of SModelS' MSSM)."""
    from smodels.base.physicsUnits import GeV, fb
    from smodels.decomposition import decomposer

    model = _smodels_model(slha_text, particles)
    top = decomposer.decompose(model, sigmacut=SIGMACUT_FB * fb, massCompress=True,
                               invisibleCompress=True, minmassgap=MINMASSGAP_GEV * GeV)
    return model, top


def predict(model: ProtoModel, database: ExperimentalDatabase,
            selection: Selection | None = None) -> List[Prediction]:
    """Predictions of every selected result for ``model`` (empty if it produces nothing)."""
    xsecs = effective_xsecs(model)
    if not any(value > 0 for value in xsecs.values()):
        return []  # nothing is produced (e.g. the LSP alone): SModelS would refuse the file
    return predict_slha_text(to_slha(model, xsecs), database, selection)


def predict_slha_text(slha_text: str, database: ExperimentalDatabase,
                      selection: Selection | None = None,
                      particles: Optional[Sequence[Any]] = None) -> List[Prediction]:
    """Predictions of every selected result for the model in ``slha_text`` (``particles``:
    see ``decompose``).  PredictionError if SModelS cannot decompose it."""
    selection = selection or Selection()
    t0 = time.perf_counter()
    try:
        _, top = decompose(slha_text, particles)
    except Exception as error:  # SModelS raises its own error types, or bare ones
        raise PredictionError(f"SModelS could not decompose the model: {error}") from None
    t1 = time.perf_counter()
    smodels_db = database.smodels
    sms_match = smodels_db.expSMSDict.getMatchesFrom(top)
    predictions: List[Prediction] = []
    for expresult in smodels_db.expResultList:
        if not selection.accepts(expresult):
            continue
        predictions.extend(_predictions_for(expresult, sms_match, smodels_db.expSMSDict,
                                            selection, database.statistics))
    if database.fake:
        for prediction in predictions:
            prediction.max_ul_ratio = None
    logger.debug("decomposition %.3fs, %d predictions in %.3fs", t1 - t0, len(predictions),
                 time.perf_counter() - t1)
    return predictions


def _predictions_for(expresult, sms_match, sms_dict, selection: Selection,
                     cache: StatisticsCache) -> List[Prediction]:
    from smodels.matching import theoryPrediction as tp

    results = []
    for dataset in expresult.datasets:
        preds = tp._getDataSetPredictions(dataset, sms_match, sms_dict, MAX_MASS_DIST)
        if preds:
            results.append(preds)
    if not results:
        return []
    if len(results) == 1:
        kind = "UL" if results[0][0].dataType() == "upperLimit" else "EM"
        return [_wrap(p, expresult, kind, cache) for p in results[0]
                if kind in selection.data_types]
    note = ""
    if "combined" in selection.data_types and (expresult.hasCovarianceMatrix()
                                               or expresult.hasJsonFile()):
        try:
            combined = tp._getCombinedResultFor(results, expresult)
            if combined is not None:
                prediction = _wrap(combined, expresult, "combined", cache)
                prediction.nll(0.0)  # needed anyway; proves the statistical model works
                return [prediction]
        except Exception as error:  # one broken statistical model must not stop the others
            note = f"combination failed ({type(error).__name__}: {error}); best signal region used"
            logger.warning("%s: %s", expresult.globalInfo.id, note)
    if "EM" not in selection.data_types and not note:
        return []
    best = tp._getBestResult(results)
    return [_wrap(best, expresult, "EM", cache, note)] if best is not None else []


def _rounded(value: float) -> float:
    return float(f"{value:.12g}")


def statistics_key(theory, expresult, kind: str) -> Optional[Hashable]:
    """What an EM or combined result's statistics depend on: the result, for pyhf results
    the workspaces in use (``statistics.workspaces.tag``), and its signal yields (sigma x
    eff per region, to 12 digits); None for UL results (cheap anyway)."""
    from smodels.base.physicsUnits import fb

    if kind == "UL":
        return None
    info_id = expresult.globalInfo.id
    if kind == "EM":
        return (info_id, theory.dataset.getID(), _rounded(theory.xsection.asNumber(fb)))
    yields = sorted((p.dataset.getID(), _rounded(p.xsection.asNumber(fb)))
                    for p in theory.datasetPredictions)
    return (info_id, "combined", workspace_tag(expresult), tuple(yields))


def _wrap(theory, expresult, kind: str, cache: StatisticsCache, note: str = "") -> Prediction:
    from smodels.base.physicsUnits import fb
    from smodels.base.runtime import _deltas_rel_default

    theory.expResult = expresult
    theory.deltas_rel = _deltas_rel_default
    info = expresult.globalInfo
    stats = cache.get(statistics_key(theory, expresult, kind))
    dataset_id = {"UL": "(UL)", "combined": "combined"}.get(kind) or theory.dataset.getID()
    surrogate = None
    if kind == "combined":
        from .statistics import surrogate as surrogates

        attached = surrogates.attached_to(expresult)
        if attached is not None:
            if stats.surrogate is None:  # the choice depends on the yields alone: cached
                lumi = info.lumi.asNumber(1 / fb)
                signal = {p.dataset.getID(): float(p.xsection.asNumber(fb)) * lumi
                          for p in theory.datasetPredictions}
                stats.surrogate = surrogates.SignalSurrogate(attached, signal)
            surrogate = stats.surrogate
            if not surrogate.usable:
                note = (note + "; " if note else "") + f"surrogate not used ({surrogate.reason})"
    return Prediction(
        analysis_id=info.id,
        dataset_id=dataset_id,
        data_type=kind,
        experiment="CMS" if "CMS" in info.id else "ATLAS",
        sqrts=int(round(info.sqrts.asNumber())),
        xsec_fb=float(theory.xsection.asNumber(fb)),
        txnames=sorted({str(t) for t in theory.txnames}),
        note=note,
        likelihood=(("surrogate" if surrogate is not None and surrogate.usable else "")
                    or _likelihood_used(expresult)) if kind == "combined" else "",
        theory=theory,
        stats=stats,
        surrogate=surrogate,
    )


def _likelihood_used(expresult) -> str:
    chosen = workspace_choice(expresult)
    return chosen.describe() if chosen is not None else ""
