"""The posterior from a run's T = 1 chains: content and presence probabilities equal to a
brute-force count over the histories, burn-in, diagnostics, errors and the command line."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from protomodels import runs
from protomodels.cli import cli
from protomodels.exceptions import RunError
from protomodels.posterior import (SCHEMA, format_report, integrated_time, posterior,
                                   rank_rhat, split_rhat, trace_diagnostics)
from protomodels.runs import WalkConfig, read_history, walk

from .test_runs import SPACE, fake_factory

STEPS = 100


def _walk(out, **settings):
    """A real run with the fake predictor, in the small model space of test_runs (so that
    the T = 1 chains visit every content).  Made fast: no fsync, no hiscores (the
    posterior reads only the histories); the histories are what they would be anyway."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "Space", lambda: SPACE)
        patch.setattr(runs, "update_hiscores", lambda path, candidates: None)
        patch.setattr(os, "fsync", lambda fd: None)
        summary = walk(WalkConfig(out=str(out), checkpoint_every=50, **settings),
                       score_factory=fake_factory)
    assert summary["crashed"] == [] and summary["interrupted"] == []
    return out


@pytest.fixture(scope="module")
def tempered(tmp_path_factory):
    """Replica exchange on the ladder 0.5, 1, 2 with two columns: chains 1 and 4 at T = 1."""
    return _walk(tmp_path_factory.mktemp("posterior") / "run", walkers=6, steps=STEPS, seed=4,
                 ladder=[0.5, 1.0, 2.0], swap_every=10)


def brute_force(run, chains, burn_in):
    """Contents and particles of the states after ``burn_in``, counted directly."""
    samples = [e for c in chains for e in read_history(run / f"walker-{c}") if e["step"] > burn_in]
    contents = Counter(frozenset(e["model"]["masses"]) for e in samples)
    return samples, contents


