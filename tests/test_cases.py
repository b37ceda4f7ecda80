"""``../shared/cases``: SLHA files that broke ``significance``, each against SModelS called
directly on the same file (decomposition with sigmacut 0.005 fb, minmassgap 5 GeV,
``combinedResults=False``), on the full database (issue 13)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from protomodels import significance
from protomodels.database import REPO_ROOT
from protomodels.exceptions import SLHAError
from protomodels.general import GeneralModel, load_model
from protomodels.predictor import Selection

pytestmark = pytest.mark.slow

CASES = REPO_ROOT.parent / "shared" / "cases"

#: The README's values (rounded there): (analysis id, data type) -> r_obs.
README_R = {
    "right-handed-squark.slha": {("ATLAS-SUSY-2018-22", "UL"): 1.48},
    "negative-neutralino-mass.slha": {("ATLAS-SUSY-2019-09", "UL"): 7.11},
    "gluino-to-u-ubar.slha": {("ATLAS-SUSY-2013-02", "UL"): 0.705},
    "stable-charged-nlsp.slha": {("ATLAS-SUSY-2016-32", "UL"): 1.87},
    "chargino-to-stau-only.slha": {("CMS-SUS-17-010", "UL"): 2.43, ("CMS-SUS-17-003", "UL"): 1.10},
    "chargino-to-stau-only-all-sleptons-light.slha": {("CMS-SUS-17-010", "UL"): 2.43,
                                                      ("CMS-SUS-17-003", "UL"): 1.10},
    "long-lived-gluino.slha": {("ATLAS-SUSY-2018-42", "UL"): 0.505,
                               ("ATLAS-SUSY-2016-32", "UL"): 0.297},
}
#: The README's r_max of the indented file: CMS-SUS-19-006-agg's combined result
#: (with combinedResults=False the largest r is CMS-SUS-19-006's 17.7).
README_R_MAX = {"xsection-values-unindented.slha": 25.3}


def case(name: str) -> Path:
    path = CASES / name
    if not path.is_file():
        pytest.fail(f"{path} missing: the shared cases folder must sit beside the repository")
    return path


def direct_smodels_r(path: Path, smodels_db, particles=None):
    """Max r_obs per (analysis id, "UL"/"EM") from SModelS' own pipeline on ``path``:
    upper-limit results and efficiency maps' best signal regions (combinedResults=False);
    ``particles``: SModelS' BSM particles (default: its MSSM)."""
    from smodels.base.model import Model
    from smodels.base.physicsUnits import GeV, fb
    from smodels.decomposition import decomposer
    from smodels.matching.theoryPrediction import theoryPredictionsFor
    from smodels.share.models.mssm import BSMList
    from smodels.share.models.SMparticles import SMList
    from smodels.statistics.basicStats import observed

    model = Model(BSMparticles=BSMList if particles is None else particles, SMparticles=SMList)
    model.updateParticles(inputFile=str(path))
    top = decomposer.decompose(model, sigmacut=0.005 * fb, massCompress=True,
                               invisibleCompress=True, minmassgap=5 * GeV)
    found = defaultdict(float)
    for pred in theoryPredictionsFor(smodels_db, top, combinedResults=False):
        kind = {"upperLimit": "UL", "efficiencyMap": "EM"}[pred.dataType()]
        r = pred.getRValue(observed)
        if r is not None:
            key = (pred.analysisId(), kind)
            found[key] = max(found[key], float(r))
    return dict(found)


def ours_r(path: Path, db):
    model = load_model(path)
    assert isinstance(model, GeneralModel), "a user's file is a general model"
    result = significance.evaluate_general(
        model, db, selection=Selection(data_types=("UL", "EM"), superseded=True))
    found = defaultdict(float)
    for p in result.predictions:
        if p.r_obs is not None:
            found[(p.analysis_id, p.data_type)] = max(found[(p.analysis_id, p.data_type)],
                                                      p.r_obs)
    return dict(found), model


@pytest.mark.parametrize("name", sorted(README_R) + sorted(README_R_MAX))
def test_case_r_equals_smodels_direct(name, full_db, tmp_path):
    path = case(name)
    reference = path
    if name == "xsection-values-unindented.slha":  # SModelS (pyslha) reads no value line
        reference = tmp_path / name
        reference.write_text(re.sub(r"\n(0\s)", r"\n  \1", path.read_text()))
    expected = direct_smodels_r(reference, full_db.smodels)
    got, model = ours_r(path, full_db)
    assert expected and set(got) == set(expected)
    for key, r in expected.items():
        assert got[key] == pytest.approx(r, rel=1e-5), key
    for key, r in README_R.get(name, {}).items():  # the fixture itself, against the README
        assert got[key] == pytest.approx(r, abs=0.006), key
    if name in README_R_MAX:
        combined = significance.evaluate_general(
            model, full_db, selection=Selection(analyses=("CMS-SUS-19-006*",)))
        assert combined.r_max == pytest.approx(README_R_MAX[name], abs=0.06)


def test_long_lived_and_stable_particles_are_reported():
    assert load_model(case("long-lived-gluino.slha")).long_lived() == {1000021: "long-lived"}
    assert load_model(case("stable-charged-nlsp.slha")).long_lived() == {1000015: "stable"}
    model = load_model(case("negative-neutralino-mass.slha"))
    assert model.masses[1000023] == pytest.approx(129.225216)


def test_stau_only_decay_is_not_spread_over_light_sleptons():
    alone = load_model(case("chargino-to-stau-only.slha"))
    with_all = load_model(case("chargino-to-stau-only-all-sleptons-light.slha"))
    assert alone.decays[1000024] == with_all.decays[1000024] == [(1.0, (-1000015, 16))]


def test_malformed_pdg_code_is_a_one_line_error():
    path = case("malformed-mass-id.slha")
    with pytest.raises(SLHAError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "BLOCK MASS" in message and "'1000022g'" in message


def test_unindented_xsection_lines_are_read():
    model = load_model(case("xsection-values-unindented.slha"))
    assert {key: x.value_pb for key, x in model.xsecs.items()} == {
        (8, (1000021, 1000021)): 0.572168935, (13, (1000021, 1000021)): 3.0}
