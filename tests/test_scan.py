"""Scans of a hiscore over two parameters (issue 15): a tiny grid on the small real
database, its file and schema, masked points, resuming, the plot, the command and Dask."""

from __future__ import annotations

import json
import math

import pytest

from protomodels import hiscores
from protomodels.atomic import write_json_atomic
from protomodels.exceptions import ScanError
from protomodels.model import LSP, ProtoModel
from protomodels.schemas import validate

GLUINO = 1000021


def gluino_model() -> ProtoModel:
    return ProtoModel(masses={LSP: 200.0, GLUINO: 1300.0}, decays={GLUINO: {"q q XZ1": 1.0}},
                      ssm={(GLUINO, GLUINO): 2.0})


def fake_score(model):
    """No physics: K peaked at m(Xg) = 1550 GeV, r_max growing with the multiplier."""
    k = 3.0 - ((model.masses[GLUINO] - 1550.0) / 300.0) ** 2 - model.masses[LSP] / 1000.0
    r_max = 0.5 * model.multiplier((GLUINO, GLUINO))
    return {"K": k, "TL": k + 1.0, "mu_hat": 1.0, "mu_max": 1.0 / r_max, "r_max": r_max,
            "combination": []}


def fake_factory():
    return fake_score


def best_fit_of(entry):
    from protomodels.runs import best_fit

    return best_fit(ProtoModel.from_dict(entry["model"]), entry.get("mu_hat") or 1.0)


def _run(root, database, model, record):
    """A run whose only hiscore is ``model`` with ``record`` (walked with a fake score, so
    making it costs no physics; run.json names ``database``)."""
    from protomodels.runs import WalkConfig, walk

    from .test_runs import fake_factory as walker_factory

    out = root / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=2, seed=1, database=database),
         score_factory=walker_factory)
    write_json_atomic(out / "hiscores.json", {"schema": hiscores.SCHEMA, "entries": [
        {**record, "walker": 0, "step": 7, "temperature": 1.0, "rank": 1,
         "model": model.to_dict()}]})
    return out


@pytest.fixture(scope="module")
def real_run(subset_dir, subset_db, tmp_path_factory):
    """A run on the subset database whose best model is a gluino, scored for real (after
    ``subset_db``, which builds the subset's binary database once for the session)."""
    from protomodels.polish import run_score

    root = tmp_path_factory.mktemp("scan")
    model = gluino_model()
    out = _run(root, str(subset_dir), model, {"K": 0.0})
    score = run_score(out)
    record = score(model)
    assert math.isfinite(record["K"])
    return _run(root / "again", str(subset_dir), model, record), score


def test_tiny_real_scan_file_masks_centre_resume_and_plot(real_run, tmp_path):
    from protomodels.scan import plot_scan, read_scan, scan

    run, score = real_run
    calls = []

    def counting():
        def counted(model):
            calls.append(model.to_dict())
            return score(model)
        return counted

    # XZ1 up to 1500 GeV: above the gluino's 1300 GeV the gluino is lighter than the LSP
    kwargs = dict(points=(3, 3), x_range=(1000.0, 1600.0), y_range=(100.0, 1500.0),
                  score_factory=counting, processes=1)
    summary = scan(run, "Xg", "XZ1", **kwargs)
    document = read_scan(summary["file"])
    validate(document, "scan", summary["file"], ScanError)
    assert summary["file"].startswith(str(run / "scans" / "rank1-Xg-XZ1-"))
    assert document["x"]["values"] == [1000.0, 1300.0, 1600.0]  # 1300: the hiscore's own
    assert document["y"]["values"] == [200.0, 800.0, 1500.0]    # 100 moved onto its 200
    masked = {(p["ix"], p["iy"]): p["reason"] for p in document["points"] if p["status"] == "masked"}
    assert set(masked) == {(0, 2), (1, 2)}
    assert "lighter than the LSP" in masked[(0, 2)]
    assert summary["masked"] == 2 and summary["ok"] == 7 and summary["complete"]
    assert len(calls) == 7  # the hiscore is its own grid point: evaluated once
    centre = next(p for p in document["points"] if (p["ix"], p["iy"]) == (1, 0))
    hiscore = hiscores.read(run / "hiscores.json")[0]
    # the grid's hiscore point is the best fit `show` evaluates (multipliers x mu_hat) ...
    best_fit = best_fit_of(hiscore)
    assert centre["K"] == score(best_fit)["K"] == summary["hiscore"]["K_evaluated"]
    assert centre["mu_hat"] == pytest.approx(1.0, abs=1e-3)
    # ... whose K is the stored model's, up to the precision of the profiled mu_hat
    assert centre["K"] == pytest.approx(hiscore["K"], abs=1e-4)
    assert centre["r_max"] == score(best_fit)["r_max"] > 0  # the evaluation's own r_max
    assert all(p["r_max"] >= 0 for p in document["points"] if p["status"] == "ok")

    again = scan(run, "Xg", "XZ1", **kwargs)  # resume: nothing left to do
    assert again["evaluated_now"] == 0 and again["done_before"] == 9 and len(calls) == 7

    plot = tmp_path / "scan.png"
    plot_scan(document, plot)
    assert plot.stat().st_size > 10_000


