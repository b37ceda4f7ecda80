"""Polishing hiscores (issue 12): a deterministic local optimiser of K over a model's
continuous parameters, with a fake, smooth score whose optimum is known."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from protomodels import hiscores
from protomodels.exceptions import RunError
from protomodels.model import LSP, ProtoModel

GLUINO, XD = 1000021, 1000001
GG, DD = (GLUINO, GLUINO), (-XD, XD)


def walker_score(model):
    """The walk's own fake score: low, so that the crafted entry ranks first."""
    return {"K": -1e-3 * model.masses[LSP], "TL": 0.0, "mu_hat": 1.0}


def walker_factory():
    return walker_score


def peaked(m_opt=1300.0, calls=None):
    """K peaked at m(Xg) = m_opt, multiplier(Xg Xg) = 2, BR(Xg -> b b XZ1) = 0.8; flat in
    the other masses.  Fails the test if it is asked about a model that breaks a rule."""
    def score(model):
        model.validate()
        if calls is not None:
            calls.append(model.to_dict())
        if GLUINO not in model.masses:
            return {"K": -1e-3 * model.masses[LSP], "TL": 0.0, "mu_hat": 1.0}
        k = (20.0 - (math.log(model.masses[GLUINO] / m_opt) / 0.3) ** 2
             - math.log(model.multiplier(GG) / 2.0) ** 2
             - ((model.decays[GLUINO].get("b b XZ1", 0.0) - 0.8) / 0.5) ** 2)
        return {"K": k, "TL": k, "mu_hat": 1.0, "combination": []}
    return score


def origin(gluino=1000.0, ssm=0.5, bb=0.5) -> ProtoModel:
    return ProtoModel(masses={LSP: 200.0, GLUINO: gluino, XD: 800.0},
                      decays={GLUINO: {"q q XZ1": 1.0 - bb, "b b XZ1": bb}, XD: {"q XZ1": 1.0}},
                      ssm={GG: ssm, DD: 0.0})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from protomodels.runs import WalkConfig, walk

    out = tmp_path_factory.mktemp("polish") / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=6, seed=5),
         score_factory=walker_factory)
    return out


def make_run(base_run, target, model, m_opt=1300.0):
    """A copy of the base run with ``model`` added as the best hiscore (walker 0, step 1000)."""
    shutil.copytree(base_run, target)
    record = peaked(m_opt)(model)
    hiscores.update(target / "hiscores.json",
                    [{**record, "walker": 0, "step": 1000, "temperature": 1.0,
                      "model": model.to_dict()}])
    return target


def test_polish_reaches_the_optimum_and_keeps_the_discrete_choices(base_run, tmp_path):
    from protomodels.polish import polish
    from protomodels.slha import read_slha

    run = make_run(base_run, tmp_path / "run", origin())
    before = hiscores.read(run / "hiscores.json")
    assert before[0]["step"] == 1000
    calls = []
    [result] = polish(run, top=1, score=peaked(calls=calls))
    assert result["improved"] and result["rank_before"] == 1
    assert result["K_before"] == result["K_start"] == before[0]["K"]
    assert result["K_after"] == pytest.approx(20.0, abs=0.01) and result["K_before"] < 17.5
    assert result["evaluations"] == len(calls) <= 150
    model = ProtoModel.from_dict(result["model"])
    start = origin()
    assert set(model.masses) == set(start.masses)
    assert {p: set(d) for p, d in model.decays.items()} == {p: set(d) for p, d in start.decays.items()}
    assert model.masses[GLUINO] == pytest.approx(1300.0, rel=0.01)
    assert model.ssm[GG] == pytest.approx(2.0, rel=0.05)
    assert model.decays[GLUINO]["b b XZ1"] == pytest.approx(0.8, abs=0.02)
    assert sum(model.decays[GLUINO].values()) == pytest.approx(1.0, abs=1e-12)
    assert model.ssm[DD] == 0.0 and model.decays[XD] == {"q XZ1": 1.0}  # discrete choices kept
    model.validate()

    after = hiscores.read(run / "hiscores.json")  # read checks the schema
    assert len(after) == len(before) + 1
    assert [e["rank"] for e in after] == list(range(1, len(after) + 1))
    strip = lambda e: {k: v for k, v in e.items() if k != "rank"}  # noqa: E731
    old = [strip(e) for e in after if not e.get("polished")]
    assert old == [strip(e) for e in before]
    [new] = [e for e in after if e.get("polished")]
    assert new["rank"] == result["rank"] == 1 and new["K"] == result["K_after"]
    assert new["K_before"] == before[0]["K"] and (new["walker"], new["step"]) == (0, 1000)
    assert new["temperature"] == 1.0 and new["model"] == result["model"]
    assert result["slha"] == str(run / "hiscores" / "rank-1.slha")
    written = read_slha(run / "hiscores" / "rank-1.slha")
    assert written.masses[GLUINO] == pytest.approx(model.masses[GLUINO], rel=1e-6)
    assert written.decays[GLUINO]["b b XZ1"] == pytest.approx(model.decays[GLUINO]["b b XZ1"],
                                                               rel=1e-4)
    assert (run / "hiscores" / f"rank-{len(after)}.slha").exists()


