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
from scipy import optimize

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


def test_training_data_resume_exactly_and_the_same_seed_gives_the_same_network(trained,
                                                                                monkeypatch):
    from protomodels.statistics.surrogate_baseline import GaussianBaseline

    source = trained["source"]
    first = surrogate_data.chunk_path(source, "train", SEED, 0)
    before = json.loads(first.read_text())
    first.unlink()  # as if killed before this chunk was written
    # the baseline's fits are not redone: it is read back from the surrogate's folder
    assert (surrogate_data.folder(source) / "baseline-numpy.json").is_file()

    def refit(*args):
        raise AssertionError("the baseline was fitted again")

    monkeypatch.setattr(GaussianBaseline, "from_generator", refit)
    outcome = surrogate_data.generate(str(trained["subset"]), ANALYSIS, WORKSPACE, SAMPLES,
                                      HOLDOUT, SEED, backend="numpy")
    assert outcome["computed"] == 1 and outcome["chunks"] == 2  # only the missing chunk
    assert outcome["baseline"].to_json() == trained["sidecar"]["baseline"]
    after = json.loads(first.read_text())
    assert after["signals"] == before["signals"]
    np.testing.assert_allclose(np.array(after["deltas"], dtype=float),
                               np.array(before["deltas"], dtype=float), atol=1e-6)
    x = np.array(before["signals"])
    old = trained["model"].deltas(x)
    surrogate.train(source, SAMPLES, HOLDOUT, SEED, baseline=outcome["baseline"])
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


def test_validate_keeps_pyhf_limits_and_marks_the_domain(trained, monkeypatch):
    """``validate``: pyhf's limits of the held-out signals are those of the full workspace
    for each row's own signal, computed once and read back when the network is validated
    again; the summary counts what its rows say, over all signals and inside the domain."""
    from protomodels.statistics.validation import pyhf_backend

    model, source = trained["model"], trained["source"]
    # one signal (numpy's limits cost about 20 s each here); the spread's first pick
    kwargs = dict(ul_signals=1, backend="numpy", database=str(trained["subset"]))
    report = surrogate.validate(trained["expresult"], source, **kwargs)
    rows = report["upper_limit_rows"]
    assert len(rows) == 1 and all(r["obs"][0] and r["exp"][0] for r in rows)
    # the row is the held-out signal with the smallest -2 Delta_obs (the largest excess):
    # pyhf directly
    _, x, y, _ = surrogate_data.read_split(source, "holdout", SEED + surrogate_data.HOLDOUT_OFFSET,
                                           HOLDOUT)
    first = int(np.argmin(-2 * y[:, 0]))
    with pyhf_backend("numpy"):
        fit = surrogate_data.Generator(trained["expresult"], source).fit
        direct = fit.upper_limit({"SRB": float(x[first][0])}, expected=False)
    assert rows[0]["obs"][0] == pytest.approx(direct, rel=1e-9)
    assert rows[0]["in_domain"] == model.in_domain(x[first]).in_domain

    def recompute(*args, **kwargs):
        raise AssertionError("pyhf's limit was computed again")

    monkeypatch.setattr(surrogate_data, "limit_task", recompute)
    again = surrogate.validate(trained["expresult"], source, **kwargs)
    assert [r["obs"][0] for r in again["upper_limit_rows"]] == [r["obs"][0] for r in rows]
    for which in ("obs", "exp"):
        ratios = np.array([ours / theirs for theirs, ours in (r[which] for r in rows)])
        close = np.abs(ratios - 1) <= 0.1
        inside = np.array([r["in_domain"] for r in rows])
        summary = report["upper_limits"][which]
        assert summary["within_10pct"] == round(float(np.mean(close)), 4)
        assert summary["in_domain"] == int(inside.sum())
        assert summary["within_10pct_in_domain"] == (round(float(np.mean(close[inside])), 4)
                                                     if inside.any() else None)


