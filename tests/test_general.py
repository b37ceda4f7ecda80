"""General models (any SLHA file): what SModelS is given, without a database (issue 13)."""

from __future__ import annotations

import pytest

from protomodels.exceptions import SLHAError
from protomodels.general import GeneralModel, load_text
from protomodels.predictor import decompose

SINGLINO = """\
BLOCK MASS
  1000045  90.0
  1000022  200.0
  1000021  1000.0
DECAY 1000045 0.0
DECAY 1000022 0.1
  1.0 2 1000045 25
DECAY 1000021 1.0
  1.0 3 1000022 1 -1
XSECTION 13000 2212 2212 2 1000021 1000021
  0 2 0 0 0 0 0.3 x
"""
QNUMBERS = """\
BLOCK QNUMBERS 1000045
     1     0
     2     2
     3     1
     4     0
"""


def test_a_qnumbers_state_takes_part_in_the_decay_chain():
    """A state defined only by QNUMBERS (lines without comments, which SModelS' own reader
    cuts short) is the LSP the neutralino decays to."""
    model = load_text(SINGLINO + QNUMBERS)
    assert isinstance(model, GeneralModel) and model.lsp == 1000045
    _, top = decompose(model.smodels_text(), model.smodels_particles())
    text = str(top)
    assert "x1000045" in text and "higgs" in text


def test_an_unknown_state_in_a_decay_chain_is_an_error_not_dropped():
    model = load_text(SINGLINO, "singlino.slha")
    with pytest.raises(SLHAError, match="singlino.slha: BLOCK MASS entry 1000045 .* QNUMBERS"):
        model.smodels_particles()


def test_without_xsection_blocks_only_strong_production_gets_reference_values():
    text = """\
BLOCK MASS
  1000021  1200.0
  1000022  100.0
  1000024  300.0
DECAY 1000021 1.0
  1.0 3 1000022 1 -1
DECAY 1000024 1.0
  1.0 2 1000022 24
DECAY 1000022 0.0
"""
    model = load_text(text)
    assert {final for _, final in model.xsecs} == {(1000021, 1000021)}
    assert {x.source for x in model.xsecs.values()} == {"reference table"}
    assert model.without_xsec() == [1000024]
    assert any("no XSECTION block" in note for note in model.notes)


def test_decoupled_particles_do_not_count_in_the_prior():
    text = SINGLINO.replace("BLOCK MASS\n", "BLOCK MASS\n  1000001  8000.0\n") + \
        "DECAY 1000001 1.0\n  1.0 2 1000022 1\n" + QNUMBERS
    model = load_text(text)
    assert model.prior_terms() == {"particles": 2, "brs": 0, "ssms": 1}  # gluino, XZ1


def test_a_gravitino_lsp_is_known_to_smodels():
    text = """\
BLOCK MASS
  1000039  1.0E-09
  1000022  300.0
  1000021  1500.0
DECAY 1000039 0.0
DECAY 1000022 1.0E-3
  1.0 2 1000039 22
DECAY 1000021 1.0
  1.0 3 1000022 1 -1
XSECTION 13000 2212 2212 2 1000021 1000021
  0 2 0 0 0 0 0.01 x
"""
    model = load_text(text)
    assert model.lsp == 1000039
    _, top = decompose(model.smodels_text(), model.smodels_particles())
    assert "gravitino" in str(top) and "photon" in str(top)
