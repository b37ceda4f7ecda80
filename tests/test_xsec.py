"""Tests of protomodels.xsec against numbers read by hand from the shared tables.

Expected values come from the raw text (parsed here with str.split, not by the module)
and are also written out as literals read by eye, so a parser bug cannot hide itself.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from protomodels import xsec
from protomodels.exceptions import XsecError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = (REPO / ".." / "shared" / "xsec").resolve()


def _tables_dir() -> Path:
    """Where the shared tables are, found independently of the module."""
    env = os.environ.get(xsec.XSEC_DIR_ENV)
    return Path(env) if env else DEFAULT_DIR


def _raw_xsec(filename: str, mass: float) -> float:
    """The cross-section column of the row for ``mass``, in the file's own unit."""
    for line in (_tables_dir() / filename).read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if float(tokens[0]) == mass:
            return float(tokens[2] if tokens[1] == "GeV" else tokens[1])
    raise AssertionError(f"no row for {mass} in {filename}")


@pytest.fixture
def fresh_cache():
    """Tests that point the module elsewhere must not leave stale tables behind."""
    xsec.load_table.cache_clear()
    yield
    xsec.load_table.cache_clear()


# (file, table name, sqrts, mass, value read by eye in the file's unit, unit -> pb)
HAND_ROWS = [
    ("xsecgluino13.txt", "gluino", 13, 1000.0, 0.385, 1.0),  # "1000. GeV\t0.385E+00 ± 11.6 %"
    ("xsecsquark8.txt", "squark", 8, 1000.0, 0.00424173, 1.0),  # "1000 GeV \t0.00424173 ± ..."
    ("xsecstop8.txt", "stop", 8, 1000.0, 0.000435488, 1.0),  # "1000 GeV 0.000435488 +- ..."
    ("xsecC1C113.txt", "C1C1", 13, 1000.0, 0.621866, 1e-3),  # "1000 0.621866 0.0771005", fb
    ("xsecN2C1p8.txt", "N2C1p", 8, 200.0, 0.535, 1.0),  # "200\t5.350000e-01\t...", pb
    ("xsecslepslep8.txt", "slepslep", 8, 300.0, 2.07, 1e-3),  # "300 2.07", fb
]


@pytest.mark.parametrize("filename,name,sqrts,mass,hand,to_pb", HAND_ROWS)
def test_table_rows_match_raw_text(filename, name, sqrts, mass, hand, to_pb):
    raw = _raw_xsec(filename, mass)
    assert raw == pytest.approx(hand, rel=1e-12)
    table = xsec.load_table(name, sqrts)
    assert table.path.name == filename
    assert table.sqrts == sqrts
    assert table(mass) == pytest.approx(raw * to_pb, rel=1e-12)


def test_interpolation_is_geometric_between_rows():
    # gluino 13 TeV: 1000 GeV -> 0.385 pb, 1005 GeV -> 0.372 pb
    lo, hi = _raw_xsec("xsecgluino13.txt", 1000.0), _raw_xsec("xsecgluino13.txt", 1005.0)
    assert (lo, hi) == (0.385, 0.372)
    expected = lo * (hi / lo) ** (2.0 / 5.0)
    assert xsec.load_table("gluino", 13)(1002.0) == pytest.approx(expected, rel=1e-12)
    # slepton 8 TeV (fb): 300 GeV -> 2.07 fb, 325 GeV -> 1.431533 fb; midpoint = sqrt(a b)
    a, b = _raw_xsec("xsecslepslep8.txt", 300.0), _raw_xsec("xsecslepslep8.txt", 325.0)
    midpoint = math.sqrt(a * b) / 1000.0
    assert xsec.load_table("slepslep", 8)(312.5) == pytest.approx(midpoint, rel=1e-12)


def test_fb_table_converted_to_pb():
    table = xsec.load_table("slepslep", 8)
    assert table.unit == "fb"
    raw = [_raw_xsec("xsecslepslep8.txt", m) for m in table.masses]
    np.testing.assert_allclose(table.xsecs_pb, np.array(raw) / 1000.0, rtol=1e-12)
    assert table(50.0) == pytest.approx(2952.7 / 1000.0, rel=1e-12)
    assert xsec.load_table("slepslep", 13).unit == "pb"
    assert xsec.load_table("slepslep", 13)(50.0) == pytest.approx(5.368, rel=1e-12)


def test_tables_are_cached_and_read_only():
    table = xsec.load_table("stop", 13)
    assert xsec.load_table("stop", 13) is table
    assert np.all(np.diff(table.masses) > 0)
    with pytest.raises(ValueError):
        table.xsecs_pb[0] = 1.0


