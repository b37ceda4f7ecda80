"""Fake databases on the subset of real analyses: the sampler's statistics, the record
round trip, injection closure, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from protomodels import fakedb, significance
from protomodels.loader import load_database
from protomodels.exceptions import DatabaseError, SLHAError
from protomodels.slha import read_slha

PAPER_BEST = Path(fakedb.__file__).parent / "examples" / "paper_best.slha"
SEEDS = 3000


def _result(db, analysis, em):
    return next(er for er in db.results
                if er.globalInfo.id == analysis and fakedb._is_em(er) == em)


@pytest.fixture(scope="module")
def fakes(subset_dir, tmp_path_factory):
    """SM-only (Poisson), SM-only Asimov and injected Asimov fakes of one seed."""
    root = tmp_path_factory.mktemp("fakes")
    made = {}
    for name, noise, inject in (("sm", "poisson", None), ("asimov", "fixed", None),
                                ("injected", "fixed", PAPER_BEST)):
        fakedb.generate(root / name, seed=4, base=str(subset_dir), inject=inject, noise=noise)
        made[name] = root / name
    return made


@pytest.mark.parametrize("fudge", [1.0, 0.65])
def test_counts_have_mean_b_and_variance_b_plus_db2(subset_db, fudge):
    er = _result(subset_db, "ATLAS-SUSY-2016-07", em=True)
    draws = [fakedb.draw_background(er, seed, fudge=fudge) for seed in range(SEEDS)]
    checked = 0
    for ds in er.datasets:
        b, db = float(ds.dataInfo.expectedBG), float(ds.dataInfo.bgError)
        if b < 4 * db:  # clipping at 0 would bias the moments
            continue
        n = np.array([d[ds.getID()]["n_background"] for d in draws], dtype=float)
        variance = b + (fudge * db) ** 2
        assert abs(n.mean() - b) < 5 * np.sqrt(variance / SEEDS), ds.getID()
        assert abs(n.var(ddof=1) / variance - 1) < 5 * np.sqrt(2 / SEEDS) + 0.02, ds.getID()
        checked += 1
    assert checked >= 10


def test_covariance_regions_are_drawn_correlated(subset_db):
    er = _result(subset_db, "CMS-SUS-21-002", em=True)
    order = er.globalInfo.datasetOrder
    cov = np.asarray(er.globalInfo.covariance, dtype=float)
    b = np.array([float(er.getDataset(d).dataInfo.expectedBG) for d in order])
    draws = [fakedb.draw_background(er, seed) for seed in range(SEEDS)]
    n = np.array([[d[name]["n_background"] for name in order] for d in draws], dtype=float)
    keep = b > 4 * np.sqrt(np.diag(cov))
    expected = (cov + np.diag(b))[np.ix_(keep, keep)]
    sample = np.cov(n[:, keep], rowvar=False)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert keep.sum() >= 5
    assert np.max(np.abs(sample - expected) / scale) < 0.12
    assert np.max(np.abs(expected / scale - np.eye(keep.sum()))) > 0.2  # really correlated


def test_ul_shifts_are_standard_normal(subset_db):
    maps = [(er, tx) for er in subset_db.results if not fakedb._is_em(er)
            for tx in er.datasets[0].txnameList]
    with_expected = [(er, tx) for er, tx in maps if tx.txnameDataExp is not None]
    assert 0 < len(with_expected) < len(maps)
    x = np.array([fakedb.draw_ul_shift(er, tx, seed) for seed in range(300)
                  for er, tx in with_expected])
    assert abs(x.mean()) < 5 / np.sqrt(len(x))
    assert abs(x.std() - 1) < 5 / np.sqrt(2 * len(x))
    assert all(fakedb.draw_ul_shift(er, tx, 1) is None for er, tx in maps
               if tx.txnameDataExp is None)


def test_loaded_fake_carries_every_recorded_value(fakes, subset_dir):
    record = json.loads((fakes["sm"] / fakedb.RECORD).read_text())
    db = load_database(str(fakes["sm"]))
    real = load_database(str(subset_dir))
    assert db.fake["seed"] == 4 and db.fake["base_sha256"] == real.sha256 == record["base"]["sha256"]
    assert db.path == str(fakes["sm"]) and db.sha256 != real.sha256
    changed = 0
    for row in record["efficiency_maps"]:
        er = _result(db, row["analysis"], em=True)
        info = er.getDataset(row["dataset"]).dataInfo
        real_info = _result(real, row["analysis"], em=True).getDataset(row["dataset"]).dataInfo
        assert info.observedN == row["n_obs"] == row["n_background"]
        assert row["n_obs_real"] == real_info.observedN
        assert info.upperLimit.asNumber() == pytest.approx(row["upper_limit_fb"], rel=1e-12)
        if row["n_obs"] == row["n_obs_real"]:  # an unchanged count keeps the published limit
            assert row["upper_limit_fb"] == pytest.approx(real_info.upperLimit.asNumber(), rel=1e-12)
        changed += row["n_obs"] != row["n_obs_real"]
    assert changed > len(record["efficiency_maps"]) / 3
    for row in record["upper_limit_maps"]:
        tx = next(t for t in _result(db, row["analysis"], em=False).datasets[0].txnameList
                  if t.txName == row["txname"])
        if row["x"] is None:  # no expected map: the observed one stays
            real_tx = next(t for t in _result(real, row["analysis"], em=False).datasets[0].txnameList
                           if t.txName == row["txname"])
            assert np.array_equal(tx.txnameData.y_values, real_tx.txnameData.y_values)
            continue
        expected = np.asarray(tx.txnameDataExp.y_values) * max(1 + row["x"] / 1.96, 0.1)
        assert np.allclose(tx.txnameData.y_values, expected, rtol=1e-12)
        # the interpolated limit anywhere on the grid is the shifted expected one
        grid = fakedb.grid_coordinates(tx.txnameDataExp)
        point = grid[np.asarray(tx.txnameDataExp.tri.simplices[0], dtype=int)].mean(axis=0)
        flat = tx.txnameDataExp.inversePCAtransf(point)
        assert tx.txnameData.getValueFor(flat) == pytest.approx(
            tx.txnameDataExp.getValueFor(flat) * row["factor"], rel=1e-5)
    assert record["pyhf"], "the subset holds a pyhf result"
    for row in record["pyhf"]:
        er = _result(db, row["analysis"], em=True)
        channel = next(o for o in er.globalInfo.jsons[row["workspace"]]["observations"]
                       if o["name"] == row["channel"])
        assert channel["data"][row["bin"]] == row["n_obs"]
        assert row["n_obs"] == er.getDataset(row["dataset"]).dataInfo.observedN


def test_same_seed_same_fake_other_seed_other_fake(subset_db):
    a, b, c = (fakedb.draw(subset_db, seed) for seed in (11, 11, 12))
    for key in ("efficiency_maps", "upper_limit_maps", "pyhf"):
        assert a[key] == b[key]
    assert a["efficiency_maps"] != c["efficiency_maps"]
    assert [r["x"] for r in a["upper_limit_maps"]] != [r["x"] for r in c["upper_limit_maps"]]
    # drawing did not touch the loaded database
    assert fakedb.draw(subset_db, 11)["efficiency_maps"] == a["efficiency_maps"]


def test_asimov_sm_fake_has_no_excess_injected_one_does(fakes, subset_db):
    model = read_slha(PAPER_BEST)
    asimov = significance.evaluate(model, load_database(str(fakes["asimov"])))
    injected = significance.evaluate(model, load_database(str(fakes["injected"])))
    real = significance.evaluate(model, subset_db)
    assert asimov.TL < 1e-6 and asimov.K == pytest.approx(asimov.log_prior, abs=1e-6)
    assert real.TL > 2
    assert injected.TL > 3 and injected.K > asimov.K + 3
    assert 0.8 < injected.mu_hat <= 1.2  # the injected strength is found again
    rows = json.loads((fakes["asimov"] / fakedb.RECORD).read_text())["efficiency_maps"]
    assert all(r["n_obs"] == r["b"] for r in rows)


def test_injected_signal_reaches_counts_and_limits(fakes, subset_db):
    record = json.loads((fakes["injected"] / fakedb.RECORD).read_text())
    assert record["injected"]["file"] == str(PAPER_BEST)
    model_text = record["injected"]["slha"]
    events, ul_signals = fakedb.signal_predictions(model_text, subset_db.smodels)
    rows = {(r["analysis"], r["dataset"]): r for r in record["efficiency_maps"]}
    assert sum(events.values()) > 1
    for key, s in events.items():
        assert rows[key]["n_obs"] == pytest.approx(rows[key]["b"] + s, rel=1e-12)
    # at the model's own point the observed limit is the expected one plus sigma x BR
    db = load_database(str(fakes["injected"]))
    checked = 0
    for signal in ul_signals:
        er = _result(db, signal["analysis"], em=False)
        tx = next(t for t in er.datasets[0].txnameList if t.txName == signal["txname"])
        if tx.txnameDataExp is None or len([s for s in ul_signals if s["txname"] == signal["txname"]
                                            and s["analysis"] == signal["analysis"]]) > 1:
            continue
        from smodels.base.physicsUnits import fb
        sigma = (signal["sigma_fb"] * fb).asNumber(tx.y_unit)
        assert tx.txnameData.getValueFor(signal["point"]) == pytest.approx(
            tx.txnameDataExp.getValueFor(signal["point"]) + sigma, rel=1e-6)
        checked += 1
    assert checked >= 1


def test_bad_input_is_refused_and_nothing_is_lost(fakes, subset_dir, tmp_path):
    with pytest.raises(DatabaseError, match="already exists"):
        fakedb.generate(fakes["sm"], seed=1, base=str(subset_dir))
    with pytest.raises(DatabaseError, match="cannot be the base"):
        fakedb.generate(tmp_path / "x", seed=1, base=str(fakes["sm"]))
    broken = tmp_path / "broken.slha"
    broken.write_text("BLOCK MASS\n 1000022 -5.0\n")
    with pytest.raises(SLHAError, match="broken.slha"):
        fakedb.generate(tmp_path / "y", seed=1, base=str(subset_dir), inject=broken)
    assert not (tmp_path / "y").exists()
    copy = tmp_path / "copy"
    shutil.copytree(fakes["sm"], copy)
    record = json.loads((copy / fakedb.RECORD).read_text())
    record["base"]["sha256"] = "0" * 64
    (copy / fakedb.RECORD).write_text(json.dumps(record))
    with pytest.raises(DatabaseError, match="base.sha256"):
        load_database(str(copy))
    del record["efficiency_maps"]
    (copy / fakedb.RECORD).write_text(json.dumps(record))
    with pytest.raises(DatabaseError, match="'efficiency_maps'"):
        load_database(str(copy))
    (copy / fakedb.RECORD).write_text("{not json")
    with pytest.raises(DatabaseError, match="unreadable"):
        load_database(str(copy))
    record = json.loads((fakes["sm"] / fakedb.RECORD).read_text())
    record["efficiency_maps"][0]["dataset"] = "SRnowhere"
    (copy / fakedb.RECORD).write_text(json.dumps(record))
    with pytest.raises(DatabaseError, match="SRnowhere"):
        load_database(str(copy))


def test_fakedb_command(subset_dir, tmp_path):
    from click.testing import CliRunner

    from protomodels.cli import cli

    out = tmp_path / "db1"
    args = ["fakedb", "--seed", "1", "--out", str(out), "--database", str(subset_dir), "--json"]
    result = CliRunner().invoke(cli, args, obj={})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seed"] == 1 and summary["signal_regions_changed"] > 0
    assert summary["pyhf_regions"] > 0 and summary["ul_maps_shifted"] > 0
    before = (out / fakedb.RECORD).read_bytes()
    again = CliRunner().invoke(cli, args, obj={})
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert (out / fakedb.RECORD).read_bytes() == before  # nothing lost
    info = CliRunner().invoke(cli, ["database", "info", "--database", str(out)], obj={})
    assert info.exit_code == 0 and "FAKE database" in info.stdout and "seed 1" in info.stdout