def test_an_optimum_beyond_the_wall_is_not_reached_beyond_it(base_run, tmp_path):
    from protomodels.polish import polish

    run = make_run(base_run, tmp_path / "run", origin(gluino=600.0), m_opt=250.0)
    calls = []
    [result] = polish(run, top=1, score=peaked(m_opt=250.0, calls=calls))
    assert result["improved"]
    model = ProtoModel.from_dict(result["model"])
    assert 310.0 <= model.masses[GLUINO] <= 310.0 * 1.01  # the gluino's lower wall
    assert all(c["masses"]["Xg"] >= 310.0 for c in calls)
    model.validate()


def test_polish_is_deterministic_and_idempotent(base_run, tmp_path):
    from protomodels.polish import polish

    runs = [make_run(base_run, tmp_path / name, origin()) for name in ("a", "b")]
    results = [polish(run, top=2, max_evaluations=60, score=peaked()) for run in runs]
    for result in results:
        for r in result:
            r.pop("seconds"), r.pop("slha")
    assert results[0] == results[1]
    assert len(results[0]) == 2 and results[0][0]["improved"]
    files = [(run / "hiscores.json").read_bytes() for run in runs]
    assert files[0] == files[1]
    assert ((runs[0] / "hiscores/rank-1.slha").read_bytes()
            == (runs[1] / "hiscores/rank-1.slha").read_bytes())
    again = polish(runs[0], top=2, max_evaluations=60, score=peaked())
    assert [(r["walker"], r["step"]) for r in again] == [(r["walker"], r["step"])
                                                        for r in results[0]]
    assert (runs[0] / "hiscores.json").read_bytes() == files[0]  # polished entries replaced


def test_a_model_at_its_optimum_adds_no_entry(base_run, tmp_path):
    from protomodels.polish import polish

    run = make_run(base_run, tmp_path / "run", origin(gluino=1300.0, ssm=2.0, bb=0.8))
    before = (run / "hiscores.json").read_bytes()
    [result] = polish(run, top=1, max_evaluations=40, score=peaked())
    assert not result["improved"] and result["rank"] is None and result["slha"] is None
    assert result["K_after"] == result["K_before"] == pytest.approx(20.0)
    assert (run / "hiscores.json").read_bytes() == before


def test_the_budget_bounds_the_evaluations(base_run, tmp_path):
    from protomodels.polish import polish

    run = make_run(base_run, tmp_path / "run", origin())
    calls = []
    [result] = polish(run, top=1, max_evaluations=7, score=peaked(calls=calls))
    assert result["evaluations"] == len(calls) == 7
    assert result["improved"] and result["K_after"] > result["K_before"]


def test_not_a_run(tmp_path):
    from protomodels.polish import polish

    with pytest.raises(RunError, match="not a run"):
        polish(tmp_path, score=peaked())


def test_schema_knows_polished_entries():
    from protomodels.schemas import validate

    entry = {"K": 1.0, "walker": 0, "step": 3, "rank": 1, "model": origin().to_dict(),
             "polished": True, "K_before": 0.5}
    validate({"schema": hiscores.SCHEMA, "entries": [entry]}, "hiscores", "test", RunError)
    for field, value in (("polished", "yes"), ("K_before", "0.5")):
        with pytest.raises(RunError, match=field):
            validate({"schema": hiscores.SCHEMA, "entries": [{**entry, field: value}]},
                     "hiscores", "test", RunError)


def test_command(base_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from protomodels import polish as polishing
    from protomodels.cli import cli

    run = make_run(base_run, tmp_path / "run", origin())
    monkeypatch.setattr(polishing, "run_score", lambda run_dir, database=None: peaked())
    result = CliRunner().invoke(cli, ["polish", str(run), "--top", "1", "--max-evaluations", "50"],
                                obj={})
    assert result.exit_code == 0, result.output
    assert "rank  1 (walker 0, step 1000): K 16.953 -> 19.99" in result.output
    assert "50 evaluations" in result.output and "rank-1.slha" in result.output
    result = CliRunner().invoke(cli, ["polish", str(run), "--top", "1", "--max-evaluations", "50",
                                      "--json"], obj={})
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["improved"] and row["rank"] == 1 and row["evaluations"] == 50