def test_gaussian_baseline_equals_pyhf_on_the_same_likelihood():
    """The surrogates' baseline (nuisance parameters profiled by Newton's method,
    ``surrogate_baseline``) against pyhf's fixed-mu fits of the same likelihood: three
    bins, two correlated background shifts (histosys, unit Gaussian constraints), signal
    in two bins (input bins mapped by position) with a 22% signal uncertainty, observed
    and expected data.  Then the consistent prior (the default): theta = 0 is the
    minimum at n = 0, so for a small signal Delta = sum_k n_k (d_k / b_k - 1) to first
    order (the envelope theorem)."""
    import pyhf

    from protomodels.statistics.surrogate_baseline import GaussianBaseline

    background = np.array([50.0, 12.0, 3.5])
    modes = np.array([[6.0, 1.0], [2.5, -1.5], [1.0, 0.5]])
    observed = np.array([58.0, 9.0, 6.0])
    u = 0.22
    datasets = [observed, background]
    baseline = GaussianBaseline([0, 2], background, modes, datasets, u,
                                precision=[np.eye(2)] * 2, linear=np.zeros((2, 2)))
    signals = np.array([[0.0, 0.0], [5.0, 2.0], [20.0, 0.5], [0.0, 9.0], [80.0, 30.0]])
    ours = baseline.deltas(signals)
    assert ours.shape == (5, 2) and np.all(ours[0] == 0)
    for signal, row in zip(signals, ours):
        spec = {"channels": [{"name": "SR", "samples": [
            {"name": "Bkg", "data": background.tolist(), "modifiers": [
                {"name": f"mode{p}", "type": "histosys",
                 "data": {"hi_data": (background + modes[:, p]).tolist(),
                          "lo_data": (background - modes[:, p]).tolist()}} for p in (0, 1)]},
            {"name": "bsm", "data": (nominal := [signal[0] + 1e-9, 1e-9, signal[1] + 1e-9]),
             "modifiers": [{"name": "mu_SIG", "type": "normfactor", "data": None},
                           {"name": "signalUncertainty", "type": "histosys",
                            "data": {"hi_data": [(1 + u) * x for x in nominal],
                                     "lo_data": [(1 - u) * x for x in nominal]}}]}]}],
            "observations": [{"name": "SR", "data": observed.tolist()}],
            "measurements": [{"name": "m", "config": {"poi": "mu_SIG", "parameters": []}}],
            "version": "1.0.0"}
        model = pyhf.Workspace(spec).model()
        for counts, value in zip((observed, background), row):
            data = list(counts) + model.config.auxdata
            twice = [float(pyhf.infer.mle.fixed_poi_fit(mu, data, model, return_fitted_val=True)[1])
                     for mu in (0.0, 1.0)]
            assert value == pytest.approx(0.5 * (twice[0] - twice[1]), abs=2e-4), (signal, counts)
    consistent = GaussianBaseline([0, 2], background, modes, datasets, u)
    small = np.array([[1e-4, 2e-4]])
    first_order = [small[0] @ (counts[[0, 2]] / background[[0, 2]] - 1) for counts in datasets]
    np.testing.assert_allclose(consistent.deltas(small)[0], first_order, rtol=1e-3, atol=1e-7)
    assert not np.allclose(baseline.deltas(small)[0], first_order, rtol=1e-3, atol=1e-7)


