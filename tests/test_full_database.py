"""The full SModelS 3.0.0 database (built once per machine and cached): slow tests."""

from __future__ import annotations

import itertools

import pytest

from protomodels import database, significance
from protomodels.loader import load_database
from protomodels.combiner import CombinabilityMatrix, ResultKey, combinable
from protomodels.predictor import predict
from protomodels.xsec import effective_xsecs
from protomodels.slha import write_slha

from . import models
from .test_predictor import direct_smodels, ours

pytestmark = pytest.mark.slow


def test_every_result_loads(full_db):
    report = database.describe(full_db)
    assert report["results"] == 204
    assert report["failed_to_load"] == []
    assert len(report["combinable"]) == 19
    # the 11 results that need the project's final states are among those loaded
    ids = {er.globalInfo.id for er in full_db.results}
    assert {"CMS-EXO-20-004", "ATLAS-SUSY-2018-22"} <= ids


def test_every_combined_result_evaluates(full_db):
    status = database.check_combined_results(full_db)
    assert len(status) == 19
    assert {k: v for k, v in status.items() if v != "ok"} == {}


def test_paper_best_r_values_equal_direct_smodels(full_db, tmp_path):
    model = models.paper_best()
    path = tmp_path / "best.slha"
    write_slha(model, effective_xsecs(model), path)
    expected = direct_smodels(path, full_db.smodels)
    # SModelS' direct call uses every result, superseded ones included
    from protomodels.predictor import Selection
    got = ours(predict(model, full_db, Selection(superseded=True)))
    assert set(got) == set(expected)
    for key, values in expected.items():
        for (r_obs, r_exp), (g_obs, g_exp) in zip(values, got[key]):
            assert g_obs == pytest.approx(r_obs, rel=1e-9), key
            assert (g_exp is None) == (r_exp is None), key
            if r_exp is not None:
                assert g_exp == pytest.approx(r_exp, rel=1e-9), key


def test_paper_best_significance(full_db):
    matrix = CombinabilityMatrix.load()
    strict = significance.evaluate(models.paper_best(), full_db, r_limit=1.0, matrix=matrix)
    loose = significance.evaluate(models.paper_best(), full_db, r_limit=1.3, matrix=matrix)
    for result in (strict, loose):
        assert result.combination, "the paper's best model explains some excess"
        keys = [ResultKey(m.prediction.analysis_id, m.prediction.experiment, m.prediction.sqrts)
                for m in result.combination]
        assert all(combinable(a, b, matrix) for a, b in itertools.combinations(keys, 2))
        assert result.K == pytest.approx(result.TL + result.log_prior)
        assert result.mu_hat <= result.mu_max * (1 + 1e-9)
    assert loose.TL >= strict.TL - 1e-6
    assert loose.mu_max == pytest.approx(1.3 * strict.mu_max)


def test_lsp_only_is_the_standard_model(full_db):
    from protomodels.model import ProtoModel
    assert significance.evaluate(ProtoModel(masses={1000022: 150.0}), full_db).K == 0.0


def test_injection_closure(full_db, tmp_path):
    """The paper's best model injected without noise into the full database is found
    again with a far higher K than on the SM-only fake of the same seed."""
    import gc
    from protomodels import fakedb
    from protomodels.atomic import write_json_atomic
    from protomodels.slha import to_slha

    model = models.paper_best()
    text = to_slha(model, effective_xsecs(model))
    found = {}
    for name, noise, injected in (("injected", "fixed", text), ("sm", "poisson", None)):
        record = fakedb.draw(full_db, 2, noise=noise, model_text=injected)
        (tmp_path / name).mkdir()
        write_json_atomic(tmp_path / name / fakedb.RECORD, record)
        fake = load_database(str(tmp_path / name))
        found[name] = significance.evaluate(model, fake)
        del fake
        gc.collect()
    assert found["injected"].K > 15 and found["injected"].K > found["sm"].K + 10
    assert 0.8 < found["injected"].mu_hat < 1.2
    assert found["injected"].r_max < 1


