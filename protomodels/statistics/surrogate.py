"""Machine-learned surrogates of full pyhf workspaces (issue 14, SPEC section 9).

One surrogate per full workspace: a small fully connected network (scikit-learn's
``MLPRegressor``, tanh, L-BFGS) regresses the four profiled log-likelihood ratios
Delta_D(n) of ``surrogate_data`` (observed, expected, and their Asimov data sets) as a
function of the signal n (events per signal-region bin), after the SModelS
collaboration's study of ML surrogates of full statistical models.  It regresses them
as residuals over a Gaussian simplified likelihood of the workspace (``surrogate_baseline``):
Delta_D(n) = Delta_D^baseline(n) + f(n) - f(0); the baseline's numbers are kept in the
sidecar (field ``baseline``; a sidecar without one has a network of the whole Delta_D).  The network is
stored as ONNX (``model.onnx``, run by onnxruntime; float64 end to end) with a JSON
sidecar (``model.json``, schema ``protomodels.surrogate/1``): input bin names, the
output scaling, the training domain, data sets, metrics and versions, and the sha256 of
its workspace file; a surrogate whose workspace changed is refused.

From the network follow, per signal n (``WorkspaceSurrogate``):

- nll(mu) = -Delta_obs(mu n), relative to mu = 0 (the combiner uses differences only);
- CLs(mu): qtilde with mu-hat in [0, the edge of the training range along n] from
  Delta_D and q_mu,A from Delta_{D,Asimov} (whose mu-hat is 0: the Asimov data of the
  background-only fit)
  (Cowan et al., arXiv:1007.1727, eqs. 16 and 66; pyhf's ``AsymptoticCalculator``:
  CLs+b = Phi(-(t + sqrt(q_A))), CLb = Phi(-t), t = sqrt(q) - sqrt(q_A) if
  sqrt(q) <= sqrt(q_A) else (q - q_A) / (2 sqrt(q_A)));
- the 95% CLs upper limit on mu (D = observed; a-priori expected: D = expected).

The network's constant f(0) is subtracted, so Delta(0) = 0 exactly.  Domain check
(``in_domain``): every bin within the training range (0 up to its maximum) and the
standardised signal no farther from its nearest training signal than ``distance_cut``
(the 99.5% quantile of the held-out signals' nearest-neighbour distances, times 1.5) or
than three times that training signal's own nearest-neighbour spacing (the training
signals, and the zero signal where Delta = 0 exactly, are log-uniform in size, so sparse
at large yields): a convex hull in tens of
dimensions would reject almost everything.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import optimize, special

from ..atomic import read_json_record, write_json_atomic
from ..exceptions import WorkspaceError
from ..schemas import schema_id
from . import surrogate_data as data_mod
from .surrogate_baseline import GaussianBaseline

logger = logging.getLogger(__name__)

SCHEMA = schema_id("surrogate")
HIDDEN = (64, 64, 64)
DEFAULT_SAMPLES = 5000
DEFAULT_HOLDOUT = 500
DISTANCE_QUANTILE, DISTANCE_FACTOR = 0.995, 1.5
#: a signal outside the domain at mu = 1 is still used if it is inside at this many times
#: its upper limit (``in_domain_where_used``): the paper's r_limit (SPEC section 5)
REACH_FACTOR = 1.3
LOCAL_FACTOR = 3.0  # or up to this many times the nearest training signal's own spacing
#: the mu-hat search: this grid times EDGE_FACTOR times the largest mu whose signal stays
#: in the training range (far beyond it the network extrapolates, and a spurious maximum
#: there would make every limit below it infinite), then zoomed (``_maximum``)
MU_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 8)])
#: how far beyond the training range's edge along the signal mu-hat may lie: a held-out
#: EWKinos signal with a large excess had its maximum at 1.9x the edge (capping it there
#: made the limit 2.2x too large), a spurious one of 2018-04 at about 20x
EDGE_FACTOR = 3.0
ZOOM_ROUNDS, ZOOM_SHRINK = 3, 0.25  # of the mu-hat search (``_maximum``)
#: (mu-hat, Delta) of the Asimov data of a background-only fit: mu-hat = 0 by construction
#: (Cowan et al., arXiv:1007.1727, section 5), where Delta = 0 exactly
ASIMOV_FIT = (0.0, 0.0)
UL_RTOL = 1e-4  # of the limit's root search (SModelS' own: 1e-3)
BRACKET_FACTOR = 1.25  # the limit's bracket grows from its first guess by this factor
MU_RANGE = (1e-6, 1e6)  # where the limit's root search looks


def require_onnx() -> None:
    """Raise ``WorkspaceError`` with the install line when onnxruntime or skl2onnx is
    missing (the ``[surrogate]`` extra)."""
    try:
        import onnxruntime  # noqa: F401
        import skl2onnx  # noqa: F401
    except ImportError:
        raise WorkspaceError("surrogates need onnxruntime and skl2onnx: "
                             "pip install 'protomodels[surrogate]'") from None


def model_paths(source: data_mod.WorkspaceSource) -> tuple:
    base = data_mod.folder(source)
    return base / "model.onnx", base / "model.json"


# ---------------------------------------------------------------- training

def train(source: data_mod.WorkspaceSource, samples: int, holdout: int, seed: int,
          hidden: Sequence[int] = HIDDEN,
          baseline: Optional[GaussianBaseline] = None) -> Dict[str, Any]:
    """Fit the network on the first ``samples`` training samples, export it to ONNX and
    write the sidecar; deterministic for a seed (one thread).  With ``baseline`` (the
    default of ``train_workspace``) the network fits Delta_D minus the baseline's
    (module docstring); without, Delta_D itself.  Returns the sidecar.
    Raises ``WorkspaceError`` when data are missing or onnx tools are not installed."""
    require_onnx()
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    bins, x, y, seconds = data_mod.read_split(source, "train", seed, samples)
    _, x_hold, y_hold, _ = data_mod.read_split(source, "holdout",
                                               seed + data_mod.HOLDOUT_OFFSET, holdout)
    if baseline is not None:  # in batches: (D, M, K, P) temporaries
        y = y - np.concatenate([baseline.deltas(x[i:i + 256]) for i in range(0, len(x), 256)])
    y_mean, y_scale = y.mean(axis=0), y.std(axis=0) + 1e-12
    t0 = time.perf_counter()
    with threadpool_limits(1):
        pipeline = make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=tuple(hidden), activation="tanh", solver="lbfgs",
                         alpha=1e-7, max_iter=20000, max_fun=40000, tol=1e-12,
                         random_state=seed))
        pipeline.fit(x, (y - y_mean) / y_scale)
    fit_seconds = time.perf_counter() - t0
    onnx_path, json_path = model_paths(source)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    _export(pipeline, len(bins), onnx_path)
    scaler = pipeline[0]
    z_train = (x - scaler.mean_) / scaler.scale_
    z_hold = (x_hold - scaler.mean_) / scaler.scale_
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(z_train).query(z_hold)
    sidecar = {
        "schema": SCHEMA, "analysis": source.analysis, "workspace": source.file_name,
        "workspace_sha256": source.sha256, "bins": bins, "datasets": list(data_mod.DATASETS),
        "output_mean": y_mean.tolist(), "output_scale": y_scale.tolist(),
        "domain": {"max_events": x.max(axis=0).tolist(),
                   "input_mean": scaler.mean_.tolist(), "input_scale": scaler.scale_.tolist(),
                   "distance_cut": float(DISTANCE_FACTOR * np.quantile(distances, DISTANCE_QUANTILE)),
                   "points": np.round(z_train, 6).tolist()},
        "training": {"samples": int(len(x)), "holdout": int(len(x_hold)), "seed": seed,
                     "hidden": list(hidden), "seconds_per_sample": round(seconds, 4),
                     "fit_seconds": round(fit_seconds, 1),
                     "iterations": int(pipeline[-1].n_iter_)},
        "versions": _versions(),
    }
    if baseline is not None:
        sidecar["baseline"] = baseline.to_json()
    write_json_atomic(json_path, sidecar)
    return sidecar


def _export(pipeline, inputs: int, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    onnx_model = to_onnx(pipeline, initial_types=[("signal", DoubleTensorType([None, inputs]))],
                         target_opset=17)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(onnx_model.SerializeToString())
    tmp.replace(path)


def _versions() -> Dict[str, str]:
    import onnxruntime
    import pyhf
    import skl2onnx
    import sklearn

    return {"pyhf": pyhf.__version__, "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__, "onnxruntime": onnxruntime.__version__}


# ---------------------------------------------------------------- use

@dataclass
class DomainCheck:
    """Is a signal (events per bin) inside a surrogate's training domain, and if not, why."""

    in_domain: bool
    reason: str = ""
    #: {expected: upper limit} where the check computed them (``in_domain_where_used``)
    limits: Dict[bool, Optional[float]] = field(default_factory=dict)


