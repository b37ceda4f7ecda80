"""Simplified likelihoods from full pyhf workspaces (ATL-PHYS-PUB-2021-038, SPEC section 9).

A full HistFactory workspace (dozens of background samples per channel, a hundred or
more nuisance parameters: 30-60 s per fit with pyhf's numpy backend) is replaced by the
simplified one ATLAS publishes beside some of its full likelihoods:

1. a background-only maximum-likelihood fit of *all* channels (signal, control and
   validation regions; the POI removed) with MINUIT, so the fit has a covariance;
2. per bin, the total post-fit background yield b_i and its uncertainty sigma_i by linear
   propagation of the fit covariance: the yields at each parameter's +-1 sigma are
   symmetrised into s_pi = (b_i(theta_p + sigma_p) - b_i(theta_p - sigma_p)) / 2, and
   sigma_i^2 = sum_pq s_pi rho_pq s_qi with rho the post-fit correlation matrix (the
   procedure of the ``simplify`` package ATLAS used; cabinetry's ``yield_stdev`` is the
   same formula);
3. a workspace in ATLAS' layout: one sample ``Bkg`` per channel with the yields b_i and
   one ``histosys`` modifier ``totalError`` (hi = b + sigma, lo = b - sigma) shared by
   all channels, i.e. a single nuisance parameter; the observations unchanged; the
   measurement keeps its POI name (SModelS adds its own signal sample with that
   normfactor) and the luminosity parameter, fixed.

3'. or (``--likelihood correlated``, for every full workspace) the *correlated* layout:
   the same sample ``Bkg`` per channel at the post-fit yields b, and P
   (``CORRELATED_MODES``) ``histosys`` parameters ``bkgMode1..P`` instead of one.  Their
   shifts are the leading principal components V of the post-fit covariance Sigma of
   all bins (in units of each bin's Poisson width sqrt(b + 1), so that a small bin's
   uncertainty counts as much as a large one's), and their Gaussian constraints leave
   out the information of the data, which the likelihood's Poisson terms hold already:
   with A = 1 - V^T diag(d/b^2) V and a = V^T (d/b - 1) (d the observed counts), rotated
   to A's eigenbasis W, parameter k shifts the bins by (V W)_k / sqrt(alpha_k) and is
   constrained by N(c_k | phi_k, 1) with c_k = -(W^T a)_k / sqrt(alpha_k) (pyhf's
   ``auxdata`` in the measurement; eigenvalues alpha below ``PRIOR_FLOOR``, directions
   the data alone constrain, such as free normalisations, are raised to it).  Then
   phi = 0 (the post-fit yields) is the background-only minimum at the observed data,
   and the model's post-fit covariance of the bins is Sigma on the kept modes: the
   simplified likelihood of CMS-NOTE-2017-001 with correlations, made consistent with
   the post-fit state (the construction of ``surrogate_baseline``, as a pyhf workspace).
   ATLAS' single parameter moves all bins together, and its post-fit uncertainty taken
   as a prior counts the data twice: on ATLAS-SUSY-2018-16's EWKinos workspace its
   limits are 16-21 % stronger than the full likelihood's, against 3-6 % with 20 modes
   (at 15-20x the cost per fit: the README's table).  Neither follows the full model
   where a signal meets an excess (t 0.54 and 0.70 against 1.31).

The fit uses ATLAS' interpolation codes (``code4`` for normsys, ``code4p`` for histosys,
as HistFitter and ``simplify`` do).  Measured on the three results for which the
database ships both ATLAS' full and simplified workspaces, the yields agree with ATLAS'
to < 0.1 % and the uncertainties to < 9 % (``protomodels database simplify --validate``).

``build`` is the library function (workspace in, workspace out); ``cached`` keeps one
file per source workspace in the project's database cache, keyed by the source's
sha256, with its provenance; a corrupt or stale file is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..atomic import file_lock, write_json_atomic
from ..exceptions import WorkspaceError
from ..schemas import schema_id, validate

logger = logging.getLogger(__name__)

SCHEMA = schema_id("simplified")
SAMPLE = "Bkg"  # ATLAS' names, so that our files look like theirs
MODIFIER = "totalError"
INTERPOLATION = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
MINUIT_TOLERANCE = 0.01  # EDM target 0.002 * tolerance * errordef, pyhf's default is 0.1
MODE_PREFIX = "bkgMode"  # the correlated layout's nuisance parameters: bkgMode1, bkgMode2, ...
#: nuisance parameters of the correlated layout (``--likelihood correlated``): 5 and 10
#: modes left EWKinos' expected limits 18-26 % and 0-2 % off, observed ones 10-18 %; 20
#: (as ``surrogate_baseline.MAX_MODES``) 3-6 %, bar the excess (README)
CORRELATED_MODES = 20
PRIOR_FLOOR = 1e-3  # eigenvalues of the modes' prior precision below this are raised to it
TINY = 1e-12  # floor of a bin's post-fit yield in the modes' algebra


@dataclass
class Simplified:
    """A simplified workspace and how it was made.

    ``yields`` and ``uncertainties`` are per bin, in the model's channel order
    (``channels``: name and bin count each), in events."""

    workspace: Dict[str, Any]
    channels: List[List[Any]]
    yields: np.ndarray
    uncertainties: np.ndarray
    fit: Dict[str, Any]


def is_full(workspace: Dict[str, Any]) -> bool:
    """Does a workspace have more than one background sample in some channel?  ATLAS'
    simplified workspaces (and the toy ones of ATLAS-SUSY-2018-14) have one per channel."""
    return any(len(channel.get("samples", [])) > 1 for channel in workspace.get("channels", []))


@contextlib.contextmanager
def minuit_backend() -> Iterator[Any]:
    """pyhf's numpy backend with MINUIT for the duration of one fit (pyhf's backend is
    global: SModelS' own choice is restored afterwards)."""
    import pyhf

    tensorlib, optimizer = pyhf.get_backend()
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=MINUIT_TOLERANCE))
    try:
        yield pyhf
    finally:
        pyhf.set_backend(tensorlib, optimizer)


