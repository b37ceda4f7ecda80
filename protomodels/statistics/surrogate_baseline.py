"""The Gaussian baseline of a workspace surrogate (issue 14).

A surrogate's network does not learn the profiled log-likelihood ratios Delta_D(n) of a
full workspace (``surrogate_data``) from scratch: it learns their difference from the same
ratios in a simplified likelihood of the workspace, which already holds most of their
size and shape:

    Delta_D(n) = Delta_D^baseline(n) + [f(n) - f(0)]

with f the network.  Targets of tens of units (signals beyond the limit) become
residuals of order one, which a small network fits far more closely.

The baseline is a Gaussian approximation of the full likelihood around its
background-only fit, with the Poisson terms of the bins kept exact (the simplified
likelihoods of CMS-NOTE-2017-001, made consistent with the post-fit state).  Per bin k of
the channels SModelS keeps and data set D (``surrogate_data.DATASETS``: observed,
a-priori expected, and the Asimov data of the full workspace's background-only fit to
each):

    -ln L_D(n, theta, eta) = sum_k [lambda_k - d_k ln lambda_k]
                             + theta^T A_D theta / 2 + a_D . theta + eta^2 / 2,
    lambda_k = b_k + sum_p V_kp theta_p + n_k (1 + u eta),

with d_k the data set's counts, b_k the background of the full workspace's
background-only fit to it (its Asimov counts: the observed data's fit for ``observed``
and ``observed_asimov``, the expected data's for the other two), V the leading P modes
of the post-fit covariance Sigma of the bin yields (propagated linearly from MINUIT's,
``simplified.bin_covariance``; V V^T = Sigma on the kept modes), u SModelS' relative
signal uncertainty (its ``signalUncertainty`` histosys, parameter eta; 0 where the result
has none).  A_D = 1 - V^T diag(d/b^2) V and a_D = V^T (d/b - 1) make theta = 0 the
minimum at n = 0 with the post-fit covariance as its inverse Hessian: the data already
in the fit are not counted twice.  The modes are the principal components of Sigma in
units of each bin's Poisson width (Sigma_kl / sqrt((b_k + 1)(b_l + 1))): a bin with a
small but data-sized uncertainty matters more than a large one in a bin of thousands of
events.  -ln L is minimised over (theta, eta) by Newton's method (steps halved while
some lambda would not be positive), vectorised over signals and data sets.
Delta_D^baseline(0) = 0 by construction.

Measured on 100 training signals of ATLAS-SUSY-2018-16's 44-bin EWKinos workspace,
|-2 Delta| residuals on the observed data (median, 95th percentile): ATLAS' one-parameter
simplified likelihood (ATL-PHYS-PUB-2021-038) 0.57, 3.4; the Gaussian one with the
post-fit covariance as a prior (data counted twice) 0.50, 4.7; this one with 20 modes
0.06, 0.62, with all 44 modes 0.004, 1.5 (for the large signals the full likelihood is
far from Gaussian: those the network learns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..exceptions import WorkspaceError

TINY = 1e-12  # floor of the expected events of a bin
NEWTON_TOLERANCE, NEWTON_STEPS = 1e-7, 60  # on the parameters: Delta to ~1e-12
MAX_MODES = 20  # principal components of the bins' covariance kept
PRECISION_FLOOR = 1e-3  # eigenvalues of A_D below this are raised to it


@dataclass
class GaussianBaseline:
    """A full workspace's Gaussian simplified likelihood, the surrogate's baseline.

    ``positions``: (N,) index among the K bins of each of the surrogate's N input bins;
    ``background``: (D, K) or (K,) the background under each data set, events;
    ``modes``: (K, P) the bins' shift per unit of each nuisance parameter, events;
    ``data``: (D, K) the bins' counts of each data set (``surrogate_data.DATASETS``);
    ``signal_uncertainty``: u, relative (0: none);
    ``precision``, ``linear``: (D, P, P) and (D, P), A_D and a_D of the module
    docstring; None: computed from the others (the consistent choice).
    """

    positions: np.ndarray
    background: np.ndarray
    modes: np.ndarray
    data: np.ndarray
    signal_uncertainty: float = 0.0
    precision: Optional[np.ndarray] = None
    linear: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=int)
        self.data = np.atleast_2d(np.asarray(self.data, dtype=float))
        self.background = np.array(np.broadcast_to(np.asarray(self.background, dtype=float),
                                                   self.data.shape))
        self.modes = np.asarray(self.modes, dtype=float).reshape(self.data.shape[1], -1)
        self.size = self.data.shape[1]  # K, the bins
        count = self.modes.shape[1]
        if self.precision is None or self.linear is None:
            self.precision, self.linear = self._consistent()
        precision = np.asarray(self.precision, dtype=float).reshape(len(self.data), count, count)
        self.precision = 0.5 * (precision + np.swapaxes(precision, 1, 2))
        self.linear = np.asarray(self.linear, dtype=float).reshape(len(self.data), count)
        # ln d! and the like cancel in Delta; -ln L at n = 0, per data set
        self.reference = self._minimum(np.zeros((1, self.size)), range(len(self.data)))[:, 0]

    def _consistent(self):
        """A_D and a_D (module docstring): theta = 0 the minimum at n = 0, and the post-fit
        covariance its inverse Hessian unless an eigenvalue of A_D had to be raised to
        ``PRECISION_FLOOR`` (the linear propagation is not exact)."""
        count = self.modes.shape[1]
        precision = np.empty((len(self.data), count, count))
        linear = np.empty((len(self.data), count))
        for i, (d, b) in enumerate(zip(self.data, self.background)):
            b = np.maximum(b, TINY)
            matrix = np.eye(count) - self.modes.T @ (self.modes * (d / b ** 2)[:, None])
            values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
            precision[i] = (vectors * np.maximum(values, PRECISION_FLOOR)) @ vectors.T
            linear[i] = self.modes.T @ (d / b - 1.0)
        return precision, linear

    # ------------------------------------------------------------------ (de)serialise

    def to_json(self) -> Dict[str, Any]:
        return {"positions": self.positions.tolist(), "background": self.background.tolist(),
                "modes": self.modes.tolist(), "data": self.data.tolist(),
                "signal_uncertainty": self.signal_uncertainty,
                "precision": self.precision.tolist(), "linear": self.linear.tolist(),
                "likelihood": "Poisson bins, rates background + modes . theta + signal x "
                              "(1 + signal_uncertainty eta); theta^T precision theta / 2 + "
                              "linear . theta + eta^2 / 2; theta, eta profiled"}

    @classmethod
    def from_json(cls, record: Optional[Dict[str, Any]]) -> Optional["GaussianBaseline"]:
        if not record:
            return None
        return cls(record["positions"], record["background"], record["modes"],
                   record["data"], float(record.get("signal_uncertainty", 0.0)),
                   record.get("precision"), record.get("linear"))

    @classmethod
    def from_generator(cls, generator, datasets: Sequence[str]) -> "GaussianBaseline":
        """The baseline of ``generator``'s full workspace (``surrogate_data.Generator``,
        which holds the statistical model SModelS uses and the data sets): one
        background-only fit to the observed data with MINUIT, its covariance propagated
        to the bins (``simplified.bin_covariance``).  Raises ``WorkspaceError`` when the
        fit fails or its covariance is not positive."""
        import warnings

        from .fixed_signal import SHAPEFACTOR_PREFIX
        from .simplified import bin_covariance, minuit_backend

        fit = generator.fit
        label = f"{generator.source.analysis} {generator.source.file_name}"
        config = fit.model.config
        init, bounds = fit.parameters({})
        with minuit_backend() as pyhf, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result, minimum = pyhf.infer.mle.fixed_poi_fit(
                    0.0, generator.data["observed"], fit.model, init_pars=init,
                    par_bounds=bounds, fixed_params=fit.fixed, return_uncertainties=True,
                    return_result_obj=True)
            except Exception as error:
                raise WorkspaceError(f"{label}: the background-only fit failed "
                                     f"({type(error).__name__}: {str(error)[:200]})") from None
            if not minimum.minuit.valid or minimum.hess_inv is None:
                raise WorkspaceError(f"{label}: the background-only fit did not converge "
                                     f"(MINUIT: edm {minimum.minuit.fmin.edm:.3g})")
            best = np.asarray(result[:, 0], dtype=float)
            covariance = bin_covariance(fit.model, best, np.asarray(minimum.hess_inv, dtype=float),
                                        label)
        main = config.nmaindata

        def counts(name: str) -> np.ndarray:
            return np.asarray(generator.data[name], dtype=float)[:main]

        width = np.sqrt(np.clip(counts("observed_asimov"), 0.0, None) + 1.0)  # Poisson widths
        values, vectors = np.linalg.eigh(covariance / np.outer(width, width))
        order = np.argsort(values)[::-1][:MAX_MODES]
        modes = width[:, None] * vectors[:, order] * np.sqrt(np.clip(values[order], 0.0, None))
        offsets, start = {}, 0
        for channel in config.channels:
            offsets[channel] = start
            start += int(config.channel_nbins[channel])
        positions = [offsets[name[len(SHAPEFACTOR_PREFIX):]] + j
                     for name, regions in fit.bins.items() for j in range(len(regions))]
        data = [counts(name) for name in datasets]
        background = [counts(name if name.endswith("_asimov") else f"{name}_asimov")
                      for name in datasets]
        return cls(positions, background, modes, data, fit.signal_uncertainty)

    # ------------------------------------------------------------------ the likelihood

    def _minimum(self, bins: np.ndarray, columns: Sequence[int]) -> np.ndarray:
        """min over (theta, eta) of -ln L_D (module docstring) for signals ``bins``
        (M, K) and the data sets ``columns``: shape (len(columns), M)."""
        columns = list(columns)
        count = self.modes.shape[1]
        d = self.data[columns, None, :]                          # (D, 1, K)
        base = self.background[columns, None, :] + bins          # (D, M, K)
        # parameters phi = (theta_1..theta_P, eta); lambda = base + J phi per signal
        jacobian = np.concatenate([np.broadcast_to(self.modes, bins.shape + (count,)),
                                   (self.signal_uncertainty * bins)[..., None]], axis=2)
        transposed = np.swapaxes(jacobian, 1, 2)                  # (M, P+1, K)
        precision = np.zeros((len(columns), 1, count + 1, count + 1))
        precision[..., :count, :count] = self.precision[columns, None]
        precision[..., count, count] = 1.0
        linear = np.zeros((len(columns), 1, count + 1))
        linear[..., :count] = self.linear[columns, None]
        phi = np.zeros(base.shape[:2] + (count + 1,))

        def rates(parameters: np.ndarray) -> np.ndarray:
            return base + (parameters[..., None, :] @ transposed)[..., 0, :]

        # a bin with data needs a positive rate; one without, a non-negative one (xlogy)
        floor = np.where(d > 0, TINY, 0.0)
        lam = np.maximum(base, TINY)
        for _ in range(NEWTON_STEPS):
            ratio = d / lam
            gradient = ((1.0 - ratio)[..., None, :] @ jacobian)[..., 0, :]
            gradient += (precision @ phi[..., None])[..., 0] + linear
            hessian = (transposed * (ratio / lam)[..., None, :]) @ jacobian + precision
            step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
            scale = np.ones(phi.shape[:2] + (1,))
            for _ in range(40):  # halve the step where a rate would leave its domain
                trial = rates(phi - scale * step)
                bad = np.any(trial < floor, axis=2)
                if not np.any(bad):
                    break
                scale = np.where(bad[..., None], 0.5 * scale, scale)
            else:  # rows that found no admissible step stay where they are
                scale = np.where(bad[..., None], 0.0, scale)
                trial = rates(phi - scale * step)
            phi = phi - scale * step
            lam = np.maximum(trial, TINY)
            if np.max(np.abs(step)) < NEWTON_TOLERANCE:
                break
        quadratic = 0.5 * np.sum(phi * (precision @ phi[..., None])[..., 0], axis=2)
        return np.sum(lam - d * np.log(lam), axis=2) + quadratic + np.sum(linear * phi, axis=2)

    def deltas(self, signals: np.ndarray, columns: Optional[Sequence[int]] = None) -> np.ndarray:
        """Delta_D^baseline of signals (M, N: events per input bin) for the data sets
        ``columns`` (all when None), shape (M, len(columns))."""
        columns = list(range(len(self.data))) if columns is None else list(columns)
        signals = np.atleast_2d(np.asarray(signals, dtype=float))
        if not len(signals):
            return np.zeros((0, len(columns)))
        bins = np.zeros((len(signals), self.size))
        bins[:, self.positions] = signals
        return (self.reference[columns, None] - self._minimum(bins, columns)).T