def test_an_interrupted_scan_continues_where_it_stopped(real_run, tmp_path):
    from protomodels.scan import read_scan, scan

    run, _ = real_run
    out = tmp_path / "s.json"
    kwargs = dict(points=(4, 3), x_range=(1000.0, 1600.0), y_range=(100.0, 300.0),
                  out=out, processes=1)
    calls = []

    def stopping():
        def score(model):
            if len(calls) == 5:
                raise KeyboardInterrupt
            calls.append(1)
            return fake_score(model)
        return score

    with pytest.raises(KeyboardInterrupt):
        scan(run, "Xg", "XZ1", score_factory=stopping, **kwargs)
    partial = read_scan(out)
    assert not partial["complete"] and len(partial["points"]) == 5  # the hiscore + a chunk
    summary = scan(run, "Xg", "XZ1", score_factory=fake_factory, **kwargs)
    assert summary["done_before"] == 5 and summary["evaluated_now"] == 7 and summary["complete"]
    assert summary["best"]["x"] == 1600.0 and summary["best"]["y"] == 100.0


@pytest.mark.writes_invalid_files
def test_bad_input_is_one_line_naming_option_and_value(real_run, tmp_path):
    from protomodels.scan import parse_points, parse_range, scan

    run, _ = real_run
    with pytest.raises(ScanError, match=r"--x 'Xt': the model has no Xt \(it has Xg, XZ1\)"):
        scan(run, "Xt", "XZ1", score_factory=fake_factory)
    with pytest.raises(ScanError, match=r"--y 'ssm:Xd,Xd': the model does not produce"):
        scan(run, "Xg", "ssm:Xd,Xd", score_factory=fake_factory)
    with pytest.raises(ScanError, match="same parameter"):
        scan(run, "ssm:Xg,Xg", "ssm:Xg,Xg", score_factory=fake_factory)
    with pytest.raises(ValueError, match="NxM"):
        parse_points("20")
    with pytest.raises(ValueError, match="LO < HI"):
        parse_range("5:1")
    out = tmp_path / "x.json"
    out.write_text(json.dumps({"schema": "protomodels.scan/1", "points": "none"}))
    with pytest.raises(ScanError, match=r"x.json: \$: '\w+' is a required property"):
        scan(run, "Xg", "XZ1", out=out, score_factory=fake_factory)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ScanError, match=rf"^{blocker}: cannot create the folder of the scan file"):
        scan(run, "Xg", "XZ1", out=blocker / "s.json", score_factory=fake_factory)