def build(spec: Dict[str, Any], name: str = "workspace", modes: int = 0) -> Simplified:
    """The simplified workspace of a full background-only workspace (module docstring).

    ``spec``: a pyhf workspace (dict, JSON schema ``workspace.json`` of pyhf 0.7), with
    or without a signal sample; ``name`` names it in errors; ``modes``: 0 for ATLAS'
    layout (one ``totalError``), P > 0 for the correlated layout with P nuisance
    parameters (module docstring, step 3').  Returns a ``Simplified``
    whose ``workspace`` validates against pyhf's schema.  Raises ``WorkspaceError`` (naming
    ``name``) when the input is not a valid workspace, the fit fails or does not converge,
    or the covariance is not positive.
    """
    with minuit_backend() as pyhf:
        try:
            workspace = pyhf.Workspace(spec)
            model = workspace.model(poi_name=None, modifier_settings=INTERPOLATION)
            data = workspace.data(model)
        except Exception as error:  # pyhf raises its own errors and jsonschema's
            raise WorkspaceError(f"{name}: not a valid pyhf workspace "
                                 f"({type(error).__name__}: {str(error)[:200]})") from None
        t0 = time.perf_counter()
        try:
            result, fit = pyhf.infer.mle.fit(data, model, return_uncertainties=True,
                                             return_result_obj=True)
        except Exception as error:
            raise WorkspaceError(f"{name}: the background-only fit failed "
                                 f"({type(error).__name__}: {str(error)[:200]})") from None
        seconds = time.perf_counter() - t0
        minuit = fit.minuit
        if not minuit.valid:
            raise WorkspaceError(f"{name}: the background-only fit did not converge "
                                 f"(MINUIT: edm {minuit.fmin.edm:.3g}, {minuit.nfcn} calls)")
        best = np.asarray(result[:, 0], dtype=float)
        covariance = np.asarray(fit.hess_inv, dtype=float)
        yields = np.asarray(model.expected_actualdata(best), dtype=float)
        bins = bin_covariance(model, best, covariance, name)
        uncertainties = np.sqrt(np.clip(np.diag(bins), 0.0, None))
        channels = [[channel, int(model.config.channel_nbins[channel])]
                    for channel in model.config.channels]
        if modes:
            observed = np.asarray(data[:model.config.nmaindata], dtype=float)
            shifts, auxdata = correlated_modes(yields, observed, bins, modes)
            simplified = _layout(spec, channels, yields, shifts=shifts, auxdata=auxdata)
        else:
            simplified = _layout(spec, channels, yields, shifts=uncertainties[:, None])
        try:
            pyhf.Workspace(simplified)  # validates against pyhf's schema
        except Exception as error:
            raise WorkspaceError(f"{name}: the simplified workspace does not validate "
                                 f"({type(error).__name__}: {str(error)[:200]})") from None
    return Simplified(
        workspace=simplified, channels=channels, yields=yields, uncertainties=uncertainties,
        fit={"seconds": round(seconds, 2), "valid": bool(minuit.valid),
             "edm": float(minuit.fmin.edm), "calls": int(minuit.nfcn),
             "twice_nll": float(fit.fun), "parameters": int(model.config.npars),
             "method": "background-only fit of all channels with MINUIT; bin covariance "
                       "by linear propagation of the fit covariance (+-1 sigma variations, "
                       "symmetrised); " + (f"{modes} correlated modes with the consistent "
                                           "prior" if modes else "one totalError (ATLAS)")})


