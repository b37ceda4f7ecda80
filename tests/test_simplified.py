"""Simplified likelihoods (protomodels.statistics): the builder against ATLAS' own
simplified workspace, the cache, the choice of workspaces per likelihood, and the pyhf
evaluation against pyhf called directly on the whole workspace.

All on ATLAS-SUSY-2018-31 of the unit-test database: it ships ATLAS' full workspaces
(BkgOnlyA/B/C.json) and ATLAS' simplified ones built by the same procedure, and its full
fits take about a second.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

from protomodels import fakedb, pvalue
from protomodels.atomic import read_keyed_lines
from protomodels.exceptions import RunError, WorkspaceError
from protomodels.loader import load_database
from protomodels.statistics import simplified, workspaces

from . import models

RESULT = "13TeV/ATLAS/ATLAS-SUSY-2018-31-eff"


def _per_bin(workspace):
    out = {}
    for channel in workspace["channels"]:
        sample = channel["samples"][0]
        data = sample["modifiers"][0]["data"]
        for i, value in enumerate(sample["data"]):
            out[(channel["name"], i)] = (value, (data["hi_data"][i] - data["lo_data"][i]) / 2)
    return out


@pytest.mark.parametrize("letter", ["A", "B"])
def test_builder_reproduces_atlas_simplified_workspace(subset_dir, letter):
    """Our background-only fit of ATLAS' full workspace against ATLAS' published
    simplified one: every bin's yield within 1%, its uncertainty within 25%."""
    full = json.loads((subset_dir / RESULT / f"BkgOnly{letter}.json").read_text())
    atlas = json.loads((subset_dir / RESULT / f"simplified{letter}.json").read_text())
    built = simplified.build(full, name=f"BkgOnly{letter}")
    ours, theirs = _per_bin(built.workspace), _per_bin(atlas)
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key][0] == pytest.approx(theirs[key][0], rel=0.01), key
        assert ours[key][1] == pytest.approx(theirs[key][1], rel=0.25), key
    # ATLAS' layout: one sample and one shared histosys, the observations unchanged
    assert all([s["name"] for s in c["samples"]] == ["Bkg"] for c in built.workspace["channels"])
    names = {m["name"] for c in built.workspace["channels"] for m in c["samples"][0]["modifiers"]}
    assert names == {"totalError"}
    assert built.workspace["observations"] == full["observations"]
    lumi = built.workspace["measurements"][0]["config"]["parameters"]
    assert [p["name"] for p in lumi] == ["lumi"] and lumi[0]["fixed"] is True
    assert built.fit["valid"] and built.fit["parameters"] > 50


def test_builder_refuses_bad_workspaces():
    with pytest.raises(WorkspaceError, match="broken.json: not a valid pyhf workspace"):
        simplified.build({"channels": [{"name": "SR"}]}, name="broken.json")