def test_benchmark_models_keep_smodels_numbers(full_db):
    """The 20 frozen benchmark models give the same K (1e-6) and r (1e-5: SModelS' own
    root search of a combined limit stops at a relative 1e-3) with the project's faster
    SModelS internals as with SModelS' own code."""
    from protomodels.overrides import smodels_as_shipped

    from .models import frozen_benchmark_models

    def numbers():
        out = []
        for model in frozen_benchmark_models():
            full_db.statistics.clear()
            result = significance.evaluate(model, full_db)
            out.append((result.K, result.r_max,
                        {(p.analysis_id, p.dataset_id): p.r_obs for p in result.predictions
                         if p.r_known}))
        full_db.statistics.clear()
        return out

    fast = numbers()
    with smodels_as_shipped():
        shipped = numbers()
    assert any(k != 0 for k, _, _ in shipped)
    for (k, r_max, rs), (k0, r_max0, rs0) in zip(fast, shipped):
        assert k == pytest.approx(k0, rel=1e-6, abs=1e-12)
        assert r_max == pytest.approx(r_max0, rel=1e-5)
        assert rs.keys() == rs0.keys()
        for key, r in rs0.items():
            assert (rs[key] is None) == (r is None), key
            if r is not None:
                assert rs[key] == pytest.approx(r, rel=1e-5), key


def test_neutralino_pairs_reach_cms_sus_20_004(full_db):
    """Issue 12: neutral electroweak partners are pair-produced.  XZ2 -> h XZ1 with no
    XSECTION block (reference cross sections: the higgsino-like N1N2 table, XZ2 XZ2 at
    300 GeV and XZ1 XZ2 at the mean 225 GeV) gets SModelS predictions from CMS-SUS-20-004,
    the di-Higgs search, which it could not have when only charginos were produced."""
    from protomodels.model import ProtoModel
    from protomodels.predictor import predict
    from protomodels.xsec import effective_xsecs

    model = ProtoModel(masses={1000022: 150.0, 1000023: 300.0}, decays={1000023: {"h XZ1": 1.0}})
    xsecs = effective_xsecs(model)
    assert set(xsecs) == {(13, (1000022, 1000023)), (13, (1000023, 1000023))}
    ids = {(p.analysis_id, p.data_type) for p in predict(model, full_db) if p.r_known}
    assert ("CMS-SUS-20-004", "combined") in ids, ids


def test_benchmark_models_without_new_processes_keep_their_k(full_db):
    """Issue 12 added production processes; the frozen benchmark models that have none of
    them keep K and r_max exactly (1e-9) against the values computed before the change
    (``tests/data/benchmark_K_before_issue12.json``); the others gained processes."""
    import json
    from pathlib import Path

    from protomodels.xsec import effective_xsecs

    from .models import frozen_benchmark_models

    before = json.loads((Path(__file__).parent / "data" / "benchmark_K_before_issue12.json").read_text())
    unchanged = 0
    for model, old in zip(frozen_benchmark_models(), before["models"]):
        processes = sorted(str(key) for (sqrts, key) in effective_xsecs(model) if sqrts == 13)
        if processes != old["processes_13TeV"]:
            assert set(old["processes_13TeV"]) < set(processes), old["index"]
            continue
        result = significance.evaluate(model, full_db)
        assert result.K == pytest.approx(old["K"], rel=1e-9, abs=1e-12), old["index"]
        assert result.r_max == pytest.approx(old["r_max"], rel=1e-9, abs=1e-12), old["index"]
        unchanged += 1
    assert unchanged == 14


def test_ul_map_artefacts_give_no_likelihood(full_db):
    """A smuon at 393 GeV over XZ1 at 339 GeV sits where CMS-SUS-20-001's expected UL map
    (undefined 13 GeV lower) interpolates a limit ten times below the observed one: a
    walker found K = 29 there from that single UL result.  Above UL_obs/UL_exp = 3 a UL
    result only constrains (r_obs); at 450 GeV (ratio below 1) it keeps its likelihood."""
    from protomodels.model import ProtoModel
    from protomodels.predictor import MAX_UL_RATIO

    def cms_sus_20_001(smuon):
        model = ProtoModel(masses={1000022: 338.7, 1000013: smuon}, decays={1000013: {"l XZ1": 1.0}})
        found = [p for p in predict(model, full_db) if p.analysis_id == "CMS-SUS-20-001"]
        assert len(found) == 1 and found[0].data_type == "UL"
        return model, found[0]

    model, artefact = cms_sus_20_001(392.8)
    assert artefact.ul_obs_fb > 10 * artefact.ul_exp_fb > 0
    assert not artefact.has_likelihood and artefact.r_obs is not None
    assert significance.evaluate(model, full_db).K < 2
    _, regular = cms_sus_20_001(450.0)
    assert regular.ul_obs_fb <= MAX_UL_RATIO * regular.ul_exp_fb and regular.has_likelihood
