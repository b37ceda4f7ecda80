"""The exact nuisance profile against brute-force minimisation and against SModelS' own
profile on real results."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import optimize

from protomodels import nuisance, significance

from . import models


def brute_force_theta(observed, expected, weight):
    """The same minimum by a general minimiser with tight tolerances, over the free
    nuisances (n > 0), from a different start."""
    free = observed > 0
    w = weight[np.ix_(free, free)]
    n, base = observed[free], expected[free]

    def objective(t):
        lam = base + t
        if np.any(lam <= 0):
            return 1e300
        return float(np.sum(lam - n * np.log(lam)) + 0.5 * t @ w @ t)

    start = np.maximum(n - base, -0.5 * base)
    result = optimize.minimize(objective, start, method="Nelder-Mead",
                               options={"xatol": 1e-11, "fatol": 1e-14, "maxiter": 200000,
                                        "maxfev": 200000})
    theta = np.zeros_like(expected)
    theta[free] = result.x
    return theta, objective(result.x)


@pytest.mark.parametrize("seed", range(12))
def test_theta_hat_is_the_minimum(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 5))
    background = rng.uniform(0.5, 50.0, size)
    errors = background * rng.uniform(0.05, 0.6, size)
    correlation = np.eye(size)
    if size > 1:
        a = rng.normal(size=(size, size))
        c = a @ a.T + size * np.eye(size)
        d = np.sqrt(np.diag(c))
        correlation = c / np.outer(d, d)
    covariance = correlation * np.outer(errors, errors)
    observed = rng.poisson(background + rng.uniform(0, 10, size)).astype(float)
    observed[rng.uniform(size=size) < 0.2] = 0.0  # empty regions keep theta = 0
    expected = background + rng.uniform(0.0, 20.0, size)
    weight = np.linalg.inv(covariance)
    theta = nuisance.theta_hat(observed, expected, weight)
    assert theta is not None
    reference, best = brute_force_theta(observed, expected, weight)
    free = observed > 0
    lam = expected[free] + theta[free]
    value = float(np.sum(lam - observed[free] * np.log(lam))
                  + 0.5 * theta[free] @ weight[np.ix_(free, free)] @ theta[free])
    assert value <= best + 1e-9 * max(1.0, abs(best))
    np.testing.assert_allclose(theta, reference, rtol=1e-4, atol=1e-4 * errors.max())
    assert np.all(theta[~free] == 0.0)


def _sl_predictions(db, model):
    result = significance.evaluate(model, db)
    return [p for p in result.predictions if p.data_type in ("EM", "combined")
            and p.theory.statsComputer.dataType in ("SL", "1bin")]


def test_likelihoods_equal_smodels_own_profile(subset_db):
    """The profiled -ln L of every simplified-likelihood prediction (single regions and
    CMS-SUS-21-002's covariance combination) equals SModelS' own to 1e-9."""
    predictions = (_sl_predictions(subset_db, models.electroweak())
                   + _sl_predictions(subset_db, models.paper_best()))
    kinds = {p.data_type for p in predictions}
    assert kinds == {"EM", "combined"}
    for p in predictions:
        for mu in (0.0, 0.3, 1.0, 2.5):
            exact = p.theory.likelihood(mu=mu, return_nll=True)
            with nuisance.original_profile():
                original = p.theory.likelihood(mu=mu, return_nll=True)
            # the exact profile is the minimum: never above SModelS' value
            assert exact <= original + 1e-9 * abs(original)
            assert exact == pytest.approx(original, rel=1e-9, abs=1e-9), (p.analysis_id, mu)


@pytest.mark.parametrize("make", [models.electroweak, models.paper_best, models.gluino,
                                  models.sbottom_higgs])
def test_k_and_r_equal_smodels_own_profile(make, subset_db):
    """K within 1e-6; r within 1e-5 (SModelS' own root search of a combined limit stops
    at a relative 1e-3, so its last digits follow the function values it meets)."""
    for model in [make()]:
        subset_db.statistics.clear()
        exact = significance.evaluate(model, subset_db)
        r_exact = {(p.analysis_id, p.dataset_id): p.r_obs for p in exact.predictions}
        subset_db.statistics.clear()
        with nuisance.original_profile():
            original = significance.evaluate(model, subset_db)
            r_original = {(p.analysis_id, p.dataset_id): p.r_obs for p in original.predictions}
        subset_db.statistics.clear()
        assert exact.K == pytest.approx(original.K, rel=1e-6, abs=1e-9)
        assert exact.r_max == pytest.approx(original.r_max, rel=1e-5)
        assert r_exact.keys() == r_original.keys()
        for key, r in r_original.items():
            if r is not None:
                assert r_exact[key] == pytest.approx(r, rel=1e-5), key


def test_original_profile_is_restored_and_reinstalled():
    from smodels.statistics.simplifiedLikelihoods import LikelihoodComputer

    nuisance.install()
    with nuisance.original_profile():
        assert LikelihoodComputer.findThetaHat is not nuisance.find_theta_hat
    assert LikelihoodComputer.findThetaHat is nuisance.find_theta_hat
    assert nuisance.install() is False