def test_light_squark_is_one_tenth_of_table():
    raw = _raw_xsec("xsecsquark8.txt", 1000.0)
    masses = {pid: 1000.0 for pid in (1000001, 1000002, 1000003, 1000004)}
    masses[1000022] = 100.0
    out = xsec.reference_xsecs(masses, 8)
    assert set(out) == {(-pid, pid) for pid in (1000001, 1000002, 1000003, 1000004)}
    for value in out.values():
        assert value == pytest.approx(raw / 10.0, rel=1e-12)


def test_out_of_range_errors_name_file_mass_and_range():
    gluino = xsec.load_table("gluino", 13)
    with pytest.raises(XsecError, match=r"xsecgluino13\.txt.*gluino.*150 GeV.*\[200, 3000\]"):
        gluino(150.0)
    with pytest.raises(XsecError, match=r"xsecgluino13\.txt.*3100 GeV"):
        gluino(3100.0)
    with pytest.raises(XsecError, match="xsecgluino13.txt"):
        gluino(float("nan"))
    with pytest.raises(XsecError, match=r"xsecslepslep8\.txt.*600 GeV.*\[50, 500\]"):
        xsec.reference_xsecs({1000022: 100.0, 1000011: 600.0}, 8, extrapolate=False)
    # the table edges themselves are inside
    assert gluino(200.0) == pytest.approx(3574.52, rel=1e-12)
    assert gluino(3000.0) == pytest.approx(0.612e-5, rel=1e-12)


def test_extrapolation_continues_the_outermost_log_line():
    table = xsec.load_table("slepslep", 8)
    m0, m1 = (float(m) for m in table.masses[-2:])
    s0, s1 = (float(v) for v in table.xsecs_pb[-2:])
    expected = s1 * (s1 / s0) ** ((600.0 - m1) / (m1 - m0))  # geometric continuation, by hand
    assert table(600.0, extrapolate=True) == pytest.approx(expected, rel=1e-12)
    got = xsec.reference_xsecs({1000022: 100.0, 1000011: 600.0}, 8)
    assert got[(-1000011, 1000011)] == pytest.approx(expected, rel=1e-12)


def test_process_keys_and_charge_conjugates():
    masses = {
        1000022: 100.0,  # XZ1: no direct production
        1000021: 1000.0,  # Xg
        1000006: 1000.0,  # Xt
        2000005: 1000.0,  # Xb2
        1000013: 300.0,  # Xmu
        1000012: 300.0,  # Xnue: no table
        1000024: 300.0,  # XW1
        1000023: 350.0,  # XZ2
        1000037: 400.0,  # XW2
    }
    out = xsec.reference_xsecs(masses, 13)
    assert set(out) == {
        (1000021, 1000021),
        (-1000006, 1000006),
        (-2000005, 2000005),
        (-1000013, 1000013),
        (-1000024, 1000024),
        (1000023, 1000024),  # XW1+ XZ2
        (-1000024, 1000023),  # XW1- XZ2
        (-1000037, 1000037),
        # higgsino-like tables (issue 12): neutral pairs, the other charged-neutral pairs,
        # the mixed chargino pair
        (1000022, 1000023), (1000023, 1000023),
        (1000022, 1000024), (-1000024, 1000022),
        (1000022, 1000037), (-1000037, 1000022),
        (1000023, 1000037), (-1000037, 1000023),
        (-1000037, 1000024), (-1000024, 1000037),
    }
    assert all(a <= b for a, b in out)
    assert out[(1000021, 1000021)] == pytest.approx(0.385, rel=1e-12)
    assert out[(-1000006, 1000006)] == pytest.approx(_raw_xsec("xsecstop13.txt", 1000.0))
    assert out[(-2000005, 2000005)] == out[(-1000006, 1000006)]
    assert out[(-1000013, 1000013)] == pytest.approx(0.006254, rel=1e-12)  # "300 \t0.006254"
    assert out[(-1000024, 1000024)] == pytest.approx(190.159e-3, rel=1e-12)  # "300 190.159", fb
    assert out[(-1000037, 1000037)] == pytest.approx(58.6311e-3, rel=1e-12)  # "400 58.6311", fb
    # XW1 XZ2 at the mean mass 325 GeV, a table row: N2C1p "325\t191.314", N2C1m "325\t90.6096"
    assert out[(1000023, 1000024)] == pytest.approx(191.314e-3, rel=1e-12)
    assert out[(-1000024, 1000023)] == pytest.approx(90.6096e-3, rel=1e-12)


