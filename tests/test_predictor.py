"""Predictions against SModelS called directly on the same SLHA file and database."""

from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx
import numpy as np
import pytest
from scipy import optimize

from protomodels import significance
from protomodels.combiner import CombinabilityMatrix, ResultKey, combinability_graph
from protomodels.predictor import predict
from protomodels.xsec import effective_xsecs
from protomodels.slha import write_slha

from . import models


def direct_smodels(slha_path, smodels_db):
    """r_obs and r_exp per (analysis id, data type), from SModelS' own pipeline."""
    from smodels.base.model import Model
    from smodels.base.physicsUnits import GeV, fb
    from smodels.decomposition import decomposer
    from smodels.matching.theoryPrediction import theoryPredictionsFor
    from smodels.share.models.mssm import BSMList
    from smodels.share.models.SMparticles import SMList
    from smodels.statistics.basicStats import apriori, observed

    model = Model(BSMparticles=BSMList, SMparticles=SMList)
    model.updateParticles(inputFile=str(slha_path))
    top = decomposer.decompose(model, sigmacut=0.005 * fb, massCompress=True,
                               invisibleCompress=True, minmassgap=5 * GeV)
    found = defaultdict(list)
    for pred in theoryPredictionsFor(smodels_db, top, combinedResults=True):
        kind = {"upperLimit": "UL", "efficiencyMap": "EM", "combined": "combined"}[pred.dataType()]
        found[(pred.analysisId(), kind)].append(
            (pred.getRValue(observed), pred.getRValue(apriori)))
    return {k: sorted(v, key=lambda rr: (rr[0] or 0, rr[1] or 0)) for k, v in found.items()}


def ours(predictions):
    found = defaultdict(list)
    for p in predictions:
        found[(p.analysis_id, p.data_type)].append((p.r_obs, p.r_exp))
    return {k: sorted(v, key=lambda rr: (rr[0] or 0, rr[1] or 0)) for k, v in found.items()}


@pytest.mark.parametrize("make", [models.gluino, models.sbottom_higgs, models.electroweak])
def test_r_values_equal_direct_smodels(make, subset_db, tmp_path):
    model = make()
    path = tmp_path / "model.slha"
    write_slha(model, effective_xsecs(model), path)
    expected = direct_smodels(path, subset_db.smodels)
    got = ours(predict(model, subset_db))
    assert expected, "the model should produce predictions"
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert len(got[key]) == len(values), key
        for (r_obs, r_exp), (g_obs, g_exp) in zip(values, got[key]):
            assert g_obs == pytest.approx(r_obs, rel=1e-9), key
            if r_exp is None:
                assert g_exp is None
            else:
                assert g_exp == pytest.approx(r_exp, rel=1e-9), key


def test_covariance_and_pyhf_results_combine(subset_db):
    kinds = {(p.analysis_id, p.data_type) for p in predict(models.sbottom_higgs(), subset_db)}
    assert ("ATLAS-SUSY-2018-31", "combined") in kinds
    kinds = {(p.analysis_id, p.data_type) for p in predict(models.electroweak(), subset_db)}
    assert ("CMS-SUS-21-002", "combined") in kinds


def test_lsp_only_model_has_k_zero(subset_db):
    from protomodels.model import ProtoModel
    result = significance.evaluate(ProtoModel(masses={1000022: 300.0}), subset_db)
    assert result.predictions == []
    assert result.K == 0.0 and result.TL == 0.0 and result.combination == []


def _brute_force(predictions, mu_max, matrix):
    """Best TL over every clique of informative predictions, with SModelS' exact nll."""
    nodes = [p for p in predictions if p.has_likelihood]
    keys = [ResultKey(p.analysis_id, p.experiment, p.sqrts) for p in nodes]
    graph = combinability_graph(keys, matrix)

    def nll(i, mu):
        p = nodes[i]
        return float(p.curve(mu_max)(mu)) if p.data_type == "UL" else p.nll(mu)

    grid = np.linspace(0.0, mu_max, 41)
    table = np.array([[nll(i, m) for m in grid] for i in range(len(nodes))])
    weights = 2.0 * (table[:, :1] - table)
    best = (0.0, ())
    for clique in nx.enumerate_all_cliques(graph):
        k = int(np.argmax(weights[clique].sum(axis=0)))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(
            lambda m: -sum(2.0 * (table[i, 0] - nll(i, m)) for i in clique),
            bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * mu_max})
        tl = max(-res.fun, weights[clique, k].sum())
        if tl > best[0]:
            best = (tl, tuple(sorted(clique)))
    return best, nodes


def test_combination_equals_brute_force_on_real_predictions(subset_db):
    matrix = CombinabilityMatrix.load()
    for make in (models.gluino, models.electroweak):
        result = significance.evaluate(make(), subset_db, matrix=matrix)
        (tl, members), nodes = _brute_force(result.predictions, result.mu_max, matrix)
        assert result.TL == pytest.approx(tl, abs=2e-3, rel=1e-3)
        got = sorted((m.prediction.analysis_id, m.prediction.dataset_id) for m in result.combination)
        want = sorted((nodes[i].analysis_id, nodes[i].dataset_id) for i in members)
        assert got == want


def test_critic_bounds_mu(subset_db):
    result = significance.evaluate(models.gluino(), subset_db, r_limit=1.0)
    r_max = max(p.r_obs for p in result.predictions if p.r_obs is not None)
    assert result.r_max == r_max
    assert result.mu_max == pytest.approx(1.0 / r_max)
    assert 0.0 <= result.mu_hat <= result.mu_max * (1 + 1e-12)
    assert max(p.r_obs * result.mu_hat for p in result.predictions if p.r_obs) <= 1.0 + 1e-9
    looser = significance.evaluate(models.gluino(), subset_db, r_limit=1.3)
    assert looser.mu_max == pytest.approx(1.3 / r_max)
    assert looser.TL >= result.TL - 1e-9