def principal_modes(yields: np.ndarray, covariance: np.ndarray, count: int) -> np.ndarray:
    """V (K, P): the ``count`` leading principal components of the bins' ``covariance``
    (K, K, events^2) in units of each bin's Poisson width sqrt(b + 1) (``yields`` b, (K,)),
    scaled to events, so that V V^T is the covariance on the kept modes."""
    width = np.sqrt(np.clip(np.asarray(yields, dtype=float), 0.0, None) + 1.0)
    values, vectors = np.linalg.eigh(covariance / np.outer(width, width))
    order = np.argsort(values)[::-1][:count]
    return width[:, None] * vectors[:, order] * np.sqrt(np.clip(values[order], 0.0, None))


def correlated_modes(yields: np.ndarray, data: np.ndarray, covariance: np.ndarray,
                     count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The correlated layout's nuisance parameters (module docstring, step 3').

    ``yields`` (K,): post-fit background b per bin, events; ``data`` (K,): the observed
    counts d; ``covariance`` (K, K): the post-fit covariance of the yields, events^2;
    ``count``: P, the modes kept.  Returns ``shifts`` (K, P), each parameter's +1 unit
    shift of every bin (events), and ``auxdata`` (P,), each parameter's constraint centre:
    with rates b + shifts . phi and constraints N(auxdata | phi, 1), phi = 0 minimises
    -ln L at the observed data and its inverse Hessian there is the post-fit covariance
    on the kept modes (exactly where the prior precision needed no floor).
    """
    b = np.maximum(np.asarray(yields, dtype=float), TINY)
    modes = principal_modes(b, covariance, count)
    # prior precision and linear term that leave the data's information out (the data are
    # in the likelihood already): A = 1 - V^T diag(d/b^2) V, a = V^T (d/b - 1)
    precision = np.eye(modes.shape[1]) - modes.T @ (modes * (data / b ** 2)[:, None])
    alpha, rotation = np.linalg.eigh(0.5 * (precision + precision.T))
    alpha = np.maximum(alpha, PRIOR_FLOOR)
    linear = rotation.T @ (modes.T @ (data / b - 1.0))
    return (modes @ rotation) / np.sqrt(alpha), -linear / np.sqrt(alpha)


def bin_covariance(model, best: np.ndarray, covariance: np.ndarray, name: str) -> np.ndarray:
    """The post-fit covariance of the yields of all bins (K, K), events^2:
    sum_pq s_pi rho_pq s_qj with s_pi the symmetrised +-1 sigma_p yield shift of bin i
    (module docstring, step 2) and rho the fit's correlation matrix; fixed parameters
    (zero variance) contribute nothing.  ``covariance``: the fit's, parameters x
    parameters.  Raises ``WorkspaceError`` (naming ``name``) when it is not positive."""
    variances = np.diag(covariance)
    if np.any(variances < -1e-12) or not np.all(np.isfinite(covariance)):
        raise WorkspaceError(f"{name}: the fit covariance is not positive")
    sigma = np.sqrt(np.clip(variances, 0.0, None))
    scale = np.where(sigma > 0, sigma, 1.0)
    correlation = covariance / np.outer(scale, scale)
    shifts = np.zeros((len(best), len(model.expected_actualdata(best))))
    for index in np.nonzero(sigma > 0)[0]:
        up, down = best.copy(), best.copy()
        up[index] += sigma[index]
        down[index] -= sigma[index]
        shifts[index] = (np.asarray(model.expected_actualdata(up))
                         - np.asarray(model.expected_actualdata(down))) / 2.0
    return np.einsum("pi,pq,qj->ij", shifts, correlation, shifts)


def _layout(spec: Dict[str, Any], channels: List[List[Any]], yields: np.ndarray,
            shifts: np.ndarray, auxdata: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The simplified workspace: ATLAS' layout (module docstring, step 3: ``shifts`` (K, 1)
    the per-bin uncertainty, no ``auxdata``) or the correlated one (step 3': ``shifts``
    (K, P), ``auxdata`` (P,)); channels in the full workspace's order so that SModelS'
    order-based region matching sees the same order."""
    correlated = auxdata is not None
    names = ([f"{MODE_PREFIX}{k + 1}" for k in range(shifts.shape[1])] if correlated
             else [MODIFIER])
    by_channel: Dict[str, Dict[str, Any]] = {}
    start = 0
    for channel, nbins in channels:
        b = yields[start:start + nbins]
        modifiers = []
        for k, modifier in enumerate(names):
            s = shifts[start:start + nbins, k]
            # ATLAS clips the low variation at zero; the correlated layout stays linear
            low = b - s if correlated else np.clip(b - s, 0.0, None)
            modifiers.append({"name": modifier, "type": "histosys",
                              "data": {"hi_data": (b + s).tolist(), "lo_data": low.tolist()}})
        start += nbins
        by_channel[channel] = {"name": channel, "samples": [{
            "name": SAMPLE, "data": b.tolist(), "modifiers": modifiers}]}
    measurements = []
    for measurement in spec.get("measurements", []):
        config = measurement.get("config", {})
        parameters = [dict(p, fixed=True) for p in config.get("parameters", [])
                      if p.get("name") == "lumi"]
        if correlated:
            parameters += [{"name": modifier, "auxdata": [float(centre)]}
                           for modifier, centre in zip(names, auxdata)]
        measurements.append({"name": measurement["name"],
                             "config": {"poi": config.get("poi", "mu_SIG"),
                                        "parameters": parameters}})
    return {
        "channels": [by_channel[c["name"]] for c in spec["channels"]],
        "observations": copy.deepcopy(spec["observations"]),
        "measurements": measurements,
        "version": spec.get("version", "1.0.0"),
    }