def test_content_probabilities_are_the_brute_force_count(tempered):
    result = posterior(tempered)
    assert result["schema"] == SCHEMA and result["run"] == str(tempered)
    chains = [c for c in range(6) if c % 3 == 1]  # rung of T = 1 in each column
    assert [c["chain"] for c in result["chains"]] == chains
    samples, contents = brute_force(tempered, chains, STEPS // 2)
    assert result["samples"] == len(samples) == 2 * (STEPS - STEPS // 2)
    assert {frozenset(r["particles"]): r["count"] for r in result["contents"]} == contents
    for row in result["contents"]:
        assert row["probability"] == row["count"] / len(samples)
        assert row["content"] == " ".join(sorted(row["particles"]))
    probabilities = [r["probability"] for r in result["contents"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert math.fsum(probabilities) == pytest.approx(1.0)
    assert len(contents) >= 4  # the chains moved between contents


def test_presence_agrees_with_contents_and_histograms(tempered):
    result = posterior(tempered, bins=7)
    presence = {r["particle"]: r for r in result["presence"]}
    assert set(presence) == {p for r in result["contents"] for p in r["particles"]}
    assert presence["XZ1"]["probability"] == 1.0  # the LSP is always there
    for name, row in presence.items():
        from_contents = sum(r["probability"] for r in result["contents"] if name in r["particles"])
        assert row["probability"] == pytest.approx(from_contents)
        histogram = result["histograms"][name]
        assert sum(histogram["counts"]) == histogram["samples"] == row["count"]
        assert len(histogram["edges_GeV"]) == 8 and len(histogram["counts"]) == 7
        q = histogram["quantiles_GeV"]
        assert histogram["edges_GeV"][0] <= q["0.025"] <= q["0.5"] <= q["0.975"] <= histogram["edges_GeV"][-1]
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN or infinity anywhere


def test_burn_in_drops_the_first_steps_of_each_chain(tempered):
    default = posterior(tempered)
    assert default["burn_in"] == STEPS // 2 and default["burn_in_default"]
    for burn_in in (0, 37, STEPS - 1):
        result = posterior(tempered, burn_in=burn_in)
        assert result["burn_in"] == burn_in and not result["burn_in_default"]
        assert result["samples_per_chain"] == STEPS - burn_in
        assert result["samples"] == 2 * (STEPS - burn_in)
        _, contents = brute_force(tempered, [1, 4], burn_in)
        assert {frozenset(r["particles"]): r["count"] for r in result["contents"]} == contents
    with pytest.raises(RunError, match=f"burn-in {STEPS} leaves no samples"):
        posterior(tempered, burn_in=STEPS)


def test_chains_of_unequal_length_are_cut_to_the_shortest(tempered, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(tempered, run)
    history = run / "walker-4" / "history.jsonl"
    history.write_text("".join(history.read_text().splitlines(keepends=True)[:60]))
    result = posterior(run)
    assert result["steps"] == 60 and result["burn_in"] == 30 and result["samples"] == 60
    assert [c["steps"] for c in result["chains"]] == [STEPS, 60]
    assert "using the first 60" in caplog.text


def test_diagnostics_on_a_decent_run(tmp_path):
    """Four T = 1 chains (a one-rung ladder: plain Metropolis-Hastings, the cheapest
    decent run) of 1000 steps, 900 kept: R-hat near 1, a positive ESS."""
    run = _walk(tmp_path / "run", walkers=4, steps=1000, seed=2, ladder=[1.0])
    result = posterior(run, burn_in=100)
    assert result["samples"] == 3600
    diagnostics = result["diagnostics"]
    for name in ("K", "n_particles"):
        d = diagnostics[name]
        assert 1.0 <= d["tau"] < 100 and d["ess"] == pytest.approx(result["samples"] / d["tau"])
        assert d["rhat"] < 1.1 and d["rhat_split"] < 1.1
    assert diagnostics["presence"]["XZ1"]["note"] == "constant"
    assert set(diagnostics["presence"]) == {"XZ1", "XW1", "Xg", "Xt"}
    for name, d in diagnostics["presence"].items():
        if name != "XZ1":
            assert d["ess"] > 0 and d["rhat"] < 1.1
    for row in result["presence"]:
        if row["particle"] != "XZ1":
            assert 0 < row["mcse"] < 0.1
    text = format_report(result)
    assert "R-hat" in text and "number of particles" in text


def test_estimators_on_known_chains():
    """AR(1) with coefficient 0.8 has tau = (1 + 0.8) / (1 - 0.8) = 9; chains around
    different means have a large R-hat, and so do chains with different spreads (tail)."""
    rng = np.random.default_rng(1)
    x = np.zeros((4, 20000))
    noise = rng.normal(size=x.shape)
    for t in range(1, x.shape[1]):
        x[:, t] = 0.8 * x[:, t - 1] + noise[:, t]
    assert integrated_time(x) == pytest.approx(9.0, rel=0.1)
    assert integrated_time(rng.normal(size=(2, 5000))) == pytest.approx(1.0, abs=0.1)
    iid = rng.normal(size=(4, 2000))
    assert abs(split_rhat(iid) - 1) < 0.01 and abs(rank_rhat(iid) - 1) < 0.01
    shifted = iid + np.array([[0.0], [0.0], [0.0], [2.0]])
    assert split_rhat(shifted) > 1.3 and rank_rhat(shifted) > 1.3
    wider = iid * np.array([[1.0], [1.0], [1.0], [5.0]])
    assert rank_rhat(wider) > 1.1 > split_rhat(wider)  # only the tail R-hat sees it
    stuck = trace_diagnostics(np.array([[0.0] * 10, [1.0] * 10]))
    assert stuck["tau"] is None and stuck["rhat"] is None and "do not mix" in stuck["note"]


def run_cli(*args):
    return CliRunner().invoke(cli, ["posterior", *map(str, args)], obj={})


def test_cli_json_text_and_plot(tempered, tmp_path):
    result = run_cli(tempered, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(json.dumps(posterior(tempered)))
    out = tmp_path / "report.txt"
    result = run_cli(tempered, "--burn-in", 75, "--bins", 5, "--output-file", out)
    assert result.exit_code == 0 and result.stdout == ""
    text = out.read_text()
    best = posterior(tempered, burn_in=75, bins=5)["contents"][0]
    assert "after a burn-in of 75:" in text and "50 samples (25 per chain)" in text
    assert f"{best['probability']:.3f} {best['count']:>7}  {best['content']}" in text
    pytest.importorskip("matplotlib")
    png = tmp_path / "masses.png"
    result = run_cli(tempered, "--json", "--plot", png)
    assert result.exit_code == 0 and json.loads(result.stdout)["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_t1_is_a_one_line_error(tmp_path):
    run = _walk(tmp_path / "cold", walkers=2, steps=2, seed=1, ladder=[0.5, 2.0], swap_every=1)
    with pytest.raises(RunError, match=r"no chain at T = 1 in its ladder 0\.5, 2"):
        posterior(run)
    result = run_cli(run)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run) in lines[0] and "0.5, 2" in lines[0]
    result = run_cli(tmp_path)  # not a run at all
    assert result.exit_code == 1 and "no run.json" in result.stderr
