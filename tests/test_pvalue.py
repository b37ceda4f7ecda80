"""The global p-value: arithmetic against hand computations, the report's checks, the
command line, and the batch of fake runs on the subset database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from protomodels import pvalue
from protomodels.cli import cli
from protomodels.exceptions import RunError
from protomodels.model import LSP, ProtoModel
from protomodels.runs import RUN_SCHEMA, WalkerStore


def _run(folder: Path, best_k: float, fake: bool, steps: int = 200, walkers: int = 2) -> Path:
    """A run directory as `walk` leaves it (run.json and hiscores.json only)."""
    folder.mkdir(parents=True)
    config = {"walkers": walkers, "steps": steps, "temperature": 1.0, "r_limit": 1.0,
              "sqrts": [8, 13], "analyses": ["*"], "seed": 1, "out": str(folder)}
    versions = {"database_fake": {"record": str(folder / "db/fakedb.json"), "seed": 1,
                                  "injected": None} if fake else None}
    (folder / "run.json").write_text(json.dumps({"schema": RUN_SCHEMA, "config": config,
                                                 "versions": versions,
                                                 "segments": [{"steps": steps}]}))
    entries = [{"K": best_k, "rank": 1, "model": {"masses": {"XZ1": 300.0, "Xt": 900.0}}},
               {"K": best_k - 1.0, "rank": 2, "model": {"masses": {"XZ1": 200.0}}}]
    (folder / "hiscores.json").write_text(json.dumps({"schema": "protomodels.hiscores/1",
                                                      "entries": entries}))
    return folder


def test_pvalue_against_hand_computation():
    ks = [0.5, 1.0, 2.0, 3.0, -1.0]
    result = pvalue.global_pvalue(2.0, ks)
    assert result["n_at_or_above"] == 2 and result["p_value"] == pytest.approx(0.4)
    assert result["p_value_error"] == pytest.approx(np.sqrt(0.4 * 0.6 / 5))
    lo, hi = result["p_value_interval_68"]
    # Clopper-Pearson: the binomial tail probabilities at the bounds are 16%
    assert stats.binom.sf(1, 5, lo) == pytest.approx(0.16, abs=1e-9)
    assert stats.binom.cdf(2, 5, hi) == pytest.approx(0.16, abs=1e-9)
    # KDE tail: Scott's rule bandwidth, numerical integration of the mixture of Gaussians
    h = np.std(ks, ddof=1) * len(ks) ** (-1 / 5)
    grid = np.linspace(2.0, 40.0, 400001)
    density = np.mean([stats.norm.pdf(grid, k, h) for k in ks], axis=0)
    assert result["p_value_kde"] == pytest.approx(np.trapezoid(density, grid), rel=1e-6)
    assert result["kde_bandwidth"] == pytest.approx(h)
    none = pvalue.global_pvalue(10.0, ks)
    assert none["p_value"] == 0 and none["p_value_interval_68"][0] == 0
    assert none["p_value_interval_68"][1] == pytest.approx(1 - 0.16 ** (1 / 5))
    assert pvalue.global_pvalue(1.0, [3.0, 3.0])["p_value_kde"] is None  # no spread, no KDE
    with pytest.raises(RunError):
        pvalue.global_pvalue(1.0, [])


def test_report_warns_about_unfair_comparisons(tmp_path):
    real = _run(tmp_path / "real", 2.5, fake=False)
    fakes = [_run(tmp_path / f"fake{i}", k, fake=True) for i, k in enumerate([0.1, 3.0, -0.5])]
    report = pvalue.compare_runs(real, fakes)
    assert report["p_value"] == pytest.approx(1 / 3) and report["warnings"] == []
    odd = [_run(tmp_path / "realdb", 1.0, fake=False), _run(tmp_path / "short", 1.0, fake=True, steps=50)]
    report = pvalue.compare_runs(real, fakes + odd)
    assert len(report["warnings"]) == 2
    assert "real database" in report["warnings"][0] and "steps (50 vs 200)" in report["warnings"][1]
    unfinished = _run(tmp_path / "unfinished", 0.0, fake=True)
    for chain, step in ((0, 150), (1, 120)):  # the run has done what its slowest chain has
        store = WalkerStore(unfinished / f"walker-{chain}")
        store.folder.mkdir()
        store.save_checkpoint(step, ProtoModel(masses={LSP: 300.0}), {"K": 0.0},
                              np.random.default_rng(0))
    report = pvalue.compare_runs(real, fakes + [unfinished])
    assert report["warnings"] == [f"{unfinished} is unfinished: 120 of 200 steps"]
    with pytest.raises(RunError, match="not a run directory"):
        pvalue.compare_runs(tmp_path / "nothing", fakes)


@pytest.mark.writes_invalid_files
def test_a_damaged_run_json_is_a_one_line_error(tmp_path):
    """run.json is read against its schema (it used to be read raw: a wrong field gave a
    TypeError, a file of another version was misread)."""
    real = _run(tmp_path / "real", 2.5, fake=False)
    fake = _run(tmp_path / "fake", 1.0, fake=True)
    record = json.loads((fake / "run.json").read_text())
    (fake / "run.json").write_text(json.dumps(dict(record, segments=[{"steps": "200"}])))
    with pytest.raises(RunError) as caught:
        pvalue.compare_runs(real, [fake])
    assert str(caught.value) == f"{fake / 'run.json'}: $.segments[0].steps: '200' is not of type 'integer'"
    del record["schema"]
    (fake / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match=r"run.json: \$.schema: missing, expected 'protomodels.run/1'"):
        pvalue.compare_runs(real, [fake])


def test_pvalue_command_writes_json_and_png(tmp_path):
    real = _run(tmp_path / "real", 2.5, fake=False)
    fakes = [str(_run(tmp_path / f"fake{i}", k, fake=True)) for i, k in enumerate([0.1, 3.0, -0.5, 1.2])]
    result = CliRunner().invoke(cli, ["pvalue", str(real), *fakes, "--json"], obj={})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == pvalue.SCHEMA and report["p_value"] == pytest.approx(0.25)
    png = Path(report["plot"])
    assert png == real / "pvalue.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(cli, ["pvalue", str(real), *fakes, "--plot", str(tmp_path / "p.png")],
                              obj={})
    assert "global p-value = 1/4 = 0.250" in text.stdout and (tmp_path / "p.png").is_file()


def test_batch_of_fakes_runs_and_continues(subset_dir, tmp_path):
    out = tmp_path / "fakes"
    args = ["fakes", "--count", "2", "--seed", "5", "--walkers", "1", "--steps", "3",
            "--ladder", "0.5,1", "--swap-every", "2", "--out", str(out), "--database", str(subset_dir)]
    result = CliRunner().invoke(cli, args, obj={})
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "fakes.json").read_text())
    assert manifest["fakes"][0]["seeds"] == pvalue.fake_seeds(5, 2)[0]
    for i in range(2):
        record = json.loads((out / f"db-00{i}" / "fakedb.json").read_text())
        run = json.loads((out / f"run-00{i}" / "run.json").read_text())
        assert record["seed"] == manifest["fakes"][i]["seeds"]["database"]
        assert run["config"]["seed"] == manifest["fakes"][i]["seeds"]["walk"]
        assert run["versions"]["database_fake"]["seed"] == record["seed"]
        assert run["config"]["ladder"] == [0.5, 1.0] and run["config"]["swap_every"] == 2
    history = (out / "run-000" / "walker-0" / "history.jsonl").read_text()
    assert len(history.splitlines()) == 3
    # the same command again changes nothing; more steps continue the runs
    assert CliRunner().invoke(cli, args, obj={}).exit_code == 0
    assert (out / "run-000" / "walker-0" / "history.jsonl").read_text() == history
    longer = [a if a != "3" else "5" for a in args]
    assert CliRunner().invoke(cli, longer, obj={}).exit_code == 0
    grown = (out / "run-000" / "walker-0" / "history.jsonl").read_text()
    assert grown.startswith(history) and len(grown.splitlines()) == 5
    clash = [a if a != "5" else "6" for a in args]  # another seed into the same folder
    result = CliRunner().invoke(cli, clash, obj={})
    assert result.exit_code == 1 and "field 'seed'" in result.stderr
