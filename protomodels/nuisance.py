"""Exact nuisance profiling for SModelS' simplified likelihoods (single regions and
covariance-combined results).

SModelS profiles the background nuisances theta of every likelihood call with two
general-purpose minimisers in a row (``fmin_ncg``, then ``fmin_tnc`` in the box
|theta_i| <= 10 n_i, which pins theta_i = 0 where n_i = 0), a few ms per call; an upper
limit needs ~100 calls, a sampled likelihood curve ~30, and these calls were the bulk
of a cold evaluation.  The profiled function is convex for the linear model (Poisson
in lambda = b + mu s + theta, Gaussian in theta), so a damped Newton iteration on the
free nuisances, started from the exact solution of the uncorrelated problem, reaches
the same minimum to machine precision in a handful of steps.  Everything around it
(mu_hat, the Asimov data, the CLs root search) stays SModelS' own code.

``install()`` replaces ``LikelihoodComputer.findThetaHat`` and ``llhdOfTheta`` by the
functions here; models outside what is solved exactly (third moments, a solution on
the box edge, no convergence) go to SModelS' original code, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

import numpy as np
from scipy import special

MAX_ITERATIONS = 60
_ORIGINAL = "_protomodels_original"  # SModelS' (findThetaHat, llhdOfTheta)


def theta_hat(observed: np.ndarray, expected: np.ndarray, weight: np.ndarray
              ) -> Optional[np.ndarray]:
    """argmin_theta sum_i (lambda_i - n_i ln lambda_i) + theta W theta / 2, lambda = expected
    + theta, with SModelS' box |theta_i| <= 10 n_i (so theta_i = 0 where n_i = 0); None
    if the minimum is not strictly inside the box for the free nuisances."""
    theta = np.zeros_like(expected, dtype=float)
    free = observed > 0
    if not free.any():
        return theta
    n, base = observed[free], expected[free]
    w = weight[np.ix_(free, free)] if not free.all() else weight
    # Start: each nuisance alone (off-diagonal weights dropped), solved exactly:
    # w_ii lambda^2 + (1 - w_ii base) lambda - n = 0 for lambda = base + theta > 0.
    wd = np.diag(w)
    c = 1.0 - wd * base
    root = np.sqrt(c * c + 4.0 * wd * n)
    lam = np.where(c > 0, 2.0 * n / (c + root), (root - c) / (2.0 * wd))
    t = lam - base
    value = _objective(t, n, base, w)
    for _ in range(MAX_ITERATIONS):
        lam = base + t
        gradient = 1.0 - n / lam + w @ t
        hessian = w + np.diag(n / (lam * lam))
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return None
        decrement = float(gradient @ step)
        alpha = 1.0
        while True:
            trial = t - alpha * step
            if np.all(base + trial > 0):
                trial_value = _objective(trial, n, base, w)
                if trial_value <= value - 1e-4 * alpha * decrement or decrement < 1e-20:
                    break
            alpha *= 0.5
            if alpha < 1e-12:
                return None
        t, value = trial, trial_value
        if decrement < 1e-24 or np.max(np.abs(alpha * step)) <= 1e-13 * (1.0 + np.max(np.abs(t))):
            break
    else:
        return None
    if np.any(np.abs(t) > 10.0 * n):
        return None
    theta[free] = t
    return theta


def _objective(t: np.ndarray, n: np.ndarray, base: np.ndarray, w: np.ndarray) -> float:
    lam = base + t
    return float(np.sum(lam - n * np.log(lam)) + 0.5 * t @ w @ t)


def find_theta_hat(self: Any, mu: float):
    """``LikelihoodComputer.findThetaHat`` with the exact profile (same attributes set)."""
    if isinstance(mu, (np.ndarray, list)):
        mu = mu[0]
    mu = float(mu)
    if np.isinf(mu):
        return None
    model = self.model
    theta = None
    if model.isLinear():
        observed = np.asarray(model.observed, dtype=float)
        theta = theta_hat(observed, model.backgrounds + mu * model.nsignal, model.weight)
    if theta is None:
        return _originals()[0](self, mu)
    self.mu = mu
    self.cov_tot = model.V
    self.weight = model.weight
    self.logcoeff = -model.n / 2 * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(model.V)[1]
    self.ones = np.ones(len(model.observed))
    return theta, 0


def nll_of_theta(self: Any, theta, nll: bool = True) -> float:
    """``LikelihoodComputer.llhdOfTheta``: the same formula without scipy's distribution
    machinery (Poisson log-pmf as xlogy(n, lambda) - ln n! - lambda, as scipy computes it)."""
    model = self.model
    nsig = self.mu * model.nsignal
    if model.isLinear():
        lam = model.backgrounds + nsig + theta
    else:
        lam = nsig + model.A + theta + model.C * theta**2 / model.B**2
    lam = np.where(lam <= 0.0, 1e-30, lam)
    obs = model.observed
    if np.asarray(obs).dtype == np.int64:  # SModelS' "all integers" case
        log_poisson = special.xlogy(obs, lam) - special.gammaln(obs + 1) - lam
    else:
        log_poisson = -lam + obs * np.log(lam) - special.loggamma(obs + 1)
    d_theta = np.asarray(theta, dtype=float)
    exponent = -0.5 * float(d_theta @ self.weight @ d_theta) + self.logcoeff
    value = -exponent - float(np.sum(log_poisson))
    return value if nll else math.exp(-value)


def _originals():
    from smodels.statistics.simplifiedLikelihoods import LikelihoodComputer

    return getattr(LikelihoodComputer, _ORIGINAL, (LikelihoodComputer.findThetaHat,
                                                   LikelihoodComputer.llhdOfTheta))


def install() -> bool:
    """Replace SModelS' nuisance profile by the exact one (idempotent; True if it changed)."""
    from smodels.statistics.simplifiedLikelihoods import LikelihoodComputer

    if LikelihoodComputer.findThetaHat is find_theta_hat:
        return False
    setattr(LikelihoodComputer, _ORIGINAL, _originals())
    LikelihoodComputer.findThetaHat = find_theta_hat
    LikelihoodComputer.llhdOfTheta = nll_of_theta
    return True


@contextlib.contextmanager
def original_profile() -> Iterator[None]:
    """SModelS' own profile inside the block (the benchmark's straightforward pipeline,
    and the tests that compare the two)."""
    from smodels.statistics.simplifiedLikelihoods import LikelihoodComputer

    installed = LikelihoodComputer.findThetaHat is find_theta_hat
    LikelihoodComputer.findThetaHat, LikelihoodComputer.llhdOfTheta = _originals()
    try:
        yield
    finally:
        if installed:
            install()