def test_cache_builds_once_and_rebuilds_corrupt_or_stale_files(subset_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROTOMODELS_CACHE", str(tmp_path / "cache"))
    source = subset_dir / RESULT / "BkgOnlyB.json"
    record = simplified.cached(source, analysis="ATLAS-SUSY-2018-31")
    target = simplified.cache_file(source, record["provenance"]["source_sha256"])
    assert target.is_file() and record["provenance"]["analysis"] == "ATLAS-SUSY-2018-31"
    assert record["provenance"]["source_sha256"] == simplified.sha256_file(source)
    stamp = target.stat().st_mtime_ns
    assert simplified.cached(source) == record and target.stat().st_mtime_ns == stamp  # not rebuilt
    target.write_text("{ not json")
    assert simplified.cached(source)["workspace"] == record["workspace"]
    assert "unusable" in caplog.text
    stale = json.loads(target.read_text())
    stale["provenance"]["source_sha256"] = "0" * 64
    target.write_text(json.dumps(stale))
    caplog.clear()
    assert simplified.cached(source)["provenance"]["source_sha256"] == simplified.sha256_file(source)
    assert "does not match the source" in caplog.text
    broken = json.loads(target.read_text())
    del broken["workspace"]["channels"][0]["samples"]  # not a valid workspace any more
    target.write_text(json.dumps(broken))
    assert simplified.cached(source)["workspace"] == record["workspace"]


@pytest.fixture(scope="module")
def both(subset_dir):
    return {mode: load_database(str(subset_dir), mode) for mode in workspaces.LIKELIHOODS}


def test_each_likelihood_uses_its_workspaces(both):
    full = both["full"].likelihoods["ATLAS-SUSY-2018-31"]
    simple = both["simplified"].likelihoods["ATLAS-SUSY-2018-31"]
    assert full.files == ["BkgOnlyA.json", "BkgOnlyB.json", "BkgOnlyC.json"]
    assert full.kinds == [workspaces.FULL] * 3
    assert simple.files == ["simplifiedA.json", "simplifiedB.json", "simplifiedC.json"]
    assert simple.kinds == [workspaces.ATLAS_SIMPLIFIED] * 3
    # the same channel and bin for every signal region (the mapping SModelS uses)
    bins = {mode: workspaces.signal_region_bins(info.jsonFiles, info.jsons)
            for mode, db in both.items() for info in [next(er.globalInfo for er in db.results
                                                           if hasattr(er.globalInfo, "jsonFiles"))]}
    assert {k: v[2:] for k, v in bins["full"].items()} == {k: v[2:] for k, v in bins["simplified"].items()}
    with pytest.raises(WorkspaceError, match="'exact' is not a likelihood"):
        load_database(None, "exact")


def test_switching_refuses_a_workspace_that_moves_signal_regions(both):
    """A workspace with its signal-region channels in another order would, with SModelS'
    order-based matching, put the signal into the wrong channel: refused."""
    info = next(er.globalInfo for er in both["full"].results
                if hasattr(er.globalInfo, "jsonFiles"))
    files, jsons = info.jsonFiles, info.jsons
    assert all("pyhf" not in r for r in files["BkgOnlyA.json"])  # matched by order
    moved = [copy.deepcopy(w) for w in jsons]
    extra = {"name": "SR_extra", "data": [1.0]}
    moved[0]["observations"] = [extra] + moved[0]["observations"]
    moved[0]["channels"] = [{"name": "SR_extra", "samples": copy.deepcopy(
        moved[0]["channels"][0]["samples"][:1])}] + moved[0]["channels"]
    moved[0]["channels"][0]["samples"][0]["data"] = [1.0]
    with pytest.raises(WorkspaceError, match="move signal regions"):
        workspaces._same_bins("X", (files, jsons), (copy.deepcopy(files), moved), False)
    workspaces._same_bins("X", (files, jsons), (copy.deepcopy(files), jsons), False)


def test_results_without_workspaces_do_not_move(both):
    """Every result without a pyhf workspace: the same r and likelihood in both modes
    (ATLAS-SUSY-2018-31 itself is left out here: its full-workspace ranking costs a
    minute); a pyhf prediction says which workspaces it used."""
    from protomodels.predictor import Selection, predict

    others = Selection(analyses=("ATLAS-SUSY-2016-07", "ATLAS-SUSY-2018-22", "CMS-SUS-21-002",
                                 "CMS-SUS-16-033", "ATLAS-SUSY-2013-02", "CMS-SUS-13-012"))
    compared = 0
    for model in (models.sbottom_higgs(), models.gluino(), models.paper_best()):
        # an UL result can give several predictions (one per cluster): compare them sorted
        by_mode = {mode: sorted(predict(model, db, others),
                                key=lambda p: (p.analysis_id, p.dataset_id, p.xsec_fb))
                   for mode, db in both.items()}
        assert len(by_mode["full"]) == len(by_mode["simplified"])
        for p, other in zip(by_mode["full"], by_mode["simplified"]):
            assert (p.analysis_id, p.dataset_id) == (other.analysis_id, other.dataset_id)
            assert other.xsec_fb == pytest.approx(p.xsec_fb, rel=1e-12)
            assert p.likelihood == other.likelihood == ""
            if p.r_obs is not None:
                assert other.r_obs == pytest.approx(p.r_obs, rel=1e-9)
            if p.data_type != "UL":
                assert other.nll(0.5) == pytest.approx(p.nll(0.5), rel=1e-9, abs=1e-12)
            compared += 1
    assert compared >= 5
    pyhf = [p for p in predict(models.sbottom_higgs(), both["simplified"])
            if p.analysis_id == "ATLAS-SUSY-2018-31" and p.data_type == "combined"]
    assert pyhf and pyhf[0].likelihood == "simplified (ATLAS)"


def test_pyhf_cls_equals_pyhf_on_the_whole_workspace(both):
    """SModelS' pyhf interface (with the project's overrides: control and validation
    regions kept, workspaces not re-validated) gives the CLs that pyhf itself gives on the
    whole workspace with the signal added to the signal region, for the full and the
    simplified workspace of SRB."""
    import pyhf
    from smodels.statistics.basicStats import observed

    from protomodels.statistics.validation import workspace_computer

    for mode, db in both.items():
        info = next(er.globalInfo for er in db.results if hasattr(er.globalInfo, "jsonFiles"))
        index = 1  # the B workspace: one signal region
        name = list(info.jsonFiles)[index]
        regions = info.jsonFiles[name]
        computer = workspace_computer(info, name, info.jsons[index], regions, {"SRB": 10.0})
        ours = computer.CLs(0.5, observed)
        spec = copy.deepcopy(info.jsons[index])
        for channel in spec["channels"]:
            if channel["name"].startswith("SR"):
                channel["samples"].append({"name": "bsm", "data": [10.0], "modifiers": [
                    {"name": "mu_SIG", "type": "normfactor", "data": None},
                    {"name": "lumi", "type": "lumi", "data": None}]})
        ws = pyhf.Workspace(spec)
        model = ws.model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = float(pyhf.infer.hypotest(0.5, ws.data(model), model))
        ours = float(np.ravel(ours)[0]) if not np.isscalar(ours) else float(ours)
        assert ours == pytest.approx(theirs, rel=0.02, abs=1e-3), mode


def test_fake_counts_go_into_the_workspaces_in_use(subset_dir, tmp_path):
    record = fakedb.generate(tmp_path / "fake", seed=5, base=str(subset_dir))
    rows = [r for r in record["pyhf"] if r["analysis"] == "ATLAS-SUSY-2018-31"]
    assert rows
    for mode in workspaces.LIKELIHOODS:
        db = load_database(str(tmp_path / "fake"), mode)
        info = next(er.globalInfo for er in db.results if hasattr(er.globalInfo, "jsonFiles"))
        bins = workspaces.signal_region_bins(info.jsonFiles, info.jsons)
        for row in rows:
            index, _, channel, bin_index = bins[row["dataset"]]
            observation = next(o for o in info.jsons[index]["observations"] if o["name"] == channel)
            assert observation["data"][bin_index] == row["n_obs"], (mode, row["dataset"])
        assert db.likelihood == mode


def test_pvalue_refuses_runs_of_different_likelihoods(tmp_path):
    from protomodels import hiscores
    from protomodels.runs import RUN_SCHEMA

    for name, likelihood in (("real", "simplified"), ("fake", "full")):
        run = tmp_path / name
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"schema": RUN_SCHEMA,
                                                  "config": {"likelihood": likelihood, "steps": 1},
                                                  "segments": [{"steps": 1}]}))
        hiscores.update(run / "hiscores.json", [{"K": 1.0, "TL": 1.0, "walker": 0, "step": 1,
                                                 "model": models.sbottom_higgs().to_dict()}])
    with pytest.raises(RunError, match="field 'config.likelihood' is 'full'"):
        pvalue.compare_runs(tmp_path / "real", [tmp_path / "fake"])