def test_gaussian_baseline_with_an_empty_bin_against_direct_minimisation():
    """A bin with no background, no data and no signal (valid in pyhf) must not stall the
    Newton steps: Delta against scipy's minimisation of the same objective."""
    from scipy import optimize

    from protomodels.statistics.surrogate_baseline import GaussianBaseline

    background, data = np.array([10.0, 5.0, 0.0]), np.array([12.0, 4.0, 0.0])
    modes = np.array([[1.5], [0.8], [0.0]])
    baseline = GaussianBaseline([0, 1, 2], background, modes, [data], 0.0,
                                precision=[[[1.0]]], linear=[[0.0]])

    def minimum(signal):
        def objective(theta):
            lam = np.maximum(background + modes[:, 0] * theta[0] + signal, 1e-300)
            return float(np.sum(lam - data * np.log(np.where(data > 0, lam, 1.0)))
                         + theta[0] ** 2 / 2)
        return optimize.minimize(objective, [0.0], method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-12}).fun

    signal = np.array([3.0, 1.0, 0.0])
    assert baseline.deltas(signal[None])[0, 0] == pytest.approx(
        minimum(np.zeros(3)) - minimum(signal), abs=1e-6)


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


def test_gaussian_limit_by_hand():
    """The root search's first guess: with mu-hat = 0, q = q_A = (mu / sigma)^2 and
    CLs = 2 Phi(-mu / sigma), so the 95% limit is 1.95996 sigma; with mu-hat > 0 the limit
    solves the qtilde CLs of a Gaussian, and scales with (mu-hat, sigma)."""
    assert surrogate.gaussian_limit(0.0, 1.0) == pytest.approx(1.959964, rel=1e-5)
    assert surrogate.gaussian_limit(0.0, 2.5) == pytest.approx(2.5 * 1.959964, rel=1e-5)
    limit = surrogate.gaussian_limit(1.5, 1.0)
    assert surrogate.asymptotic_cls((limit - 1.5) ** 2, limit ** 2) == pytest.approx(0.05, abs=1e-7)
    assert surrogate.gaussian_limit(3.0, 2.0) == pytest.approx(2.0 * limit, rel=1e-5)
    assert surrogate.parabola_vertex([0.0, 1.0, 3.0], [-(0.0 - 1.3) ** 2, -(1.0 - 1.3) ** 2,
                                                       -(3.0 - 1.3) ** 2]) == pytest.approx(1.3)
    assert surrogate.parabola_vertex([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]) is None


class CountingSurrogate(surrogate.WorkspaceSurrogate):
    """Stands in for a trained network: a one-bin Poisson counting experiment without
    nuisance parameters, whose Delta_D(n) = d ln(1 + n / b) - n is exact (d: the observed
    count for the observed data set; the background b for the expected one and for both
    Asimov ones, the background-only fit having nothing to fit).  Counts the rows."""

    def __init__(self, observed: float, background: float, max_events: float = 1e3):
        self.observed, self.background = observed, background
        self.max_events = np.array([max_events])
        self.rows = 0

    def deltas(self, signals, columns=None):
        n = np.atleast_2d(signals)[:, 0]
        self.rows += len(n)
        b = self.background
        out = np.stack([d * np.log1p(n / b) - n for d in (self.observed, b, b, b)], axis=1)
        return out if columns is None else out[:, list(columns)]


def counting_limit(observed: float, background: float, signal: float) -> float:
    """The qtilde CLs limit of the counting experiment by brute force: CLs from its exact
    q and q_A, mu-hat in closed form, one root search over the whole range."""
    def delta(d, mu):
        return d * np.log1p(mu * signal / background) - mu * signal

    mu_hat = max((observed - background) / signal, 0.0)

    def excess(mu):
        q = 0.0 if mu < mu_hat else 2.0 * (delta(observed, mu_hat) - delta(observed, mu))
        return surrogate.asymptotic_cls(q, -2.0 * delta(background, mu)) - 0.05

    return optimize.brentq(excess, 1e-6, 1e6, rtol=1e-12, xtol=1e-12)


@pytest.mark.parametrize("observed,background,signal", [
    (60, 50, 10.0), (45, 50, 10.0), (50, 50, 0.02), (3, 0.5, 1.0), (0, 2.0, 4.0)])