class WorkspaceSurrogate:
    """A trained surrogate, loaded (one onnxruntime session, one thread)."""

    def __init__(self, onnx_path: Path, sidecar: Dict[str, Any]):
        from scipy.spatial import cKDTree

        self.onnx_bytes = Path(onnx_path).read_bytes()
        self._session, self._pid = None, None
        self.sidecar = sidecar
        self.analysis, self.workspace = sidecar["analysis"], sidecar["workspace"]
        self.bins: List[str] = list(sidecar["bins"])
        self.index = {name: i for i, name in enumerate(self.bins)}
        self.y_mean = np.asarray(sidecar["output_mean"])
        self.y_scale = np.asarray(sidecar["output_scale"])
        domain = sidecar["domain"]
        self.max_events = np.asarray(domain["max_events"])
        self.x_mean = np.asarray(domain["input_mean"])
        self.x_scale = np.asarray(domain["input_scale"])
        self.distance_cut = float(domain["distance_cut"])
        # the training signals and the zero signal (where Delta = 0 holds exactly)
        points = np.asarray(domain["points"], dtype=float)
        self.tree = cKDTree(np.vstack([points, -self.x_mean / self.x_scale]))
        # each training signal's distance to its nearest neighbour: the local spacing
        self.spacing = self.tree.query(self.tree.data, k=2)[0][:, 1] if self.tree.n > 1 \
            else np.zeros(self.tree.n)
        self.baseline = GaussianBaseline.from_json(sidecar.get("baseline"))
        self.offset = np.zeros(len(self.y_mean))
        self.offset = self._network(np.zeros((1, len(self.bins))))[0]
        self._session = None  # created again where it is used (after any fork)

    @classmethod
    def load(cls, source: data_mod.WorkspaceSource) -> Optional["WorkspaceSurrogate"]:
        """The trained surrogate of ``source``, None when there is none; raises
        ``WorkspaceError`` when its sidecar is of another version, does not match its
        schema (``surrogate``) or was trained for another version of the workspace."""
        onnx_path, json_path = model_paths(source)
        if not (onnx_path.is_file() and json_path.is_file()):
            return None
        require_onnx()
        sidecar = read_json_record(json_path, SCHEMA, WorkspaceError, "surrogate sidecar")
        if sidecar["workspace_sha256"] != source.sha256:
            raise WorkspaceError(f"{json_path}: field 'workspace_sha256' is "
                                 f"{sidecar.get('workspace_sha256')!r} but {source.path} has "
                                 f"{source.sha256}; retrain it")
        return cls(onnx_path, sidecar)

    @property
    def session(self):
        """This process' onnxruntime session (one thread), created on first use after any
        fork: a session is never shared by forked walkers."""
        if self._session is None or self._pid != os.getpid():
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(self.onnx_bytes, options,
                                                         providers=["CPUExecutionProvider"])
            self._pid = os.getpid()
            self.input_name = self._session.get_inputs()[0].name
        return self._session

    def _network(self, signals: np.ndarray) -> np.ndarray:
        """The network's f(n) - f(0), shape (M, 4)."""
        session = self.session
        out = session.run(None, {self.input_name: np.asarray(signals, dtype=np.float64)})[0]
        return np.asarray(out).reshape(len(signals), -1) * self.y_scale + self.y_mean - self.offset

    def deltas(self, signals: np.ndarray, columns: Optional[Sequence[int]] = None) -> np.ndarray:
        """Delta_D for ``DATASETS`` (all, or the indices ``columns``) of signals (rows:
        events per bin, ``bins`` order), shape (M, 4 or len(columns)); Delta_D(0) = 0."""
        signals = np.atleast_2d(signals)
        out = self._network(signals)
        if columns is not None:
            out = out[:, list(columns)]
        return out if self.baseline is None else out + self.baseline.deltas(signals, columns)

    def vector(self, signal: Dict[str, float]) -> np.ndarray:
        """A signal dict (region -> events) as the input vector (absent regions: 0)."""
        return np.array([float(signal.get(b, 0.0)) for b in self.bins])

    def in_domain(self, signal: np.ndarray) -> DomainCheck:
        """Is the signal (events per bin) inside the training domain (module docstring)?"""
        signal = np.asarray(signal, dtype=float)
        if np.any(signal < 0) or np.any(signal > self.max_events):
            return DomainCheck(False, "a bin outside the training range")
        distance, nearest = self.tree.query((signal - self.x_mean) / self.x_scale)
        cut = max(self.distance_cut, LOCAL_FACTOR * float(self.spacing[nearest]))
        if distance > cut:
            return DomainCheck(False, f"{distance:.2g} from the training signals "
                                      f"(cut {cut:.2g})")
        return DomainCheck(True)

    def in_domain_where_used(self, signal: np.ndarray) -> DomainCheck:
        """``in_domain`` of the signal at mu = 1 or, when that fails, at ``REACH_FACTOR``
        times the larger of its two upper limits if that is below 1.  A model that this
        result excludes is evaluated by the critic and K only up to mu_max = r_limit /
        r_max <= r_limit x this limit (SPEC section 5), never at mu = 1; the reason then
        says up to which mu the signal is inside."""
        check = self.in_domain(signal)
        if check.in_domain:
            return check
        limits = {e: self.upper_limit(signal, expected=e) for e in (False, True)}
        if any(u is None for u in limits.values()) or REACH_FACTOR * max(limits.values()) >= 1.0:
            return check
        reach = REACH_FACTOR * max(limits.values())
        if not self.in_domain(reach * np.asarray(signal, dtype=float)).in_domain:
            return check
        return DomainCheck(True, f"inside up to mu = {reach:.3g}; at mu = 1 {check.reason}",
                           limits)

    def nll(self, mu: np.ndarray | float, signal: np.ndarray) -> np.ndarray | float:
        """-Delta_obs(mu x signal): -ln L(mu) relative to mu = 0, vectorised in mu."""
        mus = np.atleast_1d(np.asarray(mu, dtype=float))
        values = -self.deltas(np.outer(mus, signal), columns=[0])[:, 0]
        return values if np.ndim(mu) else float(values[0])

    def cls(self, mu: float, signal: np.ndarray, expected: bool = False) -> float:
        """Asymptotic qtilde CLs of mu x signal (module docstring); ``expected``: the
        a-priori expected data set (background yields) instead of the observed one."""
        column = 1 if expected else 0
        return asymptotic_cls(*self._q_values(mu, signal, column, self._maximum(signal, column)))

    def _maximum(self, signal: np.ndarray, column: int) -> tuple:
        """(mu-hat, Delta_D(mu-hat x signal)), 0 <= mu-hat <= ``EDGE_FACTOR`` x the
        training range's edge along the signal.

        ``MU_GRID`` in one call finds the best grid point; then ``ZOOM_ROUNDS`` rounds
        each evaluate, in one call, the points a step either side of the best so far and
        move to the vertex of the parabola through the best three, the step shrinking
        by ``ZOOM_SHRINK`` per round: at most 18 signals (rows) of the network and the
        baseline, whose cost grows with the rows, where the former grid-and-polish took
        28."""
        signal = np.asarray(signal, dtype=float)
        filled = signal > 0
        edge = float(np.min(self.max_events[filled] / signal[filled])) if np.any(filled) else 1.0
        grid = MU_GRID * EDGE_FACTOR * edge

        def at(mus) -> np.ndarray:
            return self.deltas(np.outer(mus, signal), columns=[column])[:, 0]

        mus, values = list(grid), list(at(grid))
        i = int(np.argmax(values))
        best, step = mus[i], 0.25 * (grid[min(i + 1, len(grid) - 1)] - grid[max(i - 1, 0)])
        for _ in range(ZOOM_ROUNDS):
            trial = [m for m in (best - step, best + step) if 0.0 <= m <= grid[-1]]
            mus += trial
            values += list(at(trial))
            order = np.argsort(mus)
            xs, ys = np.asarray(mus)[order], np.asarray(values)[order]
            j = int(np.argmax(ys))
            best = float(xs[j])
            if 0 < j < len(xs) - 1:
                vertex = parabola_vertex(xs[j - 1:j + 2], ys[j - 1:j + 2])
                if vertex is not None:
                    mus.append(vertex)
                    values.append(float(at([vertex])[0]))
                    if values[-1] > ys[j]:
                        best = vertex
            step *= ZOOM_SHRINK
        j = int(np.argmax(values))
        return float(mus[j]), float(values[j])

    def upper_limit(self, signal: np.ndarray, expected: bool = False,
                    cl: float = 0.95) -> Optional[float]:
        """The CLs upper limit on mu for ``signal``: None for a zero signal or when CLs
        stays above 1 - cl up to mu = 1e6, 1e-6 when it is below already there
        (``MU_RANGE``).

        The root search starts where the asymptotic formulae with a Gaussian likelihood
        put the limit (``gaussian_limit``: mu-hat, and the width sigma = mu / sqrt(q_A(mu))
        read off the Asimov data set at mu = 1), moves that guess once with the width at
        the guess, brackets the root from there and polishes it with Brent's method."""
        signal = np.asarray(signal, dtype=float)
        if not np.any(signal > 0):
            return None
        alpha = 1.0 - cl
        column = 1 if expected else 0
        fit = self._maximum(signal, column)
        known: Dict[float, tuple] = {}

        def evaluate(mu: float) -> tuple:
            if mu not in known:  # brentq asks for the bracket's ends again
                known[mu] = self._q_values(mu, signal, column, fit)
            return known[mu]

        def excess(mu: float) -> float:
            return asymptotic_cls(*evaluate(mu)) - alpha

        guess, guessed = 1.0, False
        for _ in range(2):  # the guess, then the guess with the width measured there
            q_asimov = evaluate(guess)[1]
            if not q_asimov > 0:
                break
            new = gaussian_limit(fit[0], guess / math.sqrt(q_asimov), alpha)
            if not MU_RANGE[0] < new < MU_RANGE[1]:
                break  # keep the last usable guess
            guess, guessed = new, True
        # the bracket grows from the guess by BRACKET_FACTOR, squared at every step (from
        # mu = 1 without a guess by 3, 9, 81, ...): a few steps to either end of MU_RANGE
        factor = BRACKET_FACTOR if guessed else 3.0
        lo = hi = guess
        if excess(guess) > 0:
            while excess(hi) > 0:  # CLs falls with mu: the root lies above
                if hi >= MU_RANGE[1]:
                    return None
                lo, hi = hi, min(hi * factor, MU_RANGE[1])
                factor *= factor
        else:
            while excess(lo) <= 0:
                if lo <= MU_RANGE[0]:
                    return lo
                lo, hi = max(lo / factor, MU_RANGE[0]), lo
                factor *= factor
        return float(optimize.brentq(excess, lo, hi, rtol=UL_RTOL, xtol=1e-9))

    def _q_values(self, mu: float, signal: np.ndarray, column: int, fit: tuple) -> tuple:
        """(qtilde, qtilde on the Asimov data) of mu x signal given the data set's maximum
        (``_maximum``); on the Asimov data set the maximum is ``ASIMOV_FIT``."""
        d, d_asimov = self.deltas(mu * np.asarray(signal)[None], columns=[column, column + 2])[0]
        q = 0.0 if fit[0] > mu else max(0.0, 2.0 * (fit[1] - d))
        return q, max(0.0, 2.0 * (ASIMOV_FIT[1] - d_asimov))


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """The abscissa of the vertex of the parabola through three points (xs increasing),
    None when they are collinear or the vertex falls outside [xs[0], xs[2]]."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if denominator == 0:
        return None
    vertex = float(x1 - 0.5 * numerator / denominator)
    return vertex if x0 < vertex < x2 else None


def gaussian_limit(mu_hat: float, sigma: float, alpha: float = 0.05) -> float:
    """The CLs upper limit of a Gaussian likelihood in mu (mu-hat, width sigma) with the
    asymptotic qtilde formulae (``asymptotic_cls`` with q = ((mu - mu-hat) / sigma)^2 for
    mu >= mu-hat, q_A = (mu / sigma)^2; Cowan et al., arXiv:1007.1727): the root search's
    first guess in ``WorkspaceSurrogate.upper_limit``.  alpha < 0.5; NaN for a width
    that is not positive and finite."""
    mu_hat = max(mu_hat, 0.0)
    if not 0 < sigma < math.inf:
        return math.nan

    def excess(mu: float) -> float:
        return asymptotic_cls(((mu - mu_hat) / sigma) ** 2, (mu / sigma) ** 2) - alpha

    offset = 3.0 * sigma  # doubled until CLs is below alpha there
    for _ in range(60):
        if excess(mu_hat + offset) <= 0:
            return float(optimize.brentq(excess, max(mu_hat, 1e-9 * sigma), mu_hat + offset,
                                         rtol=1e-6))
        offset *= 2.0
    return math.nan


def asymptotic_cls(q: float, q_asimov: float) -> float:
    """CLs from qtilde and its Asimov value (pyhf ``AsymptoticCalculator``, qtilde)."""
    sq, sqa = math.sqrt(q), math.sqrt(q_asimov)
    if sqa <= 0:
        return 1.0
    t = sq - sqa if sq <= sqa else (q - q_asimov) / (2.0 * sqa)
    return float(math.exp(special.log_ndtr(-(t + sqa)) - special.log_ndtr(-t)))


# ---------------------------------------------------------------- validation

STRATA = ((-math.inf, 1.0), (1.0, 4.0), (4.0, 10.0), (10.0, math.inf))  # in -2 Delta_obs


def _errors(errors: np.ndarray) -> Dict[str, Any]:
    if not len(errors):
        return {"count": 0, "median": None, "p95": None}
    return {"count": int(len(errors)), "median": round(float(np.median(errors)), 5),
            "p95": round(float(np.quantile(errors, 0.95)), 5)}


def validate(expresult, source: data_mod.WorkspaceSource, ul_signals: int = 60,
             backend: str = "jax", progress=None, database: Optional[str] = None,
             cluster: Optional[str] = None, jobs: Optional[int] = None) -> Dict[str, Any]:
    """Accuracy and speed of a trained surrogate on its held-out signals: |error| of
    -2 Delta per data set and per stratum of -2 Delta_obs; observed and expected upper
    limits against pyhf's (``surrogate_data.reference_limits``: SModelS' root search on
    the full workspace, kept in the cache, here or as Dask tasks with ``cluster``) for
    ``ul_signals`` held-out signals spread evenly over -2 Delta_obs, each marked in or
    outside the surrogate's domain; the time of one nll evaluation and of one upper
    limit.  ``database``: what Dask workers load (the client's database).  Stored in the
    sidecar ("validation") and returned.  Raises ``WorkspaceError`` when the surrogate or
    its data are missing or pyhf's limits failed, ``RunError`` when Dask is missing."""
    surrogate = WorkspaceSurrogate.load(source)
    if surrogate is None:
        raise WorkspaceError(f"{source.analysis} {source.file_name}: no trained surrogate; "
                             f"run `protomodels surrogate train {source.analysis}`")
    training = surrogate.sidecar["training"]
    seed = training["seed"] + data_mod.HOLDOUT_OFFSET
    _, x, y, _ = data_mod.read_split(source, "holdout", seed, training["holdout"])
    predicted = surrogate.deltas(x)
    errors = 2.0 * np.abs(predicted - y)
    minus2 = -2.0 * y[:, 0]
    report: Dict[str, Any] = {
        "datasets": {name: _errors(errors[:, k]) for k, name in enumerate(data_mod.DATASETS)},
        "strata": [{"range": [lo, hi], **_errors(errors[(minus2 >= lo) & (minus2 < hi), 0])}
                   for lo, hi in STRATA],
    }
    # upper limits: signals evenly spread in -2 Delta_obs, pyhf's against the surrogate's
    order = np.argsort(minus2)
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(ul_signals, len(order))).astype(int))]
    references = data_mod.reference_limits(database, expresult, source, surrogate.bins,
                                           x[picks], backend, cluster=cluster, jobs=jobs,
                                           progress=progress)
    inside = [surrogate.in_domain(signal).in_domain for signal in x]
    rows = []
    for i, reference in zip(picks, references):
        row = {"minus2_delta": round(float(minus2[i]), 4), "in_domain": inside[i]}
        for which, expected in (("obs", False), ("exp", True)):
            row[which] = [reference[which], surrogate.upper_limit(x[i], expected=expected)]
        rows.append(row)
    report["upper_limits"] = _limit_summary(rows)
    report["upper_limit_rows"] = rows
    report["timing"] = _timing(surrogate, x[picks[len(picks) // 2]])
    report["domain_share"] = round(float(np.mean(inside)), 4)
    _, json_path = model_paths(source)
    sidecar = dict(surrogate.sidecar, validation=report)
    write_json_atomic(json_path, sidecar)
    return report


def _limit_summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per limit (obs, exp): how many surrogate limits are within 10% of pyhf's, over all
    compared signals and over those inside the surrogate's domain (outside it
    ``--likelihood surrogate`` falls back, so those limits are never used)."""
    out = {}
    for which in ("obs", "exp"):
        pairs = [(r[which], r.get("in_domain", True)) for r in rows
                 if r[which][0] and r[which][1]]
        ratios = np.array([b / a for (a, b), _ in pairs])
        inside = np.array([flag for _, flag in pairs], dtype=bool)
        close = np.abs(ratios - 1) <= 0.1
        out[which] = {"count": len(pairs), "missing": len(rows) - len(pairs),
                      "within_10pct": round(float(np.mean(close)), 4) if len(ratios) else None,
                      "in_domain": int(inside.sum()),
                      "within_10pct_in_domain": round(float(np.mean(close[inside])), 4)
                      if inside.any() else None,
                      "median_ratio": round(float(np.median(ratios)), 4) if len(ratios) else None,
                      "worst_ratio": round(float(ratios[np.argmax(np.abs(ratios - 1))]), 4)
                      if len(ratios) else None}
    return out


def _timing(surrogate: WorkspaceSurrogate, signal: np.ndarray, repeats: int = 200) -> Dict[str, float]:
    """Median seconds of one nll(mu) evaluation and of one observed upper limit."""
    nll_times, ul_times = [], []
    for k in range(repeats):
        t0 = time.perf_counter()
        surrogate.nll(1.0 + 1e-3 * k, signal)
        nll_times.append(time.perf_counter() - t0)
    for k in range(max(repeats // 10, 5)):
        t0 = time.perf_counter()
        surrogate.upper_limit(signal * (1.0 + 1e-3 * k))
        ul_times.append(time.perf_counter() - t0)
    return {"nll_ms": round(1e3 * float(np.median(nll_times)), 4),
            "upper_limit_ms": round(1e3 * float(np.median(ul_times)), 3)}


def trained(db) -> List[tuple]:
    """(expresult, source, sidecar) of every full workspace with a trained surrogate."""
    out = []
    for expresult in db.smodels.expResultList:
        if not hasattr(expresult.globalInfo, "jsonFiles"):
            continue
        for source in data_mod.full_workspaces(expresult):
            _, json_path = model_paths(source)
            if json_path.is_file():
                out.append((expresult, source, read_json_record(
                    json_path, SCHEMA, WorkspaceError, "surrogate sidecar")))
    return out


# ---------------------------------------------------------------- commands

def train_workspace(database: Optional[str], analysis: str, workspace: Optional[str] = None,
                    samples: int = DEFAULT_SAMPLES, holdout: int = DEFAULT_HOLDOUT,
                    seed: int = 1, backend: str = "jax", cluster: Optional[str] = None,
                    jobs: Optional[int] = None, progress=None) -> Dict[str, Any]:
    """``protomodels surrogate train``: the training data (resumable; here or on a Dask
    cluster), then the network.  Returns the sidecar plus the data's wall time."""
    require_onnx()
    outcome = data_mod.generate(database, analysis, workspace, samples, holdout, seed,
                                backend=backend, cluster=cluster, jobs=jobs, progress=progress)
    sidecar = train(outcome["source"], samples, holdout, seed, baseline=outcome["baseline"])
    sidecar["data_wall_seconds"] = round(outcome["seconds"], 1)
    sidecar["data_chunks_computed"] = outcome["computed"]
    return sidecar


def validate_all(database: Optional[str], patterns: Sequence[str] = ("*",),
                 ul_signals: int = 60, backend: str = "jax", progress=None,
                 cluster: Optional[str] = None,
                 jobs: Optional[int] = None) -> List[Dict[str, Any]]:
    """``protomodels surrogate validate``: ``validate`` for every trained surrogate whose
    analysis matches ``patterns``; one summary row each."""
    import fnmatch

    from ..loader import load_database

    db = load_database(database, "full")
    rows = []
    for expresult, source, _ in trained(db):
        if not any(fnmatch.fnmatchcase(source.analysis, p) for p in patterns):
            continue
        report = validate(expresult, source, ul_signals=ul_signals, backend=backend,
                          progress=progress, database=database, cluster=cluster, jobs=jobs)
        rows.append({"analysis": source.analysis, "workspace": source.file_name,
                     **{k: v for k, v in report.items() if k != "upper_limit_rows"}})
    return rows


def format_validation(rows: List[Dict[str, Any]]) -> str:
    """The accuracy and speed table of ``validate_all``."""
    if not rows:
        return "no trained surrogate matches; train one with `protomodels surrogate train ANALYSIS`"
    lines = [f"{'workspace':<40} {'held-out':>8} {'|d(-2lnL)| med':>15} {'p95':>8} "
             f"{'UL obs<=10%':>11} {'UL exp<=10%':>11} {'nll ms':>7} {'UL ms':>6} {'domain':>6}"]
    for r in rows:
        obs = r["datasets"]["observed"]
        uls = r["upper_limits"]
        lines.append(f"{r['analysis'] + ':' + r['workspace']:<40} {obs['count']:>8} "
                     f"{obs['median']:>15.4f} {obs['p95']:>8.4f} "
                     f"{_pct(uls['obs']['within_10pct']):>11} {_pct(uls['exp']['within_10pct']):>11} "
                     f"{r['timing']['nll_ms']:>7.3f} {r['timing']['upper_limit_ms']:>6.2f} "
                     f"{_pct(r['domain_share']):>6}")
        strata = ", ".join(f"[{s['range'][0]:g},{s['range'][1]:g}): n={s['count']} "
                           f"med {s['median']} p95 {s['p95']}" for s in r["strata"] if s["count"])
        lines.append(f"    by -2 Delta_obs: {strata}")
        lines.append(f"    limits of {uls['obs']['count']} signals, {uls['obs']['in_domain']} "
                     f"inside the domain: within 10% there obs "
                     f"{_pct(uls['obs']['within_10pct_in_domain'])}, exp "
                     f"{_pct(uls['exp']['within_10pct_in_domain'])}; worst ratio obs "
                     f"{uls['obs']['worst_ratio']}, exp {uls['exp']['worst_ratio']}")
    return "\n".join(lines)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


# ---------------------------------------------------------------- --likelihood surrogate

ATTACHED = "_protomodels_surrogates"  # on a result's globalInfo: its ResultSurrogates
#: how often a pyhf result's statistics came from a surrogate or fell back (per process)
USAGE: Dict[str, int] = {"surrogate": 0, "outside domain": 0, "not trained": 0}


@dataclass
class ResultSurrogates:
    """The full workspaces of one pyhf result: their signal regions and surrogates (None
    where none is trained)."""

    analysis: str
    files: List[str]
    regions: List[List[str]]
    surrogates: List[Optional[WorkspaceSurrogate]]

    def describe(self) -> str:
        have = [f for f, s in zip(self.files, self.surrogates) if s is not None]
        return f"surrogate for {', '.join(have)}" if have else "no surrogate trained"


def attach(db) -> Dict[str, ResultSurrogates]:
    """Load the trained surrogates of every pyhf result's full workspaces and attach them
    to the results (``--likelihood surrogate``).  Raises ``WorkspaceError`` for a
    surrogate of another workspace version or schema, or without onnxruntime."""
    attached = {}
    for expresult in db.smodels.expResultList:
        info = expresult.globalInfo
        if not hasattr(info, "jsonFiles"):
            continue
        sources = data_mod.full_workspaces(expresult)
        if not sources:
            continue
        chosen = ResultSurrogates(info.id, [s.file_name for s in sources],
                                  [list(s.signal_regions) for s in sources],
                                  [WorkspaceSurrogate.load(s) for s in sources])
        setattr(info, ATTACHED, chosen)
        attached[info.id] = chosen
    return attached


def detach(db) -> None:
    for expresult in db.smodels.expResultList:
        if hasattr(expresult.globalInfo, ATTACHED):
            delattr(expresult.globalInfo, ATTACHED)


def attached_to(expresult) -> Optional[ResultSurrogates]:
    return getattr(expresult.globalInfo, ATTACHED, None)


class SignalSurrogate:
    """A prediction's statistics from the surrogates of its result: the workspace with the
    lowest expected upper limit among those with signal (SModelS' rule for several
    workspaces), all of which must have a surrogate with the signal in its domain;
    ``usable`` False (with ``reason``) otherwise, and the caller falls back."""

    def __init__(self, result: ResultSurrogates, signal: Dict[str, float]):
        self.usable, self.reason = False, ""
        candidates = []
        for name, regions, surrogate in zip(result.files, result.regions, result.surrogates):
            if not any(signal.get(r, 0.0) > 0 for r in regions):
                continue
            if surrogate is None:
                self.reason = f"not trained: {name}"
                USAGE["not trained"] += 1
                return
            vector = surrogate.vector(signal)
            check = surrogate.in_domain_where_used(vector)
            if not check.in_domain:
                self.reason = f"outside domain of {name}: {check.reason}"
                USAGE["outside domain"] += 1
                return
            candidates.append((surrogate, vector, dict(check.limits)))
        if not candidates:
            self.reason = "no signal in the full workspaces"
            return
        if len(candidates) > 1:
            limits = [_limit(candidate, True) for candidate in candidates]
            candidates = [candidates[int(np.argmin([math.inf if u is None else u
                                                    for u in limits]))]]
        self.surrogate, self.vector, self.limits = candidates[0]
        self.usable = True
        USAGE["surrogate"] += 1

    def nll(self, mu: float) -> float:
        return float(self.surrogate.nll(mu, self.vector))

    def upper_limit(self, expected: bool) -> Optional[float]:
        """Upper limit on mu (multiply by the predicted sigma x eff for fb), computed
        once: the domain check or the choice of workspace may have done it already."""
        return _limit((self.surrogate, self.vector, self.limits), expected)


def _limit(candidate: tuple, expected: bool) -> Optional[float]:
    """A (surrogate, signal vector, {expected: limit}) candidate's limit, kept in its dict."""
    surrogate, vector, limits = candidate
    if expected not in limits:
        limits[expected] = surrogate.upper_limit(vector, expected=expected)
    return limits[expected]
