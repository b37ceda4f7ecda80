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
from typing import Any, Dict, Iterator, List, Optional

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


def build(spec: Dict[str, Any], name: str = "workspace") -> Simplified:
    """The simplified workspace of a full background-only workspace (module docstring).

    ``spec``: a pyhf workspace (dict, JSON schema ``workspace.json`` of pyhf 0.7), with
    or without a signal sample; ``name`` names it in errors.  Returns a ``Simplified``
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
        uncertainties = _propagate(model, best, covariance, name)
        channels = [[channel, int(model.config.channel_nbins[channel])]
                    for channel in model.config.channels]
        simplified = _layout(spec, channels, yields, uncertainties)
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
             "method": "background-only fit of all channels with MINUIT; per-bin "
                       "uncertainty by linear propagation of the fit covariance "
                       "(+-1 sigma variations, symmetrised)"})


def _propagate(model, best: np.ndarray, covariance: np.ndarray, name: str) -> np.ndarray:
    """sigma_i = sqrt(s_i^T rho s_i), s_pi the symmetrised +-1 sigma_p yield shift of bin i
    (module docstring, step 2); fixed parameters (zero variance) contribute nothing."""
    return np.sqrt(np.clip(np.diag(bin_covariance(model, best, covariance, name)), 0.0, None))


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
            uncertainties: np.ndarray) -> Dict[str, Any]:
    """ATLAS' simplified layout (module docstring, step 3), channels in the full
    workspace's order so that SModelS' order-based region matching sees the same order."""
    by_channel: Dict[str, Dict[str, Any]] = {}
    start = 0
    for channel, nbins in channels:
        b = yields[start:start + nbins]
        s = uncertainties[start:start + nbins]
        start += nbins
        by_channel[channel] = {"name": channel, "samples": [{
            "name": SAMPLE, "data": b.tolist(),
            "modifiers": [{"name": MODIFIER, "type": "histosys",
                           "data": {"hi_data": (b + s).tolist(),
                                    "lo_data": np.clip(b - s, 0.0, None).tolist()}}]}]}
    measurements = []
    for measurement in spec.get("measurements", []):
        config = measurement.get("config", {})
        parameters = [dict(p, fixed=True) for p in config.get("parameters", [])
                      if p.get("name") == "lumi"]
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


def cache_file(source: Path, digest: str) -> Path:
    """Where the simplified version of ``source`` (sha256 ``digest``) is kept."""
    from ..database import cache_dir

    return cache_dir() / "simplified" / f"{source.stem}-{digest[:16]}.json"


def _versions() -> Dict[str, str]:
    import iminuit
    import pyhf

    return {"pyhf": pyhf.__version__, "iminuit": iminuit.__version__}


def read_cached(path: Path, digest: str) -> Optional[Dict[str, Any]]:
    """The cached record at ``path`` if it is whole, of this schema, made from the source
    with sha256 ``digest`` by the installed pyhf and iminuit, and its workspace validates;
    None otherwise (with a warning for a file that exists but cannot be used)."""
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


def cached(source: Path, analysis: str = "") -> Dict[str, Any]:
    """The simplified workspace of the full workspace file ``source``, built once.

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
    target = cache_file(source, digest)
    record = read_cached(target, digest)
    if record is not None:
        return record
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        record = read_cached(target, digest)  # another process may have built it meanwhile
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
        simplified = build(spec, name=f"{label} ({source})")
        record = {
            "schema": SCHEMA,
            "workspace": simplified.workspace,
            "provenance": {
                "source": str(source), "source_sha256": digest, "analysis": analysis,
                **_versions(), "fit": simplified.fit,
                "seconds": round(time.perf_counter() - t0, 2),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "bins": int(len(simplified.yields)),
            },
        }
        write_json_atomic(target, record)
        logger.info("%s: simplified in %.0f s (%d parameters -> 1)", label,
                    record["provenance"]["seconds"], simplified.fit["parameters"])
    return record