# ---------------------------------------------------------------- the cache

def sha256_file(path: Path) -> str:
    """The sha256 of a file (hex), as the database cache computes it."""
    from ..database import _sha256

    return _sha256(Path(path))


def cache_file(source: Path, digest: str, modes: int = 0) -> Path:
    """Where the simplified version of ``source`` (sha256 ``digest``; ``modes``: its layout,
    as in ``build``) is kept."""
    from ..database import cache_dir

    layout = f"-modes{modes}" if modes else ""
    return cache_dir() / "simplified" / f"{source.stem}-{digest[:16]}{layout}.json"


def _versions() -> Dict[str, str]:
    import iminuit
    import pyhf

    return {"pyhf": pyhf.__version__, "iminuit": iminuit.__version__}


def read_cached(path: Path, digest: str, modes: int = 0) -> Optional[Dict[str, Any]]:
    """The cached record at ``path`` if it is whole, of this schema, made from the source
    with sha256 ``digest`` in the layout ``modes`` by the installed pyhf and iminuit, and
    its workspace validates; None otherwise (with a warning for a file that exists but
    cannot be used)."""
    import pyhf

    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        validate(record, "simplified", str(path), WorkspaceError)
        provenance = record["provenance"]
        problem = None
        if provenance["source_sha256"] != digest:
            problem = "field 'provenance.source_sha256' does not match the source"
        elif provenance.get("modes", 0) != modes:
            problem = f"field 'provenance.modes' is {provenance.get('modes', 0)}, not {modes}"
        elif {k: provenance.get(k) for k in ("pyhf", "iminuit")} != _versions():
            problem = (f"made by pyhf {provenance.get('pyhf')} / iminuit "
                       f"{provenance.get('iminuit')}, installed are {_versions()}")
        if problem is None:
            pyhf.Workspace(record["workspace"])
            return record
    except WorkspaceError as error:  # another version, or damaged: names the JSON path
        logger.warning("%s; rebuilding it", error)
        return None
    except Exception as error:  # unreadable JSON, a workspace pyhf refuses
        problem = f"unusable ({type(error).__name__}: {str(error)[:120]})"
    logger.warning("%s: %s; rebuilding it", path, problem)
    return None


