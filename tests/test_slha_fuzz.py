"""Fuzzing the SLHA reader alone (no SModelS): mutated files either read or raise
``SLHAError`` with a one-line message; mutations that keep the meaning read to the same
model (issue 13)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protomodels.exceptions import SLHAError
from protomodels.general import GeneralModel, load_text
from protomodels.slha import to_slha
from protomodels.xsec import effective_xsecs

from . import models

GENERAL = """\
# a spectrum-generator-like file: SM entries, a Q= scale, mixed case, comments
Block SPINFO   # program information
     1   SOFTSUSY
     2   4.1.0
BLOCK MASS  Q= 1.0E+03 # pole masses
        24     8.04E+01   # W+
   1000021     1.20000000E+03   # ~g
   1000022     2.00000000E+02   # ~chi_10
   1000023    -3.10000000E+02   # ~chi_20 (negative eigenvalue)
   1000024     3.10000000E+02   # ~chi_1+
   2000001     5.00000000E+03   # ~d_R, parked
DECAY   1000021     1.0E-17   # long-lived gluino
     5.00000000E-01    3     1000022         1        -1
     5.00000000E-01    3     1000022         2        -2
DECAY   1000023     1.0E-01
     1.00000000E+00    2     1000022        25
DECAY   1000024     1.0E-01
     1.00000000E+00    2     1000022        24
DECAY   1000022     0.0
DECAY   2000001     1.0
     1.00000000E+00    2     1000022         1
XSECTION  1.30E+04  2212 2212 2 1000021 1000021 # gluino pairs
  0  2  0  0  0  0    1.00000000E-02 NNLL-fast
  0  2  0  0  0  0    1.20000000E-02 scale variation
XSECTION  1.30E+04  2212 2212 2 1000023 1000024
  0  0  0  0  0  0    5.00000000E-02 Prospino LO
  0  1  0  0  0  0    6.00000000E-02 Prospino NLO
