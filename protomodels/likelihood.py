"""Likelihood curves nll(mu) = -ln L(mu) of single predictions, in the signal strength mu.

The combiner only needs, per prediction, a vectorised ``nll(mu)`` on mu >= 0 and the
position ``mu_hat`` of its minimum there; it assumes each curve is unimodal (decreasing
up to mu_hat, increasing after), which holds for every likelihood used here.

- ``TruncatedGaussian``: the paper's approximate likelihood of an UL result with an
  expected limit (SPEC section 4), analytic.
- ``TabulatedNll``: any expensive likelihood (SModelS' EM, SL and pyhf ones) sampled on
  a grid that contains its own mu_hat and interpolated with a shape-preserving PCHIP,
  so the interpolant is exact at the samples and unimodal with its minimum at mu_hat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from scipy import optimize, special
from scipy.interpolate import PchipInterpolator

SQRT2 = math.sqrt(2.0)


class NllCurve(Protocol):
    mu_hat: float

    def __call__(self, mu: np.ndarray | float) -> np.ndarray | float: ...


@dataclass(frozen=True)
class TruncatedGaussian:
    """L(mu) = phi(mu; mu_hat, sigma) / Phi(mu_hat / sigma), mu in units of the prediction.

    Built from the observed and expected upper limits on mu (UL / predicted xsec):
    sigma = UL_exp' / 1.96 where UL_exp' = UL_exp / (1 - 0.6 (UL_obs - UL_exp)/(UL_obs + UL_exp))
    if UL_obs > UL_exp (else UL_exp), and mu_hat solves
    [erf((UL_obs - mu_hat)/(sqrt2 sigma)) + erf(mu_hat/(sqrt2 sigma))] / [1 + erf(mu_hat/(sqrt2 sigma))] = 0.95.
    """

    mu_hat: float
    sigma: float

    @classmethod
    def from_limits(cls, ul_obs: float, ul_exp: float) -> "TruncatedGaussian":
        if not (ul_obs > 0 and ul_exp > 0):
            raise ValueError(f"upper limits must be positive, got obs={ul_obs}, exp={ul_exp}")
        if ul_obs > ul_exp:
            ul_exp = ul_exp / (1.0 - 0.6 * (ul_obs - ul_exp) / (ul_obs + ul_exp))
        sigma = ul_exp / 1.96
        return cls(mu_hat=_solve_mu_hat(ul_obs, sigma), sigma=sigma)

    def __call__(self, mu):
        mu = np.asarray(mu, dtype=float)
        z = (mu - self.mu_hat) / self.sigma
        nll = 0.5 * z * z + math.log(self.sigma * math.sqrt(2 * math.pi))
        nll = nll + float(special.log_ndtr(self.mu_hat / self.sigma))
        return nll if nll.ndim else float(nll)


def _solve_mu_hat(ul_obs: float, sigma: float) -> float:
    """The truncated-Gaussian mode for which the 95% CL limit equals ul_obs (may be < 0).

    The SPEC equation, with 1 + erf(x) = erfc(-x), is 1 - Phi(-(ul_obs - mu_hat)/sigma) /
    Phi(mu_hat/sigma) = 0.95; evaluated through log Phi it stays exact for deep
    underfluctuations, where 1 + erf(x) has lost all its digits.
    """

    def coverage(mu_hat: float) -> float:
        log_ratio = special.log_ndtr(-(ul_obs - mu_hat) / sigma) - special.log_ndtr(mu_hat / sigma)
        return 1.0 - math.exp(log_ratio) - 0.95

    # coverage falls from +0.05 (mu_hat -> -inf) to -0.95 (mu_hat = ul_obs): bracket the root.
    lo = ul_obs - 2.0 * sigma
    while coverage(lo) < 0:
        lo -= 2.0 * sigma
    return float(optimize.brentq(coverage, lo, ul_obs, xtol=1e-13 * sigma, rtol=1e-13))


class TabulatedNll:
    """A sampled nll curve: PCHIP through samples that include the curve's own minimum.

    ``mu_hat`` is the minimiser on [0, mu_max]; the samples must contain it (the
    constructor checks), so the interpolant is monotone on each side of it.
    """

    def __init__(self, mus: Sequence[float], nlls: Sequence[float], mu_hat: float):
        mus = np.asarray(mus, dtype=float)
        nlls = np.asarray(nlls, dtype=float)
        order = np.argsort(mus)
        mus, nlls = mus[order], nlls[order]
        keep = np.concatenate([[True], np.diff(mus) > 0])
        mus, nlls = mus[keep], nlls[keep]
        if not np.all(np.isfinite(nlls)):
            raise ValueError("non-finite nll sample")
        self.mus, self.nlls = mus, nlls
        self.mu_hat = float(mu_hat)
        self._interp = PchipInterpolator(mus, nlls, extrapolate=True)

    def __call__(self, mu):
        values = self._interp(np.clip(mu, self.mus[0], self.mus[-1]))
        return values if np.ndim(values) else float(values)

    @classmethod
    def sample(cls, nll: Callable[[float], float], mu_max: float, mu_hat_hint: float,
               n: int = 12) -> "TabulatedNll":
        """Sample ``nll`` on [0, mu_max]: a uniform grid plus the located minimum."""
        grid = list(np.linspace(0.0, mu_max, n))
        values = [nll(m) for m in grid]
        best = int(np.argmin(values))
        lo = grid[max(best - 1, 0)]
        hi = grid[min(best + 1, n - 1)]
        hint = min(max(mu_hat_hint, lo), hi)
        if lo < hi:
            result = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                                              options={"xatol": 1e-6 * mu_max})
            cand = [(values[best], grid[best]), (float(result.fun), float(result.x))]
            if lo < hint < hi:
                cand.append((nll(hint), hint))
            nll_min, mu_min = min(cand)
            if mu_min not in grid:
                grid.append(mu_min)
                values.append(nll_min)
        else:
            mu_min = grid[best]
        return cls(grid, values, mu_min)