def cached(source: Path, analysis: str = "", modes: int = 0) -> Dict[str, Any]:
    """The simplified workspace of the full workspace file ``source`` in the layout
    ``modes`` (as in ``build``: 0 for ATLAS' one-parameter layout), built once.

    Returns the cache record: ``{"schema", "workspace", "provenance"}``, provenance
    holding the source file, its sha256, the analysis, pyhf and iminuit versions, the
    fit's status and time.  A file lock makes concurrent first use (walkers, tests)
    build it once.  Raises ``WorkspaceError`` when it cannot be built.
    """
    source = Path(source)
    try:
        digest = sha256_file(source)
    except OSError as error:
        raise WorkspaceError(f"{source}: cannot read the full workspace ({error})") from None
    target = cache_file(source, digest, modes)
    record = read_cached(target, digest, modes)
    if record is not None:
        return record
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        record = read_cached(target, digest, modes)  # another process may have built it meanwhile
        if record is not None:
            return record
        label = f"{analysis} {source.name}".strip()
        try:
            spec = json.loads(source.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise WorkspaceError(f"{label}: cannot read {source} ({error})") from None
        # INFO (the default level), like the binary database's build: a minute of silence
        # looks like a hang
        logger.info("%s: building its simplified likelihood (a background-only fit, up "
                    "to a minute), once", label)
        t0 = time.perf_counter()
        simplified = build(spec, name=f"{label} ({source})", modes=modes)
        record = {
            "schema": SCHEMA,
            "workspace": simplified.workspace,
            "provenance": {
                "source": str(source), "source_sha256": digest, "analysis": analysis,
                **_versions(), "fit": simplified.fit,
                "seconds": round(time.perf_counter() - t0, 2),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "bins": int(len(simplified.yields)), "modes": int(modes),
            },
        }
        write_json_atomic(target, record)
        logger.info("%s: simplified in %.0f s (%d parameters -> %d)", label,
                    record["provenance"]["seconds"], simplified.fit["parameters"], max(modes, 1))
    return record