def test_second_doublet_only_with_its_own_partner():
    out = xsec.reference_xsecs({1000022: 100.0, 1000024: 300.0, 1000025: 350.0}, 13)
    # XW1 XZ3 is not a wino-like doublet: the higgsino-like N2C1 tables at the mean mass
    assert out[(1000024, 1000025)] == pytest.approx(_raw_xsec("xsecN2C1p13hino.txt", 325.0) * 1e-3)
    assert out[(-1000024, 1000025)] == pytest.approx(_raw_xsec("xsecN2C1m13hino.txt", 325.0) * 1e-3)
    out = xsec.reference_xsecs({1000022: 100.0, 1000024: 300.0, 1000037: 300.0, 1000025: 350.0}, 13)
    assert out[(1000025, 1000037)] == pytest.approx(191.314e-3, rel=1e-12)
    assert out[(-1000037, 1000025)] == pytest.approx(90.6096e-3, rel=1e-12)


# (pids with masses, process key, table file, mass looked up, share of the table)
HIGGSINO_ROWS = [
    ({1000022: 100.0, 1000023: 200.0}, (1000022, 1000023), "xsecN2N113hino.txt", 150.0, 1.0),
    ({1000022: 100.0, 1000023: 250.0}, (1000023, 1000023), "xsecN2N113hino.txt", 250.0, 1.0),
    ({1000022: 50.0, 1000023: 300.0, 1000025: 500.0}, (1000023, 1000025), "xsecN2N113hino.txt", 400.0, 1.0),
    ({1000022: 50.0, 1000025: 600.0}, (1000025, 1000025), "xsecN2N113hino.txt", 600.0, 1.0),
    ({1000022: 50.0, 1000025: 450.0}, (1000022, 1000025), "xsecN2N113hino.txt", 250.0, 1.0),
    ({1000022: 150.0, 1000024: 250.0}, (1000022, 1000024), "xsecN2C1p13hino.txt", 200.0, 1.0),
    ({1000022: 150.0, 1000024: 250.0}, (-1000024, 1000022), "xsecN2C1m13hino.txt", 200.0, 1.0),
    ({1000022: 100.0, 1000024: 300.0, 1000037: 500.0}, (-1000037, 1000024), "xsecC1C113hino.txt", 400.0, 0.5),
    ({1000022: 100.0, 1000024: 300.0, 1000037: 500.0}, (-1000024, 1000037), "xsecC1C113hino.txt", 400.0, 0.5),
]


@pytest.mark.parametrize("masses,key,filename,mass,share", HIGGSINO_ROWS)
def test_electroweak_pairs_from_higgsino_tables_at_grid_points(masses, key, filename, mass, share):
    """Each new electroweak process at a mean mass that is a table row: the row's value
    (fb in these files) times its share; none at 8 TeV (the tables are 13 TeV only)."""
    out = xsec.reference_xsecs(masses, 13)
    assert out[key] == pytest.approx(share * _raw_xsec(filename, mass) * 1e-3, rel=1e-12)
    assert key not in xsec.reference_xsecs(masses, 8)


def test_every_table_is_positive_and_falls_from_its_trusted_end_to_2400_gev():
    """The tails (module docstring): from the last trusted row up to 2400 GeV every table
    is positive and non-increasing, continuous at the trusted end, and the higgsino
    tables' rounded or rising last rows are replaced (N2C1p/m print "0.01" fb)."""
    for name in xsec.TABLE_PROCESSES:
        for sqrts in (xsec.HIGGSINO_SQRTS,) if name.endswith("hino") else xsec.SQRTS_VALUES:
            table = xsec.load_table(name, sqrts)
            end = float(table.masses[table.trusted_end])
            grid = np.arange(end, max(end, 2400.0) + 1e-9, 5.0)
            values = np.array([table(m, extrapolate=True) for m in grid])
            assert np.all(values > 0), (name, sqrts)
            assert np.all(np.diff(values) <= 0), (name, sqrts)
            assert values[0] == pytest.approx(float(table.xsecs_pb[table.trusted_end]), rel=1e-12)
            if not name.endswith("hino"):  # unchanged: trusted to the last row
                assert table.trusted_end == len(table.masses) - 1, (name, sqrts)
    n2c1p = xsec.load_table("N2C1phino", 13)
    assert n2c1p.masses[n2c1p.trusted_end] == 1275.0  # "1275 0.05": rounded by 10%
    c1c1 = xsec.load_table("C1C1hino", 13)
    assert c1c1.masses[c1c1.trusted_end] == 1475.0  # 1500 GeV's row is above 1475's
    # the replaced rows stay within their printed rounding: 1500 GeV "0.01" fb = 0.005-0.015
    assert 0.5e-5 <= n2c1p(1500.0) <= 1.5e-5