def test_a_failing_combination_falls_back_without_stopping_others(subset_dir, subset_db):
    """Break ATLAS-SUSY-2018-31's pyhf channel mapping in a private copy of the database:
    that result falls back to its best signal region, every other result is unaffected."""
    from protomodels.loader import load_database

    broken = load_database(str(subset_dir))
    for er in broken.results:
        if er.globalInfo.id == "ATLAS-SUSY-2018-31" and hasattr(er.globalInfo, "jsonFiles"):
            for regions in er.globalInfo.jsonFiles.values():
                for region in regions:
                    region["pyhf"] = "no-such-channel"
    model = models.sbottom_higgs()
    preds = predict(model, broken)
    fallback = [p for p in preds if p.analysis_id == "ATLAS-SUSY-2018-31" and p.data_type == "EM"]
    assert len(fallback) == 1 and "combination failed" in fallback[0].note
    assert not any(p.analysis_id == "ATLAS-SUSY-2018-31" and p.data_type == "combined" for p in preds)
    def others(predictions):
        return {(p.analysis_id, p.data_type, p.r_obs) for p in predictions
                if (p.analysis_id, p.data_type) not in {("ATLAS-SUSY-2018-31", "EM"),
                                                         ("ATLAS-SUSY-2018-31", "combined")}}

    intact = predict(model, subset_db)
    assert ("ATLAS-SUSY-2018-31", "combined") in {(p.analysis_id, p.data_type) for p in intact}
    assert others(preds) and others(preds) == others(intact)


def _sbottom_and_gluino(gluino_mass: float):
    model = models.sbottom_higgs()
    model.masses[1000021] = gluino_mass
    model.decays[1000021] = {"q q XZ1": 1.0}
    return model


def _numbers(result):
    return (result.K, result.TL, result.mu_hat, result.r_max,
            [(m.prediction.analysis_id, m.prediction.dataset_id) for m in result.combination],
            sorted((p.analysis_id, p.dataset_id, p.r_obs, p.r_exp) for p in result.predictions))


def test_warm_statistics_cache_gives_the_numbers_of_an_empty_one(subset_db):
    """Moving the gluino leaves the sbottom results' yields (the pyhf combination among
    them) unchanged: they come from the cache, and every number equals a cold evaluation."""
    chain = [_sbottom_and_gluino(1300.0), _sbottom_and_gluino(1400.0), _sbottom_and_gluino(1300.0)]
    subset_db.statistics.clear()
    warm = [significance.evaluate(m, subset_db) for m in chain]
    assert subset_db.statistics.hits > 0
    assert any(p.data_type == "combined" and p.analysis_id == "ATLAS-SUSY-2018-31"
               for p in warm[1].predictions)
    for model, result in zip(chain, warm):
        subset_db.statistics.clear()
        assert _numbers(significance.evaluate(model, subset_db)) == _numbers(result)


def test_grid_end_is_a_fixed_ladder_above_mu_max():
    from protomodels.predictor import grid_end

    for mu_max in [1e-4, 0.03, 0.347, 1.0, 1.2, 7.5, 1e3]:
        end = grid_end(mu_max)
        assert mu_max <= end < mu_max * 2 ** 0.25 * (1 + 1e-12)
        assert math.isclose(math.log2(end) * 4, round(math.log2(end) * 4), abs_tol=1e-9)
    assert grid_end(1.0) == 1.0 and grid_end(1.0000001) == 2 ** 0.25
    with pytest.raises(ValueError):
        grid_end(0.0)


@pytest.mark.parametrize("make", [models.sbottom_higgs, models.electroweak])
def test_critic_with_cls_tests_equals_the_maximum_of_all_r(make, subset_db):
    """The critic's shortcut (one CLs test instead of a pyhf limit) gives max(all r)
    exactly, and the CLs test decides 'r below a bound' as the limit itself does."""
    model = make()
    subset_db.statistics.clear()
    predictions = predict(model, subset_db)
    combined = [p for p in predictions if p.data_type == "combined"]
    assert combined
    r_max, mu_max = significance.critic(predictions, 1.0)
    exact = [p.r_obs for p in predictions if p.r_obs is not None]
    assert r_max == max(exact)
    for p in combined:
        r = p.r_obs
        pyhf = p.theory.statsComputer.dataType == "pyhf"
        for factor, below in [(3.0, True), (1 / 3.0, False)]:
            subset_db.statistics.clear()
            fresh = [q for q in predict(model, subset_db) if q.data_type == "combined"
                     and q.analysis_id == p.analysis_id][0]
            assert fresh.r_known is not pyhf  # a simplified likelihood's limit is cheap
            assert fresh.r_below(r * factor) is below
            assert fresh.r_known is not pyhf, "the CLs test should decide without the limit"


def test_a_failing_upper_limit_loses_that_r_only(subset_db, caplog):
    """A limit that fails when it is finally computed (lazily, in the critic) drops that
    result's r with a warning; the model is still evaluated."""
    model = models.sbottom_higgs()
    subset_db.statistics.clear()
    predictions = predict(model, subset_db)
    combined = [p for p in predictions if p.data_type == "combined"][0]

    def broken(*args, **kwargs):
        raise RuntimeError("workspace exploded")

    combined.theory.getUpperLimit = broken
    result = significance.evaluate_predictions(model, predictions)
    assert combined.r_obs is None
    assert "workspace exploded" in caplog.text
    others = [p.r_obs for p in predictions if p is not combined and p.r_obs is not None]
    assert result.r_max == max(others)
    subset_db.statistics.clear()
