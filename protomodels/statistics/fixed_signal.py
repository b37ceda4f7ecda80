"""A pyhf workspace whose signal enters as fixed parameters: one statistical model for
every signal, so pyhf's jax backend compiles it once.

SModelS' pyhf interface (``PyhfUpperLimitComputer``) patches the signal yields into the
workspace as the data of a sample ``bsm`` and builds a new ``pyhf.Model`` at every CLs
or likelihood call.  pyhf's jax optimiser jit-compiles its objective with the model as a
static argument, so each call recompiles (tens of seconds for the ATLAS-SUSY-2018-16
workspaces) and the compiled functions pile up until memory runs out.  Here the ``bsm``
sample has unit yields and, per channel, a ``shapefactor`` modifier ``bsm_yield_<channel>``
whose per-bin parameters are fixed at the signal yields:

    nu_bsm(bin) = mu * lumi * gamma_bin * 1        with gamma_bin fixed to s_bin

which is the same expected rate as SModelS' ``mu * lumi * s_bin`` with the same
constraints (a shapefactor has none), so every likelihood is identical; the signal
uncertainty histosys, where the result has one, scales with the nominal yield in pyhf's
code4p, so unit hi/lo data times gamma equal SModelS' s(1 +- u).  The signal yields are
then ordinary (fixed) entries of the parameter vector: a dynamic argument of the jitted
objective, not part of the model.  Under ``validation.pyhf_backend("jax")`` the fits leave these fixed
parameters out of the minimisation (``validation.stitching_optimizer``: 6-10x faster for
ATLAS-SUSY-2018-16 than as SLSQP equality constraints, the same minimum).

The upper limit follows SModelS' ``getUpperLimitOnMu`` step by step: qtilde,
asymptotic CLs, the signal rescaled (by factors of 3, damped as SModelS damps them)
until the root lies in mu in [0.2, 5] with the POI bounded to [0, 10], then SModelS'
``findRoot`` (toms748, brentq as fallback) with rtol = xtol = 1e-3 on the absolute mu.
The likelihood is identical; the limits agree with SModelS' own computer to the root
search's tolerance (``tests/test_simplified.py``; 1e-8 on ATLAS-SUSY-2018-31's full
workspace A for the signals compared).
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

#: pyhf's interpolation codes as SModelS (and ``pyhf cls``) set them.
MODIFIER_SETTINGS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
SIGNAL_SAMPLE = "bsm"
SHAPEFACTOR_PREFIX = "bsm_yield_"


class SignalAsParameters:
    """One workspace of a pyhf result with its signal as fixed shapefactor parameters.

    ``info``: the result's globalInfo (``includeCRs``, ``signalUncertainty``);
    ``file_name``, ``workspace``, ``regions``: one of its JSON files, the workspace dict
    and the file's region list (``globalInfo.jsonFiles[file_name]``).  The channels SModelS
    keeps and the signal regions it fills are SModelS' own (its patches for a unit signal
    in every region); signals are dicts region -> events.  Raises ``WorkspaceError`` when
    SModelS cannot map the regions to the workspace's channels.
    """

    def __init__(self, info, file_name: str, workspace: Mapping[str, Any],
                 regions: List[Dict[str, Any]]):
        import pyhf

        from ..exceptions import WorkspaceError
        from .validation import workspace_computer

        unit = {r["smodels"]: 1.0 for r in regions if r.get("smodels")}
        computer = workspace_computer(info, file_name, dict(workspace), regions, unit)
        if computer.data.errorFlag or computer.workspaces is None:
            raise WorkspaceError(f"{getattr(info, 'id', '?')} {file_name}: SModelS cannot "
                                 "map the signal regions onto the workspace's channels")
        observed = copy.deepcopy(dict(computer.workspaces[0]))
        expected = dict(computer.workspaces_expected[0])
        #: per shapefactor: the SModelS region names of its bins, in bin order
        self.bins: Dict[str, List[str]] = {}
        #: SModelS' relative signal uncertainty (its histosys on the signal), 0 if none
        self.signal_uncertainty = 0.0
        for region in computer.channelsInfo[0]["signalRegions"]:
            original = int(region["path"].split("/")[2])
            channel_name = workspace["channels"][original]["name"]
            channel = next(c for c in observed["channels"] if c["name"] == channel_name)
            sample = next(s for s in channel["samples"] if s["name"] == SIGNAL_SAMPLE)
            size = len(sample["data"])
            sample["data"] = [1.0] * size
            for modifier in sample["modifiers"]:
                if modifier["type"] == "histosys":  # SModelS' signalUncertainty
                    u = self.signal_uncertainty = float(info.signalUncertainty)
                    modifier["data"] = {"hi_data": [1.0 + u] * size, "lo_data": [1.0 - u] * size}
            name = SHAPEFACTOR_PREFIX + channel_name
            sample["modifiers"].append({"name": name, "type": "shapefactor", "data": None})
            self.bins[name] = region["smodelsName"].split(";")
        self.analysis = getattr(info, "id", "?")
        self.file_name = file_name
        self.workspace = pyhf.Workspace(observed, validate=False)
        self.model = self.workspace.model(modifier_settings=MODIFIER_SETTINGS)
        self.observed_data = self.workspace.data(self.model)
        expected_ws = pyhf.Workspace({**observed, "observations": expected["observations"]},
                                     validate=False)
        self.expected_data = expected_ws.data(self.model)
        config = self.model.config
        self.fixed = list(config.suggested_fixed())
        for name in self.bins:
            for i in range(*_slice_bounds(config.par_slice(name))):
                self.fixed[i] = True

    def parameters(self, signal: Mapping[str, float], scale: float = 1.0):
        """Initial parameters and bounds (pyhf's suggested ones, the POI bounded to
        [0, 10] as SModelS does) with the shapefactors fixed at ``scale`` x the signal
        (events per region; regions absent count 0)."""
        config = self.model.config
        init = list(config.suggested_init())
        bounds = list(config.suggested_bounds())
        for name, regions in self.bins.items():
            first, last = _slice_bounds(config.par_slice(name))
            for i, region in zip(range(first, last), regions):
                value = scale * float(signal.get(region, 0.0))
                init[i] = value
                bounds[i] = (0.0, max(10.0, 2.0 * value))
        bounds[config.poi_index] = (0.0, 10.0)
        return init, bounds

    def cls(self, mu: float, signal: Mapping[str, float], expected: bool,
            scale: float = 1.0) -> float:
        """Observed (or a-priori expected: data = the background yields) CLs of
        ``mu`` x ``scale`` x signal, qtilde, asymptotic (pyhf.infer.hypotest)."""
        import pyhf

        init, bounds = self.parameters(signal, scale)
        data = self.expected_data if expected else self.observed_data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                value = pyhf.infer.hypotest(mu, data, self.model, init_pars=init,
                                            par_bounds=bounds, fixed_params=self.fixed,
                                            test_stat="qtilde")
            except Exception:  # a failed fit: SModelS treats it as NaN as well
                return float("nan")
        return float(np.ravel(value)[0])

    def upper_limit(self, signal: Mapping[str, float], expected: bool,
                    cl: float = 0.95) -> Optional[float]:
        """95% CLs upper limit on mu for ``signal``: SModelS' ``getUpperLimitOnMu`` step by
        step (its bracket search with rescaling, NaN handling, factor damping and limits
        of 10 attempts and 5 NaNs; then ``findRoot`` on the absolute mu with rtol = xtol =
        1e-3); None where SModelS gives None."""
        from smodels.statistics.basicStats import findRoot

        if not any(float(signal.get(r, 0.0)) > 0 for bins in self.bins.values() for r in bins):
            return None
        alpha = 1.0 - cl

        def excess(mu_rel: float, scale: float) -> float:  # SModelS' "alpha-CLs"
            return alpha - self.cls(mu_rel, signal, expected, scale)

        factor, scale = 3.0, 1.0
        lo_mu, med_mu, hi_mu = 0.2, 1.0, 5.0
        were_both_large = were_both_tiny = False
        scales: List[float] = []
        attempts = nans = 0
        while True:
            attempts += 1
            if nans > 5 or attempts > 10:
                return None
            rt1, rt10 = excess(lo_mu, scale), excess(hi_mu, scale)
            if rt1 < 0.0 < rt10:
                break
            if len(scales) >= 2 and scales[-2] == scale:  # SModelS' alreadyBeenThere
                factor = 1 + 0.75 * (factor - 1)
            scales.append(scale)
            if np.isnan(rt1):
                rt5 = excess(med_mu, scale)
                if rt5 < 0.0 and rt10 > 0.0:
                    lo_mu = med_mu
                    med_mu = float(np.sqrt(lo_mu * hi_mu))
                    continue
                if rt10 < 0.0:
                    hi_mu = hi_mu + (10.0 - hi_mu) * 0.5
                    med_mu = float(np.sqrt(lo_mu * hi_mu))
                nans += 1
                scale *= factor
                continue
            if np.isnan(rt10):
                rt5 = excess(med_mu, scale)
                if rt5 > 0.0 and rt1 < 0.0:
                    hi_mu = med_mu
                    med_mu = float(np.sqrt(lo_mu * hi_mu))
                    continue
                if rt1 > 0.0:
                    lo_mu = lo_mu * 0.5
                    med_mu = float(np.sqrt(lo_mu * hi_mu))
                nans += 1
                scale /= factor
                continue
            if rt10 < 0 and rt1 < 0 and were_both_large:
                factor = 1 + (factor - 1) / 2
            if rt10 > 0 and rt1 > 0 and were_both_tiny:
                factor = 1 + (factor - 1) / 2
            were_both_tiny = rt10 < 0 and rt1 < 0
            were_both_large = rt10 > 0 and rt1 > 0
            if rt10 < 0.0:
                scale *= factor
            elif rt1 > 0.0:
                scale /= factor
        root = findRoot(lambda mu: excess(mu / scale, scale), lo_mu * scale, hi_mu * scale,
                        rtol=1e-3, xtol=1e-3)
        return float(root)

    def test_statistic(self, signal: Mapping[str, float]) -> Dict[str, Optional[float]]:
        """mu_hat >= 0 (workspace POI bounds) and t = 2 [nll(mu = 0) - nll(mu_hat)] on the
        observed data, as SModelS' ``lmax`` and ``likelihood(0)`` give them."""
        import pyhf

        init, bounds = self.parameters(signal)
        bounds[self.model.config.poi_index] = self.model.config.suggested_bounds()[
            self.model.config.poi_index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                best, nll_best = pyhf.infer.mle.fit(self.observed_data, self.model,
                                                    init_pars=init, par_bounds=bounds,
                                                    fixed_params=self.fixed,
                                                    return_fitted_val=True)
                _, nll_zero = pyhf.infer.mle.fixed_poi_fit(0.0, self.observed_data, self.model,
                                                           init_pars=init, par_bounds=bounds,
                                                           fixed_params=self.fixed,
                                                           return_fitted_val=True)
            except Exception:
                return {"mu_hat": None, "t": None}
        # pyhf's fits return twice the nll
        return {"mu_hat": float(np.ravel(best)[self.model.config.poi_index]),
                "t": float(np.ravel(nll_zero)[0]) - float(np.ravel(nll_best)[0])}

    def evaluate(self, signal: Mapping[str, float]) -> Dict[str, Any]:
        """The outcome ``validation.evaluate_signal`` gives: observed and expected UL on
        mu, mu_hat, t and the seconds taken."""
        t0 = time.perf_counter()
        outcome = {"ul_obs": self.upper_limit(signal, expected=False),
                   "ul_exp": self.upper_limit(signal, expected=True),
                   **self.test_statistic(signal)}
        outcome["seconds"] = round(time.perf_counter() - t0, 2)
        return outcome


def _slice_bounds(par_slice: slice) -> tuple:
    return par_slice.start, par_slice.stop
