"""Injection closure report (protomodels.closure): matching by kind, rates, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from scipy import stats

from protomodels.closure import closure, format_closure, match
from protomodels.exceptions import RunError
from protomodels.model import LSP, PIDS
from protomodels.pvalue import clopper_pearson
from protomodels.schemas import validate

from .test_fakedb import PAPER_BEST
from .test_runs import fake_factory

INJECTED = {PIDS["XZ1"]: 163.0, PIDS["Xd"]: 735.0, PIDS["Xt"]: 1166.0}


def _masses(**named):
    return {PIDS[name]: mass for name, mass in named.items()}


def test_partners_match_by_kind_within_the_window():
    # any light-flavour squark is a light-quark partner; the LSP is never spurious
    result = match(INJECTED, _masses(XZ1=40.0, Xu=900.0, Xt=1300.0))
    assert [(p["injected"], p["partner"], p["found"]) for p in result["partners"]] == [
        ("Xd", "Xu", True), ("Xt", "Xt", True)]
    assert result["spurious"] == []
    # 250 GeV off is not found; a second light squark and a gluino are spurious
    result = match(INJECTED, _masses(XZ1=163.0, Xd=990.0, Xs=760.0, Xg=1500.0))
    assert [(p["injected"], p["partner"], p["found"]) for p in result["partners"]] == [
        ("Xd", "Xs", True), ("Xt", None, False)]
    assert result["spurious"] == ["Xd", "Xg"]
    assert match(INJECTED, _masses(XZ1=163.0, Xt2=1000.0))["partners"][1]["found"]
    # a partner outside the window is not found, and is spurious
    far = match(INJECTED, _masses(XZ1=163.0, Xt=1366.5))
    assert not far["partners"][1]["found"] and far["spurious"] == ["Xt"]


def test_two_injected_partners_of_one_kind_are_both_found_when_possible():
    # nearest-first would give Xd 700 the Xs 800 and leave Xu 850 with Xc 550 (300 off)
    result = match(_masses(XZ1=100.0, Xd=700.0, Xu=850.0), _masses(XZ1=100.0, Xs=800.0, Xc=550.0))
    assert [(p["injected"], p["partner"], p["found"]) for p in result["partners"]] == [
        ("Xd", "Xc", True), ("Xu", "Xs", True)]
    assert result["spurious"] == []


def test_clopper_pearson_equals_scipy_exact_interval():
    for k, n in ((0, 10), (3, 10), (9, 10), (10, 10)):
        low, high = clopper_pearson(k, n)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.68, method="exact")
        assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def two_runs(tmp_path, steps: int):
    """Two one-chain runs of the fake predictor (on the real database's record)."""
    from protomodels.runs import WalkConfig, walk

    runs = []
    for seed in (1, 2):
        out = tmp_path / f"run-{seed}"
        walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=steps, seed=seed),
             score_factory=fake_factory)
        runs.append(out)
    return runs


def test_closure_of_runs(tmp_path):
    runs = two_runs(tmp_path, 5)
    with pytest.raises(RunError, match=r"run-1/run.json: field 'versions.database_fake' is null: "
                                       r"the run used a real database"):
        closure(runs)
    report = closure(runs, injected=PAPER_BEST)
    assert report["warnings"] == [f"{run} ran on a real database, not a fake one" for run in runs]
    for row in report["runs"]:
        best = json.loads((tmp_path / row["run"] / "hiscores.json").read_text())["entries"][0]
        assert row["masses"] == best["model"]["masses"]
        assert row == {**row, **match(INJECTED, {PIDS[n]: m for n, m in row["masses"].items()})}
    top = report["rates"][1]
    assert top["n"] == 2 and top["k"] == sum(r["partners"][1]["found"] for r in report["runs"])
    assert report["rates"][-1]["what"] == "runs with spurious particles"
    assert "runs with spurious particles" in format_closure(report)


def toy_score(model):
    """A fake score (not physics) with a known answer: the top partner gains 3 in K at
    1166 GeV, the light-quark partner costs 0.4 even at its best mass, 735 GeV; flat in
    the LSP mass and in multipliers."""
    model.validate()
    k = 0.0
    if PIDS["Xt"] in model.masses:
        k += 3.0 - ((model.masses[PIDS["Xt"]] - 1166.0) / 100.0) ** 2
    if PIDS["Xd"] in model.masses:
        k += -0.4 - ((model.masses[PIDS["Xd"]] - 735.0) / 100.0) ** 2
    return {"K": k, "TL": k, "mu_hat": 1.0}


