"""Injection closure report (protomodels.closure): matching by kind, rates, errors."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from protomodels.closure import closure, format_closure, match
from protomodels.exceptions import RunError
from protomodels.model import PIDS
from protomodels.pvalue import clopper_pearson

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


def test_closure_of_runs(tmp_path):
    from protomodels.runs import WalkConfig, walk

    runs = []
    for seed in (1, 2):
        out = tmp_path / f"run-{seed}"
        walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=5, seed=seed),
             score_factory=fake_factory)
        runs.append(out)
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