def test_a_scan_file_has_one_writer_and_plots_need_matplotlib(real_run, tmp_path, monkeypatch):
    import sys

    from protomodels.atomic import sole_writer
    from protomodels.exceptions import ProtomodelsError
    from protomodels.scan import plot_scan, read_scan, scan

    run, _ = real_run
    out = tmp_path / "s.json"
    with sole_writer(tmp_path / "s.json.lock", ScanError, "test"):
        with pytest.raises(ScanError, match=r": scan file s.json is being written by host .* pid "):
            scan(run, "Xg", "XZ1", points=(2, 2), out=out, score_factory=fake_factory)
    assert not out.exists()
    scan(run, "Xg", "XZ1", points=(2, 2), out=out, score_factory=fake_factory, processes=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ProtomodelsError, match=r"pip install 'protomodels\[plots\]'"):
        plot_scan(read_scan(out), tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_multiplier_axis_is_logarithmic_around_the_best_fit(real_run, tmp_path):
    from protomodels.scan import read_scan, scan

    run, _ = real_run
    summary = scan(run, "ssm:Xg,Xg", "Xg", points=(3, 2), out=tmp_path / "m.json",
                   score_factory=fake_factory, processes=1)
    document = read_scan(summary["file"])
    mu_hat = hiscores.read(run / "hiscores.json")[0].get("mu_hat") or 1.0
    x = document["x"]
    value = 2.0 * mu_hat  # the best fit's multiplier (the fitted mu_hat is ~0.013)
    assert value / 3 < 0.01 < value and value * 3 < 100
    assert x["scale"] == "log" and x["hiscore_value"] == pytest.approx(value, rel=1e-12)
    # /3 to x3 clipped to the walks' 0.01-100: from 0.01; the middle point (nearest in
    # log) moved onto the best fit's value exactly
    assert x["values"] == pytest.approx([0.01, value, 3 * value], rel=1e-12)
    assert x["values"][1] == x["hiscore_value"]
    assert summary["x"] == "ssm:Xg,Xg" and summary["x_kind"] == "ssm" and summary["complete"]
    assert summary["y_kind"] == "mass"
    for p in document["points"]:  # r_max: the score's, at the point's multiplier
        assert p["r_max"] == pytest.approx(0.5 * p["x"], rel=1e-12)


def test_a_point_whose_evaluation_raises_is_failed_and_the_scan_goes_on(real_run, tmp_path,
                                                                        caplog):
    """A score raising (pyhf, numerics) fails its point only: the error is logged and
    stored, the others are evaluated, the file validates, a rerun does not retry it, the
    plot crosses it; an infinite r_max is stored as null."""
    from protomodels.scan import format_summary, plot_scan, read_scan, scan

    run, _ = real_run
    calls = []

    def flaky():
        def score(model):
            calls.append(1)
            if model.masses[GLUINO] == 1600.0 and model.masses[LSP] == 300.0:
                raise RuntimeError("pyhf: the fit did not\nconverge")
            record = fake_score(model)
            if model.masses[GLUINO] == 1600.0 and model.masses[LSP] == 200.0:
                record.update(mu_max=0.0, r_max=math.inf)  # an r_obs without bound
            return record
        return score

    out = tmp_path / "f.json"
    kwargs = dict(points=(3, 2), x_range=(1000.0, 1600.0), y_range=(200.0, 300.0), out=out,
                  processes=1)
    with caplog.at_level("WARNING", logger="protomodels.scan"):
        summary = scan(run, "Xg", "XZ1", score_factory=flaky, **kwargs)
    document = read_scan(out)
    validate(document, "scan", str(out), ScanError)
    by_index = {(p["ix"], p["iy"]): p for p in document["points"]}
    failed = by_index[(2, 1)]
    assert failed["status"] == "failed"
    assert failed["reason"] == "RuntimeError: pyhf: the fit did not converge"
    assert [p["status"] for p in document["points"]].count("ok") == 5
    assert by_index[(2, 0)]["status"] == "ok" and by_index[(2, 0)]["r_max"] is None
    assert summary["failed"] == 1 and summary["ok"] == 5 and summary["complete"]
    assert summary["best"]["ix"] == 2 and summary["best"]["iy"] == 0
    text = format_summary(summary)
    assert "1 failed" in text and "r_max not finite" in text
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == ("scan: point (2, 1) at x = 1600, y = 300 failed "
                       "(RuntimeError: pyhf: the fit did not converge)")
    evaluated = len(calls)
    again = scan(run, "Xg", "XZ1", score_factory=flaky, **kwargs)
    assert again["evaluated_now"] == 0 and len(calls) == evaluated
    plot = tmp_path / "f.png"
    plot_scan(document, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_local_processes_and_dask_agree(real_run, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import cloudpickle
    from click.testing import CliRunner

    from protomodels import scan as scanning
    from protomodels.cli import cli

    import sys
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    run, _ = real_run
    original = scanning.scan
    monkeypatch.setattr(scanning, "scan", lambda *a, **k: original(*a, **k, score_factory=fake_factory))
    args = ["scan", str(run), "--x", "Xg", "--y", "XZ1", "--points", "4x3",
            "--x-range", "1000:1600", "--y-range", "100:300"]
    local = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "l.json"), "--processes", "2"],
                               obj={})
    assert local.exit_code == 0, local.output
    assert "grid maximum: K" in local.output and "2 local processes" in local.output
    assert (tmp_path / "l.png").stat().st_size > 10_000
    dask = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "d.json"), "--cluster", "local",
                                           "--jobs", "2", "--json"], obj={})
    assert dask.exit_code == 0, dask.output
    assert json.loads(dask.stdout)["runner"].startswith("Dask local")

    def points(name):
        return [{k: v for k, v in p.items() if k != "seconds"}
                for p in json.loads((tmp_path / name).read_text())["points"]]
    assert points("d.json") == points("l.json") and len(points("l.json")) == 12
    bad = CliRunner().invoke(cli, args[:-4] + ["--points", "3"], obj={})
    assert bad.exit_code == 2 and "--points" in bad.output and "'3': expected NxM" in bad.output
