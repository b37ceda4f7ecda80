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


def test_a_walker_file_without_its_marker_scores_the_same(subset_db):
    """The general path gives SModelS the same physics as the proto-model path: the file's
    cross sections as written (its SSM block only counts in the prior, it does not multiply
    them again)."""
    from protomodels import significance
    from protomodels.slha import to_slha
    from protomodels.xsec import effective_xsecs

    from . import models

    model = models.gluino()
    model.ssm = {(1000021, 1000021): 0.5}
    text = to_slha(model, effective_xsecs(model))
    general = load_text(text.split("\n", 1)[1], "unmarked.slha")
    assert isinstance(general, GeneralModel)
    proto = significance.evaluate(model, subset_db)
    other = significance.evaluate_general(general, subset_db)
    r = sorted((p.analysis_id, p.dataset_id, p.r_obs) for p in proto.predictions)
    r_general = sorted((p.analysis_id, p.dataset_id, p.r_obs) for p in other.predictions)
    assert [x[:2] for x in r] == [x[:2] for x in r_general] and r
    for (_, _, a), (_, _, b) in zip(r, r_general):
        assert (a is None and b is None) or b == pytest.approx(a, rel=1e-9)
    assert other.prior_terms == proto.prior_terms
    assert other.K == pytest.approx(proto.K, abs=1e-9)


def test_heavy_higgs_decays_are_kept_and_qnumbers_are_checked():
    text = """\
BLOCK MASS
  1000022  100.0
  1000023  400.0
  36  200.0
DECAY 1000022 0.0
DECAY 1000023 1.0
  1.0 2 1000022 36
DECAY 36 1.0
  1.0 2 5 -5
XSECTION 13000 2212 2212 2 1000023 1000023
  0 2 0 0 0 0 0.1 x
"""
    model = load_text(text)
    assert model.lsp == 1000022 and 36 in model.in_chains()
    _, top = decompose(model.smodels_text(), model.smodels_particles())
    assert "A0" in str(top)
    with pytest.raises(SLHAError, match=r"QNUMBERS 1000045 lacks entries \[4\]"):
        load_text(SINGLINO + QNUMBERS.replace("     4     0\n", ""))
    with pytest.raises(SLHAError, match="QNUMBERS 1000045 entry 3 is 7"):
        load_text(SINGLINO + QNUMBERS.replace("3     1", "3     7"))


def test_antiparticle_decay_tables_are_passed_as_written():
    text = SINGLINO.replace("DECAY 1000022 0.1", "DECAY -1000022 0.1") + QNUMBERS
    model = load_text(text)
    assert model.channels(1000022) == [(1.0, (1000045, 25))]
    assert not any("no DECAY block" in note for note in model.notes)


def test_walker_files_of_the_benchmark_models_read_back_as_the_same_proto_models():
    """Walker-written files keep today's path (so today's K and r): each of the 20 frozen
    benchmark models, written as the walker writes it, reads back as a proto-model with
    the same masses, decays, multipliers and cross sections."""
    from protomodels.model import ProtoModel
    from protomodels.slha import to_slha
    from protomodels.xsec import effective_xsecs

    from .models import frozen_benchmark_models

    for model in frozen_benchmark_models():
        xsecs = effective_xsecs(model)
        again = load_text(to_slha(model, xsecs), "rank-1.slha")
        assert isinstance(again, ProtoModel)
        assert again.masses == model.masses and again.ssm == model.ssm
        assert {p: d for p, d in again.decays.items() if d} == \
            {p: {c: b for c, b in d.items() if b > 0} for p, d in model.decays.items() if d}
        nonzero = {k: v for k, v in xsecs.items() if v > 0}  # zero ones are not written
        assert {k: v for k, v in effective_xsecs(again).items() if v > 0} == \
            pytest.approx(nonzero, rel=1e-12)