_NO_JAX = """
import sys
class NoJax:
    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax."):
            raise ImportError("this test forbids jax: " + name)
sys.meta_path.insert(0, NoJax())
"""


def test_forked_walkers_never_start_jax(subset_dir, tmp_path):
    """pyhf's jax backend must never be started before walkers fork (jax is
    multithreaded; a forked copy can deadlock): a real forked walk on real pyhf results,
    in a process where importing jax fails, completes."""
    import subprocess
    import sys

    script = _NO_JAX + f"""
from protomodels.runs import WalkConfig, walk
summary = walk(WalkConfig(out={str(tmp_path / 'run')!r}, ladder=[1.0], walkers=2, steps=4, seed=3,
                          database={str(subset_dir)!r}))
assert summary["crashed"] == [], summary
assert [s["steps"] for s in summary["progress"]] == [4, 4], summary
assert "jax" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_walkers_refuse_to_fork_once_jax_has_started(tmp_path):
    """Once pyhf's jax backend has run in a process (``database simplify --validate
    --backend jax``), forking walkers from it is refused with a clear error."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    script = """
import pyhf
from protomodels.exceptions import RunError
from protomodels.runs import freeze_before_fork, jax_started
from protomodels.statistics.validation import pyhf_backend
freeze_before_fork()  # fine before jax
model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [5.0])
with pyhf_backend("jax"):
    pyhf.infer.hypotest(1.0, [52.0] + model.config.auxdata, model)