def test_upper_limit_search_equals_brute_force(observed, background, signal):
    """The surrogate's mu-hat search and limit root search (whatever their shortcuts) give
    the counting experiment's exact mu-hat and CLs limit, observed and expected, in at most
    18 rows for mu-hat and 50 for a limit."""
    model = CountingSurrogate(observed, background)
    mu_hat, best = model._maximum(np.array([signal]), 0)
    assert model.rows <= 18
    exact = max((observed - background) / signal, 0.0)
    assert mu_hat == pytest.approx(exact, rel=1e-3, abs=1e-6)
    model.rows = 0
    assert model.upper_limit(np.array([signal])) == pytest.approx(
        counting_limit(observed, background, signal), rel=2e-4)
    assert model.rows <= 50
    assert model.upper_limit(np.array([signal]), expected=True) == pytest.approx(
        counting_limit(background, background, signal), rel=2e-4)


def test_upper_limit_search_ends():
    """None when CLs stays above 0.05 up to mu = 1e6, quickly; the lower end otherwise."""
    model = CountingSurrogate(50, 50)
    assert model.upper_limit(np.array([1e-6])) is None
    assert model.rows <= 50
    assert model.upper_limit(np.zeros(1)) is None
    assert CountingSurrogate(0, 1e3).upper_limit(np.array([1e9])) == surrogate.MU_RANGE[0]


def test_domain_where_used_reaches_the_limit_of_an_excluded_signal():
    """A signal outside the training range at mu = 1 is used when it is inside at 1.3x its
    larger upper limit (the critic and K go no further), and not otherwise."""
    class Ranged(CountingSurrogate):
        def in_domain(self, signal):
            inside = bool(np.all(np.asarray(signal) <= self.max_events))
            return surrogate.DomainCheck(inside, "" if inside else "a bin outside the range")

    model = Ranged(50, 50, max_events=25.0)
    reach = surrogate.REACH_FACTOR * max(model.upper_limit(np.array([40.0]), expected=e)
                                         for e in (False, True))
    assert 10.0 < reach * 40.0 < 25.0
    check = model.in_domain_where_used(np.array([40.0]))
    assert check.in_domain and f"up to mu = {reach:.3g}" in check.reason
    assert model.in_domain_where_used(np.array([20.0])) == surrogate.DomainCheck(True)
    assert not Ranged(50, 50, max_events=10.0).in_domain_where_used(np.array([40.0])).in_domain
    assert not Ranged(50, 50, max_events=12.0).in_domain_where_used(np.array([15.0])).in_domain


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
        assert too_big.usable  # outside at mu = 1, inside at 1.3x its limit
        with pytest.MonkeyPatch.context() as patch:  # no limit, so no reach: it falls back
            patch.setattr(attached.surrogates[1], "upper_limit", lambda *args, **kwargs: None)
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


def test_regions_of_refuses_a_simplified_workspace_under_the_full_ones_name(tmp_path):
    """Our simplified workspaces of ATLAS-SUSY-2018-04 and -16 keep the full workspace's
    file name: with the database loaded in another mode, the training data and reference
    limits must not silently use them."""
    from types import SimpleNamespace

    from protomodels.statistics import workspaces

    regions = [{"smodels": "SR1", "type": "SR"}]
    source = surrogate_data.WorkspaceSource("A", "W.json", tmp_path / "W.json", "0" * 64, ("SR1",))
    for kind in (workspaces.FULL, workspaces.OUR_SIMPLIFIED):
        info = SimpleNamespace(id="A", jsonFiles={"W.json": regions}, jsons=[{"kind": kind}])
        setattr(info, workspaces.CHOICE, workspaces.WorkspaceChoice("A", ["W.json"], [kind]))
        expresult = SimpleNamespace(globalInfo=info)
        if kind == workspaces.FULL:
            assert surrogate_data.regions_of(expresult, source) == (regions, {"kind": kind})
        else:
            with pytest.raises(WorkspaceError, match="W.json is not in use as the full workspace"):
                surrogate_data.regions_of(expresult, source)
