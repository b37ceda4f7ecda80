"""SLHA round trips and bad input: every error names the file and the field."""

from __future__ import annotations

import re

import pyslha
import pytest

from protomodels.exceptions import SLHAError
from protomodels.model import CHANNELS, NAMES, ProtoModel
from protomodels.xsec import effective_xsecs
from protomodels.slha import read_slha, to_slha, write_slha

from . import models

GOOD = models.paper_best


def roundtrip(model: ProtoModel, tmp_path) -> ProtoModel:
    path = tmp_path / "m.slha"
    write_slha(model, effective_xsecs(model), path)
    return read_slha(path)


@pytest.mark.parametrize("make", [models.gluino, models.sbottom_higgs, models.electroweak,
                                  models.paper_best])
def test_roundtrip_is_exact(make, tmp_path):
    model = make()
    back = roundtrip(model, tmp_path)
    assert back.masses == model.masses
    assert back.decays == {p: {c: b for c, b in d.items() if b > 0} for p, d in model.decays.items()}
    assert back.ssm == model.ssm
    # the cross sections read back, with multipliers applied, are the ones written
    assert effective_xsecs(back) == pytest.approx(effective_xsecs(model), rel=1e-14)


def test_tied_channels_write_every_line(tmp_path):
    model = ProtoModel(masses={1000022: 100.0, 1000024: 150.0},
                       decays={1000024: {"l nu XZ1": 0.6, "q q' XZ1": 0.4}})
    model.validate()
    path = tmp_path / "m.slha"
    write_slha(model, effective_xsecs(model), path)
    doc = pyslha.read(str(path))
    lines = {tuple(sorted(d.ids)): d.br for d in doc.decays[1000024].decays}
    assert len(lines) == 4  # e, mu, tau share "l nu XZ1", plus q q'
    assert sum(lines.values()) == pytest.approx(1.0)
    assert lines[tuple(sorted((1000022, -11, 12)))] == pytest.approx(0.2)
    assert read_slha(path).decays[1000024] == pytest.approx({"l nu XZ1": 0.6, "q q' XZ1": 0.4})


def test_frozen_particles_are_heavy_and_without_decays(tmp_path):
    text = to_slha(models.gluino(), {})
    doc = pyslha.readSLHA(text, ignorenomass=True)
    assert doc.blocks["MASS"][1000006] == 1e6
    decaying = {int(line.split()[1]) for line in text.splitlines() if line.startswith("DECAY")}
    assert decaying == {1000021, 1000022}
    assert len(doc.blocks["MASS"]) == len(NAMES)


def test_channel_menu_is_charge_consistent():
    charge = {1: -1, 2: 2, 3: -1, 4: 2, 5: -1, 6: 2, 11: -3, 13: -3, 15: -3, 12: 0, 14: 0, 16: 0,
              21: 0, 23: 0, 24: 3, 25: 0, 1000001: -1, 1000002: 2, 1000003: -1, 1000004: 2,
              1000005: -1, 2000005: -1, 1000006: 2, 2000006: 2, 1000011: -3, 1000013: -3,
              1000015: -3, 1000012: 0, 1000014: 0, 1000016: 0, 1000021: 0, 1000022: 0,
              1000023: 0, 1000025: 0, 1000024: 3, 1000037: 3}  # in units of e/3

    def q(pid):
        return charge[abs(pid)] * (1 if pid > 0 else -1)

    for parent, specs in CHANNELS.items():
        for spec in specs:
            for line in spec.lines:
                assert sum(q(d) for d in line) == charge[parent], (NAMES[parent], spec.name, line)


def _write(tmp_path, text: str):
    path = tmp_path / "bad.slha"
    path.write_text(text)
    return path


def _good_text() -> str:
    model = GOOD()
    return to_slha(model, effective_xsecs(model))


def _sub(pattern: str, replacement: str):
    return lambda text: re.sub(pattern, replacement, text, count=1)


@pytest.mark.parametrize("mutate, message", [
    (_sub(r"BLOCK MASS", "BLOCK MASSX"), "no MASS block"),
    (_sub(r"(\n\s+1000006\s+)1166.0", r"\g<1>-1166.0"), "MASS of Xt (1000006) is -1166.0"),
    (_sub(r"(\n\s+1000006\s+)1166.0", r"\g<1>nan"), "BLOCK MASS entry 1000006: the mass is 'nan', not a number"),
    (_sub(r"(\n\s+1000022\s+)163.0", r"\g<1>abc"), "BLOCK MASS entry 1000022: the mass is 'abc', not a number"),
    (_sub(r"(\n\s+1000022\s+163.0)", r"\g<1>\n  1000035  500.0"), "particle id 1000035 at 500.0 GeV, not a proto-model candidate"),
    (_sub(r"(DECAY\s+1000001\s+1.0.*\n)\s+1.0", r"\g<1>  0.5"), "BRs of Xd sum to 0.5"),
    (_sub(r"DECAY\s+1000006.*\n.*\n", ""), "DECAY block of Xt"),
    (_sub(r"(\n\s+1000022\s+)163.0", r"\g<1>2000.0"), "lighter than the LSP"),
    (_sub(r"(\n\s+1000022\s+)163.0", r"\g<1>1e7"), "lacks the LSP"),
    (_sub(r"(DECAY\s+1000006.*\n\s+1.0\s+2\s+)6(\s+)1000022", r"\g<1>24\g<2>1000022"),
     "not in the Xt channel menu"),
])
def test_bad_input_names_file_and_field(tmp_path, mutate, message):
    text = _good_text()
    bad = mutate(text)
    assert bad != text, "the mutation must apply"
    path = _write(tmp_path, bad)
    with pytest.raises(SLHAError) as info:
        read_slha(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_unparsable_file(tmp_path):
    path = _write(tmp_path, "BLOCK MASS\n 1000022 100.0\n 1000021 1000.0\n"
                            "DECAY 1000021 1.0\n 1.0 3 1 -1\n")  # 3 daughters announced, 2 given
    with pytest.raises(SLHAError, match=r"bad.slha:5: DECAY 1000021 channel '1 -1': NDA 3 "
                                        "does not match 2 daughter ids"):
        read_slha(path)


def test_missing_file(tmp_path):
    with pytest.raises(SLHAError, match="no such file"):
        read_slha(tmp_path / "nope.slha")


def test_xsection_blocks_are_used_as_given(tmp_path):
    text = _good_text() + ("XSECTION  13000.0  2212 2212 2 1000021 1000021\n"
                           "  0  2  0  0  0  0  0.5  test\n")
    model = read_slha(_write(tmp_path, text))
    assert model.xsecs[(13, (1000021, 1000021))] == 0.5
    assert effective_xsecs(model)[(13, (1000021, 1000021))] == 0.5


@pytest.mark.parametrize("make", [models.gluino, models.electroweak, models.paper_best])
def test_json_form_roundtrip(make):
    import json
    model = make()
    back = ProtoModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert back == model


def test_json_form_errors_name_the_source():
    from protomodels.exceptions import ModelError
    with pytest.raises(ModelError, match="hist.json: unknown or missing field 'Xq'"):
        ProtoModel.from_dict({"masses": {"Xq": 100.0}}, source="hist.json")