assert jax_started() and pyhf.get_backend()[0].name == "numpy"
try:
    freeze_before_fork()
except RunError as error:
    assert "deadlock" in str(error)
else:
    raise SystemExit("forking was not refused")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _simplified_a(db):
    """ATLAS-SUSY-2018-31's simplifiedA workspace: its globalInfo, file name, workspace,
    regions, signal-region names and expResult."""
    er = next(er for er in db.smodels.expResultList if hasattr(er.globalInfo, "jsonFiles"))
    info = er.globalInfo
    name = list(info.jsonFiles)[0]
    regions = info.jsonFiles[name]
    srs = [r["smodels"] for r in regions if r.get("smodels") and r.get("type", "SR") == "SR"]
    return info, name, info.jsons[0], regions, srs, er


def test_signal_as_parameters_equals_smodels_pyhf_interface(both):
    """The workspace with its signal as fixed shapefactor parameters (the jax path of the
    validation) gives SModelS' own upper limits, mu_hat and t (SModelS'
    PyhfUpperLimitComputer on the patched workspace), on ATLAS' simplified A workspace of
    ATLAS-SUSY-2018-31 (several signal regions, control regions kept) for real signals."""
    from protomodels.statistics import validation
    from protomodels.statistics.fixed_signal import SignalAsParameters

    info, name, workspace, regions, srs, er = _simplified_a(both["simplified"])
    ours = SignalAsParameters(info, name, workspace, regions)
    signals = validation.validation_signals(er, srs, 2)
    signals.append({srs[0]: 3.0, srs[-1]: 40.0})  # a larger signal: the limit is rescaled
    for signal in signals:
        theirs = validation.evaluate_signal(info, name, workspace, regions, signal)
        mine = ours.evaluate(signal)
        for key in ("ul_obs", "ul_exp"):
            assert mine[key] == pytest.approx(theirs[key], rel=2e-3), (key, signal)
        assert mine["t"] == pytest.approx(theirs["t"], abs=2e-3), signal
        assert mine["mu_hat"] == pytest.approx(theirs["mu_hat"], abs=2e-3), signal
    assert ours.upper_limit({}, expected=False) is None  # no signal, no limit


def test_signal_as_parameters_compiles_once_with_jax(subset_dir):
    """With pyhf's jax backend, a second signal reuses the compiled fits of the first (the
    reason for this evaluator: SModelS' interface recompiles at every call).  In a
    subprocess: jax must not start in the test process, whose walkers fork."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    script = f"""
