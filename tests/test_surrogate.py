"""Workspace surrogates (protomodels.statistics.surrogate): training data from pyhf,
resumable and reproducible; a tiny network on ATLAS-SUSY-2018-31's full workspace B (one
signal-region bin, about a second per training signal with pyhf's numpy backend: the
costly trainings run as commands); its likelihood and limits against pyhf's; the domain
check and the fallback of ``--likelihood surrogate``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from protomodels.exceptions import WorkspaceError
from protomodels.loader import load_database
from protomodels.statistics import surrogate, surrogate_data

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

ANALYSIS, WORKSPACE = "ATLAS-SUSY-2018-31", "BkgOnlyB.json"
SAMPLES, HOLDOUT, SEED = 25, 25, 3


@pytest.fixture(scope="module")
def trained(subset_dir, tmp_path_factory):
    """One tiny surrogate, its data and network in a temporary cache folder."""
    base = tmp_path_factory.mktemp("surrogates")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(surrogate_data, "folder", lambda source: base / source.analysis / source.key)
        sidecar = surrogate.train_workspace(str(subset_dir), ANALYSIS, WORKSPACE, samples=SAMPLES,
                                            holdout=HOLDOUT, seed=SEED, backend="numpy")
        db = load_database(str(subset_dir), "full")
        expresult, source = surrogate_data.find_workspace(db, ANALYSIS, WORKSPACE)
        yield {"sidecar": sidecar, "source": source, "expresult": expresult, "base": base,
               "subset": subset_dir, "model": surrogate.WorkspaceSurrogate.load(source)}


def test_training_data_resume_exactly_and_the_same_seed_gives_the_same_network(trained):
    source = trained["source"]
    first = surrogate_data.chunk_path(source, "train", SEED, 0)
    before = json.loads(first.read_text())
    first.unlink()  # as if killed before this chunk was written
    outcome = surrogate_data.generate(str(trained["subset"]), ANALYSIS, WORKSPACE, SAMPLES,
                                      HOLDOUT, SEED, backend="numpy")
    assert outcome["computed"] == 1 and outcome["chunks"] == 2  # only the missing chunk
    after = json.loads(first.read_text())
    assert after["signals"] == before["signals"]
    np.testing.assert_allclose(np.array(after["deltas"], dtype=float),
                               np.array(before["deltas"], dtype=float), atol=1e-6)
    x = np.array(before["signals"])
    old = trained["model"].deltas(x)
    surrogate.train(source, SAMPLES, HOLDOUT, SEED)
    again = surrogate.WorkspaceSurrogate.load(source).deltas(x)
    np.testing.assert_allclose(again, old, atol=1e-6, rtol=0)
    assert trained["sidecar"]["training"]["samples"] == SAMPLES
    assert trained["sidecar"]["workspace_sha256"] == source.sha256


def test_surrogate_against_pyhf_on_held_out_signals(trained):
    """-2 Delta of the held-out signals (four data sets) and upper limits, against pyhf on
    the full workspace (the SModelS root search of ``SignalAsParameters``)."""
    from protomodels.statistics.validation import pyhf_backend

    model, source = trained["model"], trained["source"]
    bins, x, y, _ = surrogate_data.read_split(source, "holdout", SEED + surrogate_data.HOLDOUT_OFFSET,
                                              HOLDOUT)
    assert bins == model.bins == ["SRB"]
    errors = 2 * np.abs(model.deltas(x) - y)
    assert np.median(errors[:, 0]) < 0.3, np.median(errors, axis=0)
    assert np.all(model.deltas(np.zeros((1, 1))) == 0)  # Delta(0) = 0 exactly
    minus2 = -2 * y[:, 0]
    with pyhf_backend("numpy"):
        fit = surrogate_data.Generator(trained["expresult"], source).fit
    for i in [int(np.argmin(np.abs(minus2 - t))) for t in (2.0, 6.0)]:
        for expected in (False, True):
            ours = model.upper_limit(x[i], expected=expected)
            theirs = fit.upper_limit({"SRB": float(x[i][0])}, expected=expected)
            assert ours == pytest.approx(theirs, rel=0.1), (x[i], expected)
    assert model.upper_limit(np.zeros(1)) is None


def test_asymptotic_cls_equals_pyhf_hypotest():
    """CLs from q~_mu and q_mu,A (pyhf's test statistics on the data and on the Asimov data
    of the background-only fit) equals pyhf's own asymptotic hypotest."""
    import pyhf

    model = pyhf.simplemodels.uncorrelated_background(signal=[6.0, 9.0], bkg=[50.0, 52.0],
                                                      bkg_uncertainty=[4.0, 7.0])
    for observations in ([51, 48], [60, 70], [40, 45]):
        data = observations + model.config.auxdata
        init, bounds = model.config.suggested_init(), model.config.suggested_bounds()
        fixed = model.config.suggested_fixed()
        asimov = pyhf.infer.calculators.generate_asimov_data(0.0, data, model, init, bounds, fixed)
        for mu in (0.5, 1.0, 2.5):
            q = float(pyhf.infer.test_statistics.qmu_tilde(mu, data, model, init, bounds, fixed))
            q_a = float(pyhf.infer.test_statistics.qmu_tilde(mu, asimov, model, init, bounds, fixed))
            expected = float(pyhf.infer.hypotest(mu, data, model, test_stat="qtilde"))
            assert surrogate.asymptotic_cls(q, q_a) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_domain_check_and_the_fallback_of_likelihood_surrogate(trained):
    model = trained["model"]
    assert model.in_domain(np.array([0.5 * model.max_events[0]])).in_domain
    outside = model.in_domain(np.array([3.0 * model.max_events[0]]))
    assert not outside.in_domain and "training range" in outside.reason
    db = load_database(str(trained["subset"]), "surrogate")
    try:
        result = next(er for er in db.smodels.expResultList
                      if er.globalInfo.id == ANALYSIS and hasattr(er.globalInfo, "jsonFiles"))
        attached = surrogate.attached_to(result)
        assert attached.files == ["BkgOnlyA.json", "BkgOnlyB.json", "BkgOnlyC.json"]
        assert [s is not None for s in attached.surrogates] == [False, True, False]
        assert "surrogate for BkgOnlyB.json" in db.likelihoods[ANALYSIS].describe()
        used = surrogate.SignalSurrogate(attached, {"SRB": 0.5 * model.max_events[0]})
        assert used.usable
        assert used.nll(1.0) == pytest.approx(model.nll(1.0, used.vector))
        assert used.nll(0.0) == 0.0
        region_a = attached.regions[0][0]
        untrained = surrogate.SignalSurrogate(attached, {"SRB": 1.0, region_a: 1.0})
        assert not untrained.usable and untrained.reason == "not trained: BkgOnlyA.json"
        too_big = surrogate.SignalSurrogate(attached, {"SRB": 3.0 * model.max_events[0]})
        assert not too_big.usable and too_big.reason.startswith("outside domain of BkgOnlyB.json")
    finally:
        surrogate.detach(db)


def test_a_surrogate_of_another_workspace_version_is_refused(trained):
    _, json_path = surrogate.model_paths(trained["source"])
    sidecar = json.loads(json_path.read_text())
    try:
        json_path.write_text(json.dumps(dict(sidecar, workspace_sha256="0" * 64)))
        with pytest.raises(WorkspaceError, match="field 'workspace_sha256'.*retrain"):
            surrogate.WorkspaceSurrogate.load(trained["source"])
        json_path.write_text(json.dumps(dict(sidecar, schema="protomodels.surrogate/0")))
        with pytest.raises(WorkspaceError,
                           match=r"model.json: \$\.schema: 'protomodels.surrogate/0' is not"):
            surrogate.WorkspaceSurrogate.load(trained["source"])
    finally:
        json_path.write_text(json.dumps(sidecar))


def test_train_command_names_a_missing_analysis(subset_dir):
    from click.testing import CliRunner

    from protomodels.cli import cli

    result = CliRunner().invoke(cli, ["surrogate", "train", "ATLAS-NOPE", "--database",
                                      str(subset_dir)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: surrogate: analysis 'ATLAS-NOPE' is not in the database")
