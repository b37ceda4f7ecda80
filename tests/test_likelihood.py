"""Tests of protomodels.likelihood against independent computations (SPEC section 4).

The truncated Gaussian is checked against
- sigma worked out by hand (with and without the 0.6 correction),
- mu_hat from a root solve written here: a dense-grid scan for the sign change followed
  by plain bisection, using the numerically stable form of the coverage condition
  1 - erfc(a)/erfc(-x) = 0.95 (identical to SPEC's erf form since 1 + erf(x) = erfc(-x)),
- nll(mu) = -ln[phi(mu; mu_hat, sigma)/Phi(mu_hat/sigma)] written with math.exp/math.erfc,
- SModelS' own TruncatedGaussians (corr=0.6), comparing nll(mu) - nll(0).
TabulatedNll is checked on convex functions whose minimiser is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from protomodels.likelihood import TabulatedNll, TruncatedGaussian

SQ2 = math.sqrt(2.0)


# ---------------------------------------------------------------- independent references

def ref_sigma(ul_obs: float, ul_exp: float) -> float:
    if ul_obs > ul_exp:
        ul_exp = ul_exp / (1.0 - 0.6 * (ul_obs - ul_exp) / (ul_obs + ul_exp))
    return ul_exp / 1.96


def _coverage_minus_cl(mu_hat: float, ul_obs: float, sigma: float) -> float:
    """[erf((ul-m)/(√2σ)) + erf(m/(√2σ))]/[1 + erf(m/(√2σ))] - 0.95, cancellation-free:
    numerator = erfc(-x) - erfc(a), denominator = erfc(-x)."""
    a = (ul_obs - mu_hat) / (SQ2 * sigma)
    x = mu_hat / (SQ2 * sigma)
    return 1.0 - math.erfc(a) / math.erfc(-x) - 0.95


def ref_mu_hat(ul_obs: float, sigma: float) -> float:
    """Scan [ul_obs - 30 sigma, ul_obs] on a dense grid for the sign change, then bisect."""
    grid = np.linspace(ul_obs - 30.0 * sigma, ul_obs, 30001)
    values = [_coverage_minus_cl(m, ul_obs, sigma) for m in grid[::-1]]  # from ul_obs down
    # coverage - cl is < 0 at mu_hat = ul_obs and > 0 far below: first positive from the top
    k = next(i for i, v in enumerate(values) if v > 0)
    hi, lo = float(grid[::-1][k - 1]), float(grid[::-1][k])
    assert _coverage_minus_cl(lo, ul_obs, sigma) > 0 > _coverage_minus_cl(hi, ul_obs, sigma)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _coverage_minus_cl(mid, ul_obs, sigma) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def ref_nll(mu: float, mu_hat: float, sigma: float) -> float:
    """-ln[phi(mu; mu_hat, sigma) / Phi(mu_hat / sigma)]."""
    phi = math.exp(-0.5 * ((mu - mu_hat) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))
    big_phi = 0.5 * math.erfc(-mu_hat / (sigma * SQ2))  # = 0.5 [1 + erf(mu_hat/(√2σ))]
    return -math.log(phi / big_phi)


# ---------------------------------------------------------------- TruncatedGaussian

# (ul_obs, ul_exp): underfluctuations (mu_hat < 0), no fluctuation, excesses (0.6 correction)
UNDER = [(1.0, 1.0), (0.8, 1.0), (0.5, 1.0), (0.35, 1.0), (0.3, 1.0), (0.021, 0.04),
         (3.0, 4.5)]
EXCESS = [(1.2, 1.0), (2.0, 1.0), (5.0, 1.0), (0.06, 0.02), (7.5, 2.5)]
MUS = [0.0, 0.1, 0.5, 1.0, 2.0, 4.0]


def test_reference_solver_sanity():
    """The test's own solver: ul_obs = 1.96 sigma (no fluctuation) gives mu_hat ~ 0, and
    a truncated Gaussian at mu_hat has exactly 95% of its mass below ul_obs."""
    sigma = 1.0 / 1.96
    assert abs(ref_mu_hat(1.0, sigma)) < 1e-4
    for ul in (0.4, 1.7, 3.0):
        m = ref_mu_hat(ul, sigma)
        # P(x < ul | x > 0) for x ~ N(m, sigma), via the normal cdf written with erfc
        cdf = lambda y: 0.5 * math.erfc(-(y - m) / (sigma * SQ2))  # noqa: E731
        assert (cdf(ul) - cdf(0.0)) / (1.0 - cdf(0.0)) == pytest.approx(0.95, abs=1e-12)


@pytest.mark.parametrize("ul_obs, ul_exp", UNDER + EXCESS)
def test_sigma_by_hand(ul_obs, ul_exp):
    tg = TruncatedGaussian.from_limits(ul_obs, ul_exp)
    assert tg.sigma == pytest.approx(ref_sigma(ul_obs, ul_exp), rel=1e-13)


def test_sigma_literals():
    # no correction: UL_exp/1.96
    assert TruncatedGaussian.from_limits(0.5, 1.0).sigma == pytest.approx(1.0 / 1.96, rel=1e-14)
    assert TruncatedGaussian.from_limits(1.0, 1.0).sigma == pytest.approx(1.0 / 1.96, rel=1e-14)
    # obs=2, exp=1: f = 1 - 0.6 * 1/3 = 0.8, UL_exp' = 1.25, sigma = 1.25/1.96
    assert TruncatedGaussian.from_limits(2.0, 1.0).sigma == pytest.approx(1.25 / 1.96, rel=1e-14)
    # obs=5, exp=1: f = 1 - 0.6 * 4/6 = 0.6, UL_exp' = 1/0.6
    assert TruncatedGaussian.from_limits(5.0, 1.0).sigma == pytest.approx(
        (1.0 / 0.6) / 1.96, rel=1e-14)


@pytest.mark.parametrize("ul_obs, ul_exp", UNDER + EXCESS)
def test_mu_hat_against_bisection(ul_obs, ul_exp):
    tg = TruncatedGaussian.from_limits(ul_obs, ul_exp)
    expected = ref_mu_hat(ul_obs, ref_sigma(ul_obs, ul_exp))
    assert tg.mu_hat == pytest.approx(expected, rel=1e-8, abs=1e-10 * ul_exp)
    if ul_obs < ul_exp:
        assert tg.mu_hat < 0
    if ul_obs > ul_exp:
        assert 0 < tg.mu_hat < ul_obs


@pytest.mark.parametrize("ratio", [0.25, 0.2, 0.15, 0.1, 0.07])  # the math.erfc reference underflows below ~0.06
def test_mu_hat_deep_underfluctuation(ratio):
    """ul_obs well below ul_exp: mu_hat is many sigma below 0 and 1 + erf(mu_hat/(√2σ))
    is tiny; the limit must still be solved (and not raise)."""
    ul_exp = 1.0
    tg = TruncatedGaussian.from_limits(ratio * ul_exp, ul_exp)
    sigma = ref_sigma(ratio, ul_exp)
    expected = ref_mu_hat(ratio, sigma)
    assert expected < -5 * sigma
    assert tg.mu_hat == pytest.approx(expected, rel=1e-6)
    for mu in (0.0, 0.1, 0.5):
        assert tg(mu) == pytest.approx(ref_nll(mu, expected, sigma), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("ul_obs, ul_exp", UNDER + EXCESS)
def test_nll_formula(ul_obs, ul_exp):
    tg = TruncatedGaussian.from_limits(ul_obs, ul_exp)
    sigma = ref_sigma(ul_obs, ul_exp)
    mu_hat = ref_mu_hat(ul_obs, sigma)
    scale = ul_exp  # mu in units of the limits
    for m in MUS:
        mu = m * scale
        assert tg(mu) == pytest.approx(ref_nll(mu, mu_hat, sigma), rel=1e-9, abs=1e-9)
    # vectorised call agrees with scalar calls
    mus = np.array(MUS) * scale
    vec = tg(mus)
    assert isinstance(vec, np.ndarray) and vec.shape == mus.shape
    assert np.allclose(vec, [ref_nll(m, mu_hat, sigma) for m in mus], rtol=1e-9, atol=1e-9)
    assert isinstance(tg(0.3 * scale), float)


def test_nll_literal_values():
    """A hand-built curve (no root solve involved): mu_hat=1, sigma=0.5.
    nll(1) = ln(0.5 sqrt(2 pi)) + ln Phi(2);  nll(0) - nll(1) = 0.5 * (1/0.5)^2 = 2."""
    tg = TruncatedGaussian(mu_hat=1.0, sigma=0.5)
    phi2 = 0.9772498680518208  # Phi(2), table value
    assert tg(1.0) == pytest.approx(math.log(0.5 * math.sqrt(2 * math.pi)) + math.log(phi2),
                                    rel=1e-12)
    assert tg(0.0) - tg(1.0) == pytest.approx(2.0, rel=1e-12)
    assert tg(3.0) - tg(1.0) == pytest.approx(8.0, rel=1e-12)


def _smodels_tg(ul_obs, ul_exp):
    tgs = pytest.importorskip("smodels.statistics.truncatedGaussians")
    return tgs.TruncatedGaussians(float(ul_obs), float(ul_exp), corr=0.6)


# SModelS' lmax() evaluates its likelihood at mu=1 on the way, which underflows for narrow
# curves (log(0) warning); harmless for the muhat it returns.
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("ul_obs, ul_exp", UNDER + EXCESS)
def test_against_smodels(ul_obs, ul_exp):
    """SModelS applies the same correction (corr=0.6, only when obs > exp), the same
    sigma and root condition (solved with toms748 at 1e-7), so mu_hat and
    nll(mu) - nll(0) must agree."""
    ours = TruncatedGaussian.from_limits(ul_obs, ul_exp)
    theirs = _smodels_tg(ul_obs, ul_exp)
    assert theirs.sigma_mu == pytest.approx(ours.sigma, rel=1e-13)
    muhat = theirs.lmax(return_nll=True)["muhat"]
    assert ours.mu_hat == pytest.approx(muhat, rel=1e-6, abs=1e-7 * ul_exp)
    nll0 = theirs.likelihood(0.0, return_nll=True)
    for m in MUS[1:]:
        mu = m * ul_exp
        d_theirs = float(theirs.likelihood(mu, return_nll=True)) - float(nll0)
        d_ours = ours(mu) - ours(0.0)
        assert d_ours == pytest.approx(d_theirs, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- TabulatedNll

def _convex(a: float, b: float, m0: float, c: float):
    """f(mu) = a (mu - m0)^2 + b (mu - m0)^4 + c: convex, symmetric about m0."""
    def f(mu):
        d = mu - m0
        return a * d * d + b * d ** 4 + c
    return f


convex_params = st.tuples(
    st.floats(0.0, 5.0),     # a
    st.floats(0.0, 2.0),     # b
    st.floats(-3.0, 12.0),   # m0 (may lie outside [0, mu_max])
    st.floats(-50.0, 50.0),  # c
    st.floats(0.5, 10.0),    # mu_max
    st.integers(4, 20),      # n
    st.floats(-2.0, 12.0),   # hint
).filter(lambda p: p[0] + p[1] > 1e-2)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(convex_params)
def test_tabulated_sampled_convex(params):
    a, b, m0, c, mu_max, n, hint = params
    f = _convex(a, b, m0, c)
    t = TabulatedNll.sample(f, mu_max, hint, n=n)
    # samples: the uniform grid (and possibly one extra point), all within [0, mu_max]
    assert np.all(np.isin(np.linspace(0.0, mu_max, n), t.mus))
    assert len(t.mus) in (n, n + 1)
    assert t.mus[0] == 0.0 and t.mus[-1] == pytest.approx(mu_max)
    # exact at its samples, against f evaluated here
    truth = np.array([f(m) for m in t.mus])
    assert np.allclose(t(t.mus), truth, rtol=1e-13, atol=1e-12)
    for m, v in zip(t.mus, truth):
        assert t(float(m)) == pytest.approx(v, rel=1e-13, abs=1e-12)
    # mu_hat is a sample and close to the true minimiser clip(m0, 0, mu_max)
    assert np.any(t.mus == t.mu_hat)
    true_min = min(max(m0, 0.0), mu_max)
    assert 0.0 <= t.mu_hat <= mu_max
    scale = abs(c) + a * mu_max ** 2 + b * mu_max ** 4
    assert f(t.mu_hat) - f(true_min) <= 1e-9 * scale
    if a >= 0.1:  # curvature at the minimum: the location itself is well determined
        assert t.mu_hat == pytest.approx(true_min, abs=1e-4 * mu_max)
    # unimodal on a dense grid with its minimum at mu_hat
    grid = np.linspace(0.0, mu_max, 4001)
    values = np.asarray(t(grid))
    tol = 1e-12 * scale
    left, right = values[grid <= t.mu_hat], values[grid >= t.mu_hat]
    assert np.all(np.diff(left) <= tol)
    assert np.all(np.diff(right) >= -tol)
    assert t(t.mu_hat) <= values.min() + tol


def test_tabulated_exact_minimum_literal():
    """f = (mu - 1.3)^2 on [0, 4] with 9 points: grid spacing 0.5 misses 1.3, the
    sampler must add it; f(1.3) = 0 and the interpolant is >= 0 everywhere."""
    f = _convex(1.0, 0.0, 1.3, 0.0)
    t = TabulatedNll.sample(f, 4.0, 1.0, n=9)
    assert t.mu_hat == pytest.approx(1.3, abs=1e-6)
    assert t(t.mu_hat) == pytest.approx(0.0, abs=1e-11)
    grid = np.linspace(0, 4, 801)
    assert np.all(np.asarray(t(grid)) >= -1e-12)
    assert t(2.0) == pytest.approx(0.49, abs=1e-12)  # a sample: exact
    # beyond the sampled range the curve is held flat (clipped)
    assert t(5.0) == pytest.approx(f(4.0), rel=1e-12)


def test_tabulated_minimum_at_boundary():
    f = _convex(2.0, 0.0, -1.0, 3.0)  # increasing on [0, mu_max]
    t = TabulatedNll.sample(f, 3.0, 0.0, n=7)
    assert t.mu_hat == 0.0
    g = _convex(0.5, 0.1, 9.0, 0.0)  # decreasing on [0, mu_max]
    t = TabulatedNll.sample(g, 3.0, 3.0, n=7)
    assert t.mu_hat == pytest.approx(3.0)
    assert t(3.0) == pytest.approx(g(3.0), rel=1e-13)


def test_tabulated_constructor_sorts_and_rejects_nonfinite():
    t = TabulatedNll([2.0, 0.0, 1.0, 1.0], [4.0, 0.0, 1.0, 1.0], mu_hat=0.0)
    assert list(t.mus) == [0.0, 1.0, 2.0]
    assert t(1.0) == pytest.approx(1.0) and t(2.0) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        TabulatedNll([0.0, 1.0], [0.0, float("nan")], mu_hat=0.0)