def test_higgsino_tail_follows_the_reference_shape():
    """Above its last row the N1N2 table follows the N2C1p (wino, 13 TeV) table's mass
    dependence, normalised at 1450 GeV (by hand from the two tables' rows)."""
    n1n2, shape = xsec.load_table("N2N1hino", 13), xsec.load_table("N2C1p", 13)
    expected = _raw_xsec("xsecN2N113hino.txt", 1450.0) * 1e-3 * (
        _raw_xsec("xsecN2C1p13.txt", 1800.0) / shape(1450.0))
    assert n1n2(1800.0, extrapolate=True) == pytest.approx(expected * 1e-3, rel=1e-9)


def test_slepton_table_is_the_sum_of_left_and_right():
    """The L+R slepton table that a proto-model's slepton gets equals the sum of the
    separate left- and right-handed tables at every row (the documented choice)."""
    for sqrts in xsec.SQRTS_VALUES:
        both = xsec.load_table("slepslep", sqrts)
        left = xsec.XsecTable.from_file(xsec.xsec_dir() / f"xsecslepLslepL{sqrts}.txt", sqrts)
        right = xsec.XsecTable.from_file(xsec.xsec_dir() / f"xsecslepRslepR{sqrts}.txt", sqrts)
        for mass, value in zip(both.masses, both.xsecs_pb):
            if left.masses[0] <= mass <= left.masses[-1]:
                assert value == pytest.approx(left(mass) + right(mass), rel=0.02), (sqrts, mass)


def test_bad_inputs():
    with pytest.raises(XsecError, match="unknown particle"):
        xsec.reference_xsecs({1000022: 100.0, 42: 500.0}, 13)
    with pytest.raises(XsecError, match="14 TeV"):
        xsec.load_table("gluino", 14)
    assert xsec.reference_xsecs({1000022: 100.0}, 13) == {}


def test_xsec_dir_default_and_env(monkeypatch, tmp_path, fresh_cache):
    if DEFAULT_DIR.is_dir():
        monkeypatch.delenv(xsec.XSEC_DIR_ENV, raising=False)
        assert xsec.xsec_dir() == DEFAULT_DIR
    monkeypatch.setenv(xsec.XSEC_DIR_ENV, str(tmp_path))
    assert xsec.xsec_dir() == tmp_path
    with pytest.raises(XsecError, match=r"xsecgluino13\.txt"):
        xsec.load_table("gluino", 13)
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(xsec.XSEC_DIR_ENV, str(missing))
    with pytest.raises(XsecError) as err:
        xsec.xsec_dir()
    assert xsec.XSEC_DIR_ENV in str(err.value)
    assert "shared/xsec" in str(err.value)
    assert str(missing) in str(err.value)


def test_unit_missing_or_ambiguous_names_file(monkeypatch, tmp_path, fresh_cache):
    rows = "100 5.0\n200 1.0\n"
    (tmp_path / "xsecgluino13.txt").write_text("# gluino pairs, 13 TeV\n# mass xsec\n" + rows)
    monkeypatch.setenv(xsec.XSEC_DIR_ENV, str(tmp_path))
    with pytest.raises(XsecError, match=r"xsecgluino13\.txt.*unit"):
        xsec.load_table("gluino", 13)
    bad = tmp_path / "both.txt"
    bad.write_text("# mass [GeV] xsec [fb] other xsec [pb]\n" + rows)
    with pytest.raises(XsecError, match=r"both\.txt.*unit"):
        xsec.XsecTable.from_file(bad, 13)
    good = tmp_path / "good.txt"
    good.write_text("# comment\n# mass [GeV] xsec [fb] unc [fb]\n\n" + rows)
    table = xsec.XsecTable.from_file(good, 13, "test")
    assert table(100.0) == pytest.approx(5.0e-3, rel=1e-12)
    assert table(150.0) == pytest.approx(math.sqrt(5.0 * 1.0) * 1e-3, rel=1e-12)


def test_malformed_row_and_wrong_energy_name_file(tmp_path):
    broken = tmp_path / "broken.txt"
    broken.write_text("# xsec [pb]\n100 5.0\nnot a row\n")
    with pytest.raises(XsecError, match=r"broken\.txt:3"):
        xsec.XsecTable.from_file(broken, 13)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("# 8 TeV, xsec [pb]\n100 5.0\n200 1.0\n")
    with pytest.raises(XsecError, match=r"wrong\.txt.*8"):
        xsec.XsecTable.from_file(wrong, 13)