def test_reference_fits_say_which_injected_particles_k_prefers(tmp_path):
    from protomodels.closure import reference_fits
    from protomodels.model import ProtoModel
    from protomodels.slha import read_slha

    injected = read_slha(PAPER_BEST)
    fits = reference_fits(injected, toy_score, max_evaluations=40)
    assert fits["K"] == pytest.approx(2.6, abs=1e-9)  # already at the optimum
    assert [(w["particle"], w["preferred"]) for w in fits["without"]] == [("Xd", False), ("Xt", True)]
    assert [w["delta_K"] for w in fits["without"]] == pytest.approx([-0.4, 3.0], abs=1e-9)
    assert fits["evaluations"] <= 3 * 40
    # the lighter of an ordered pair cannot be removed alone
    pair = ProtoModel(masses={LSP: 100.0, PIDS["Xt"]: 800.0, PIDS["Xt2"]: 1000.0},
                      decays={PIDS["Xt"]: {"t XZ1": 1.0}, PIDS["Xt2"]: {"t XZ1": 1.0}})
    rows = reference_fits(pair, toy_score, max_evaluations=5)["without"]
    assert rows[0]["particle"] == "Xt" and rows[0]["preferred"] is None and rows[0]["note"]
    assert rows[1]["particle"] == "Xt2" and rows[1]["preferred"] is not None
    # nor one that another particle decays into
    chain = ProtoModel(masses={LSP: 100.0, PIDS["XZ2"]: 300.0, PIDS["Xd"]: 800.0},
                       decays={PIDS["XZ2"]: {"h XZ1": 1.0}, PIDS["Xd"]: {"q XZ2": 1.0}})
    rows = reference_fits(chain, toy_score, max_evaluations=5)["without"]
    assert [(w["particle"], w["preferred"], bool(w["note"])) for w in rows] == [
        ("XZ2", None, True), ("Xd", False, False)]  # the toy K charges Xd 0.4
    # no finite K anywhere: undecided, and nothing that is not JSON
    nowhere = reference_fits(injected, lambda m: {"K": -math.inf}, max_evaluations=5)
    assert nowhere["K"] is None and nowhere["K_start"] is None
    assert all(w["preferred"] is None and w["delta_K"] is None for w in nowhere["without"])
    json.dumps(nowhere, allow_nan=False)

    runs = two_runs(tmp_path, 3)
    seen = []
    report = closure(runs, injected=PAPER_BEST, fits=True, max_evaluations=20,
                     score_of=lambda run: seen.append(run) or toy_score)
    assert seen == runs
    for row in report["runs"]:
        assert row["search_gap"]["K"] == pytest.approx(row["best_K"] - 2.6, abs=1e-9)
        assert row["search_gap"]["K_start"] == pytest.approx(row["best_K"] - 2.6, abs=1e-9)
    rates = {r["what"]: (r["k"], r["n"]) for r in report["rates"]}
    assert rates["K prefers Xd (light-quark partner) to its absence"] == (0, 2)
    assert rates["K prefers Xt (top partner) to its absence"] == (2, 2)
    found = sum(row["partners"][1]["found"] for row in report["runs"])
    assert rates["Xt found where K prefers it"] == (found, 2)
    assert "Xd found where K prefers it" not in rates
    assert "search gap" in format_closure(report)