from pyhf.optimize import opt_jax
from protomodels.loader import load_database
from protomodels.statistics import validation
from protomodels.statistics.fixed_signal import SignalAsParameters
from tests.test_simplified import _simplified_a
info, name, workspace, regions, srs, er = _simplified_a(load_database({str(subset_dir)!r}, "simplified"))
first, second = validation.validation_signals(er, srs, 2)
import inspect, pyhf
with validation.pyhf_backend("jax"):
    # fixed parameters (the signal) are left out of the fits, not SLSQP constraints
    assert inspect.signature(pyhf.get_backend()[1].minimize).parameters["do_stitch"].default is True
    evaluator = SignalAsParameters(info, name, workspace, regions)
    one = evaluator.evaluate(first)
    compiled = opt_jax._jitted_objective_and_grad._cache_size()
    two = evaluator.evaluate(second)
    assert opt_jax._jitted_objective_and_grad._cache_size() == compiled, compiled
smodels = validation.evaluate_signal(info, name, workspace, regions, second)
assert abs(two["ul_obs"] / smodels["ul_obs"] - 1) < 2e-3, (two, smodels)
"""
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]


def test_validation_signals_are_computed_once(tmp_path, monkeypatch):
    """A validation signal's outcome is recorded and read back instead of recomputed; a
    different signal, or a line cut by an interrupted write, is computed (the pyhf
    evaluation is replaced by a counting stand-in: this tests the record keeping)."""
    from types import SimpleNamespace

    from protomodels.statistics import validation

    calls = []

    def stand_in(info, name, workspace, regions, signal):
        calls.append(name)
        return {"ul_obs": 1.0 + len(calls), "ul_exp": 2.0, "mu_hat": 0.0, "t": 0.1, "seconds": 0.0}

    monkeypatch.setattr(validation, "evaluate_signal", stand_in)
    record_file = tmp_path / "v.jsonl"
    info = SimpleNamespace(id="ATLAS-X")
    ws_a, ws_b = {"channels": [1]}, {"channels": [2]}

    digests = (validation.inputs_digest(info, ws_a, []), validation.inputs_digest(info, ws_b, []))

    def once(signal, records):
        return validation._evaluate_both(info, "s.json", ws_a, [], info, "f.json", ws_b, [],
                                         signal, "numpy", records, record_file, digests)

    first = once({"SR1": 10.0}, {})
    assert calls == ["s.json", "f.json"]
    again = once({"SR1": 10.0}, read_keyed_lines(record_file))
    assert again == first and len(calls) == 2
    once({"SR1": 5.0, "SR2": 5.0}, read_keyed_lines(record_file))
    assert len(calls) == 4
    # a rebuilt simplified workspace recomputes its side only: the full side is reused
    digests = (validation.inputs_digest(info, {"channels": [3]}, []), digests[1])
    once({"SR1": 10.0}, read_keyed_lines(record_file))
    assert calls[4:] == ["s.json"]
    with open(record_file, "a") as stream:
        stream.write('{"key": "cut')
    assert len(read_keyed_lines(record_file)) == 5


def test_validation_selects_analyses_or_single_workspaces():
    from protomodels.statistics.validation import _selects

    files = ("simplifiedC.json", "BkgOnlyC.json")
    assert _selects("ATLAS-SUSY-2018-3*", "ATLAS-SUSY-2018-31", files)
    assert _selects("ATLAS-SUSY-2018-31/BkgOnlyC*", "ATLAS-SUSY-2018-31", files)
    assert _selects("ATLAS-SUSY-2018-31/simplifiedC.json", "ATLAS-SUSY-2018-31", files)
    assert not _selects("ATLAS-SUSY-2018-31/BkgOnlyA*", "ATLAS-SUSY-2018-31", files)
    assert not _selects("ATLAS-SUSY-2018-16", "ATLAS-SUSY-2018-31", files)