"""


def proto_text() -> str:
    model = models.paper_best()
    return to_slha(model, effective_xsecs(model))


BASES = {"general": GENERAL, "proto": proto_text()}


def read(text: str):
    """The reader under test: a model, or the SLHAError it raised (anything else escapes)."""
    try:
        return load_text(text, "fuzz.slha")
    except SLHAError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return error


def summary(model):
    if isinstance(model, GeneralModel):
        return ("general", model.masses, model.widths, model.decays,
                {k: (x.value_pb, x.order) for k, x in model.xsecs.items()}, model.ssm)
    return ("proto", model.masses, model.decays, model.ssm, model.xsecs)


TOKENS = st.sampled_from(["abc", "1e400", "-1e400", "nan", "inf", "0", "0.0", "-1", "-5e3",
                          "1e308", "1e-320", "2212", "1000022", "-1000022", "7", "", "#",
                          "1.5", "BLOCK", "DECAY", "XSECTION", "3", "100000000000000000000"])


@st.composite
def damaged(draw, base: str):
    lines = base.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop_line", "drop_field", "swap", "replace", "duplicate",
                                     "insert"]))
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split()
        if kind == "drop_line":
            del lines[i]
        elif kind == "duplicate":
            j = draw(st.integers(i, min(i + 6, len(lines))))
            lines[j:j] = lines[i:j] or [lines[i]]
        elif kind == "insert":
            lines.insert(i, " ".join(draw(st.lists(TOKENS, min_size=1, max_size=8))))
        elif fields:
            k = draw(st.integers(0, len(fields) - 1))
            if kind == "drop_field":
                del fields[k]
            elif kind == "swap":
                m = draw(st.integers(0, len(fields) - 1))
                fields[k], fields[m] = fields[m], fields[k]
            else:
                fields[k] = draw(TOKENS)
            lines[i] = "   " + "   ".join(fields)
        if not lines:
            lines = [""]
    return "\n".join(lines)


@settings(max_examples=2500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_files_read_or_raise_slha_error(data):
    base = BASES[data.draw(st.sampled_from(sorted(BASES)))]
    read(data.draw(damaged(base)))


def _lower_keywords(text: str) -> str:
    return re.sub(r"(?m)^(BLOCK|Block|DECAY|XSECTION)(\s+\S+)?",
                  lambda m: m.group(0).lower(), text)


def _comment_every_line(text: str) -> str:
    lines = text.split("\n")
    return "\n".join(lines[:1] + [line + "  # a comment" if line.strip() and "#" not in line
                                  else line for line in lines[1:]])


PRESERVING = {
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "tabs": lambda t: re.sub(r"(?m)(?<=\S) +", "\t", t),
    "lower case keywords and block names": _lower_keywords,
    "comments": _comment_every_line,
    "comment lines": lambda t: t.replace("\nDECAY", "\n# a comment line\nDECAY"),
    "leading blanks": lambda t: re.sub(r"(?m)^(?=\S)(?!#)", "  ", t),
}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(base=st.sampled_from(sorted(BASES)),
       chosen=st.sets(st.sampled_from(sorted(PRESERVING)), min_size=1))
def test_meaning_preserving_changes_read_to_the_same_model(base, chosen):
    text = BASES[base]
    for name in sorted(chosen):
        text = PRESERVING[name](text)
    original, changed = read(BASES[base]), read(text)
    assert not isinstance(changed, SLHAError), (chosen, changed)
    assert summary(changed) == summary(original)
    assert summary(original)[0] == ("general" if base == "general" else "proto")


def test_general_base_reads_as_sModelS_would():
    model = read(GENERAL)
    assert isinstance(model, GeneralModel)
    assert model.masses[1000023] == 310.0  # absolute value of the eigenvalue
    assert 24 not in model.masses  # SM entries are SModelS' own
    gluinos = model.xsecs[(13, (1000021, 1000021))]
    assert (gluinos.value_pb, gluinos.lines) == (1.2e-2, 2)  # the largest of one order
    assert model.xsecs[(13, (1000023, 1000024))].order == 1  # the highest order
    assert model.long_lived() == {1000021: "long-lived"}
    # counted: the produced gluino, XZ2 and XW1 (the LSP and the parked d_R are not)
    assert model.prior_terms() == {"particles": 3, "brs": 0, "ssms": 1}
    assert model.without_xsec() == []


@pytest.mark.parametrize("text, words", [
    ("BLOCK MASS\n 1000022g 100\n", ["BLOCK MASS", "'1000022g'"]),
    ("BLOCK MASS\n 1000022 1e2\n 1000022 2e2\n", ["BLOCK MASS entry 1000022 appears twice"]),
    ("BLOCK MASS\n 1000022 100\n 1000021 500\nDECAY 1000021 1\n 0.5 2 1000022 21\n",
     ["DECAY 1000021", "sum to 0.5"]),
    ("BLOCK MASS\n 1000022 100\nXSECTION 13000 2212 2212 2 1000021 1000021\n"
     " 0 2 0 0 0 0 1.0\n", ["XSECTION 1000021 1000021", "BLOCK MASS"]),
    ("1000022 100\n", ["outside any BLOCK"]),
    ("BLOCK MASS\n 1000022 1_5E+02\n", ["BLOCK MASS entry 1000022: the mass is '1_5E+02', not a number"]),
    ("BLOCK MASS\n 1000022 \u0661\u0660\u0660\n", ["not a number"]),
    ("BLOCK MASS\n 1000021 1500.0 1000022 300.0\n", ["expected <pid> <mass>"]),
])
def test_errors_name_block_entry_and_value(text, words):
    error = read(text)
    assert isinstance(error, SLHAError)
    for word in words:
        assert word in str(error), (word, str(error))


def test_non_pp_cross_sections_are_used_as_smodels_does_with_a_note():
    text = GENERAL.replace("XSECTION  1.30E+04  2212 2212 2 1000021", "XSECTION  1.30E+04  2212 -2212 2 1000021")
    model = read(text)
    assert isinstance(model, GeneralModel)
    assert (13, (1000021, 1000021)) in model.xsecs
    assert any("is not pp" in note for note in model.notes)


def test_a_width_without_channels_is_stable_and_parked_states_are_quiet():
    text = GENERAL.replace("DECAY   1000023     1.0E-01\n     1.00000000E+00    2     1000022        25\n",
                           "DECAY   1000023     1.0E-01\n")
    model = read(text)
    assert model.long_lived()[1000023] == "stable"
    assert not any("2000001" in note for note in model.notes)  # parked at 5 TeV, not produced