def test_expected_fits_use_the_batch_asimov_database(subset_dir, tmp_path, monkeypatch):
    """`closure --expected`: the reference fits on a noise-free fake database with the
    runs' base database and injected model, built once beside the runs; its K as injected
    equals K of the injected model on an Asimov database made directly."""
    from click.testing import CliRunner

    from protomodels import fakedb, significance
    from protomodels.cli import cli
    from protomodels.loader import load_database
    from protomodels.slha import read_slha

    out = tmp_path / "batch"
    made = CliRunner().invoke(cli, ["fakes", "--count", "1", "--seed", "3", "--walkers", "1",
                                    "--steps", "2", "--ladder", "1", "--inject", str(PAPER_BEST),
                                    "--fudge", "0.65", "--out", str(out),
                                    "--database", str(subset_dir)], obj={})
    assert made.exit_code == 0, made.output
    run = out / "run-000"
    args = ["closure", str(run), "--expected", "--max-evaluations", "3", "--json"]
    first = CliRunner().invoke(cli, args, obj={})
    assert first.exit_code == 0, first.output
    validate(json.loads(first.stdout), "closure", "closure --json", AssertionError)
    expected = json.loads(first.stdout)["expected"]
    folder = Path(expected["database"])
    assert expected["built"] and folder.parent == out and folder.name.startswith("asimov-")
    assert expected["fits_cached"] is False
    record = fakedb.read_record(folder / fakedb.RECORD)
    ran_on = fakedb.read_record(out / "db-000" / fakedb.RECORD)
    assert record["noise"] == "fixed" and record["injected"]["slha"] == ran_on["injected"]["slha"]
    assert record["base"]["sha256"] == ran_on["base"]["sha256"]

    fakedb.generate(tmp_path / "direct", seed=0, base=str(subset_dir), inject=PAPER_BEST,
                    noise="fixed")
    direct = significance.evaluate(read_slha(PAPER_BEST), load_database(str(tmp_path / "direct")))
    assert direct.TL > 3  # the injected signal is there to be found
    assert expected["K_start"] == pytest.approx(direct.K, abs=1e-6)
    assert [w["particle"] for w in expected["without"]] == ["Xd", "Xt"]
    assert expected["combination"] is not None and all(":" in c for c in expected["combination"])
    assert expected["K"] >= expected["K_start"]

    monkeypatch.chdir(run)  # the run as ".": the database beside it is found and reused
    again = CliRunner().invoke(cli, ["closure", ".", *args[2:-1], "--injected", str(PAPER_BEST)],
                               obj={})  # text output; --injected: the recorded model itself
    assert again.exit_code == 0, again.output
    # deterministic fits are kept beside the database and read back, not redone
    assert f"expected (Asimov database {folder}; fits read back):" in again.stdout
    assert "built now" not in again.stdout and "  without Xd: " in again.stdout
    assert "\nrun-000 " in again.stdout  # the run's own name, not "."
    assert f"K gained with each particle: Xd {expected['without'][0]['delta_K']:+.2f}" \
        in again.stdout
    budget = CliRunner().invoke(cli, [*args[:3], "--max-evaluations", "2", "--json"], obj={})
    assert budget.exit_code == 0, budget.output
    assert json.loads(budget.stdout)["expected"]["fits_cached"] is False  # another key
    assert len((folder / "expected-fits.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["db-000", "fakes.json", folder.name,
                                                            "run-000"])
    # another model than the injected one, or runs of another batch, are refused
    other_model = tmp_path / "other.slha"
    other_model.write_text(PAPER_BEST.read_text().replace("0.41811846689895477", "0.5"))
    wrong = CliRunner().invoke(cli, [*args, "--injected", str(other_model)], obj={})
    assert wrong.exit_code == 1 and "not the model injected into" in wrong.stderr
    other = tmp_path / "other-batch"
    shutil.copytree(out, other)
    config = json.loads((other / "run-000" / "run.json").read_text())
    config["versions"]["database_fake"]["record"] = str(other / "db-000" / fakedb.RECORD)
    (other / "run-000" / "run.json").write_text(json.dumps(config))
    moved = json.loads((other / "db-000" / fakedb.RECORD).read_text())
    moved["base"]["sha256"] = "0" * 64
    (other / "db-000" / fakedb.RECORD).write_text(json.dumps(moved))
    mixed = CliRunner().invoke(cli, [*args[:2], str(other / "run-000"), *args[2:]], obj={})
    assert mixed.exit_code == 1 and "field 'base.sha256' differs" in mixed.stderr
    # a folder of that name holding another database is refused, not used
    (folder / fakedb.RECORD).write_text((out / "db-000" / fakedb.RECORD).read_text())
    refused = CliRunner().invoke(cli, args, obj={})
    assert refused.exit_code == 1 and "field 'noise' is 'poisson', not 'fixed'" in refused.stderr
    (folder / fakedb.RECORD).write_text("{")  # damaged: refused, the way out named
    damaged = CliRunner().invoke(cli, args, obj={})
    assert damaged.exit_code == 1 and f"remove {folder} to rebuild it" in damaged.stderr
