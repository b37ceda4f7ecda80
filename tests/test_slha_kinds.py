"""Real-world kinds of SLHA input beyond ``../shared/cases`` (``tests/data/slha_kinds``,
its README gives each kind's source): every r equals SModelS called directly on the same
file, with the particle content SModelS needs for it (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protomodels.general import GeneralModel, load_model

from .test_cases import direct_smodels_r, ours_r

pytestmark = pytest.mark.slow

KINDS = Path(__file__).parent / "data" / "slha_kinds"
FILES = sorted(p.name for p in KINDS.glob("*.slha"))


def smodels_particles_for(name: str):
    """What a user gives SModelS for this file: its default MSSM, the file itself as the
    model for a QNUMBERS model, the MSSM plus a gravitino for a gravitino LSP."""
    from smodels.base.particle import Particle
    from smodels.share.models.mssm import BSMList
    from smodels.tools.particlesLoader import getParticlesFromSLHA

    if name.startswith("qnumbers"):
        return getParticlesFromSLHA(str(KINDS / name))
    if name.startswith("gravitino"):
        return list(BSMList) + [Particle(isSM=False, label="gravitino", pdg=1000039,
                                         eCharge=0, colordim=1, spin=1.5)]
    return None


def test_there_are_at_least_five_kinds():
    assert len(FILES) >= 5


@pytest.mark.parametrize("name", FILES)
def test_kind_r_equals_smodels_direct(name, full_db):
    path = KINDS / name
    expected = direct_smodels_r(path, full_db.smodels, smodels_particles_for(name))
    got, model = ours_r(path, full_db)
    assert isinstance(model, GeneralModel)
    assert expected and set(got) == set(expected), name
    for key, r in expected.items():
        assert got[key] == pytest.approx(r, rel=1e-5), (name, key)
    assert max(got.values()) > 0.05, name


def test_decay1l_tables_are_ignored():
    model = load_model(KINDS / "spheno-sarah-decay1l.slha")
    assert all(width < 1e3 for width in model.widths.values())


def test_run3_energy_is_kept_apart():
    model = load_model(KINDS / "xsection-run3-13p6tev.slha")
    assert {s for s, _ in model.xsecs} == {8, 13, 13.6}
