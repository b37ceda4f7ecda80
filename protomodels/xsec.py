"""Reference pair-production cross sections from the LHC SUSY cross-section tables.

No event generator is available offline, so every production process of a proto-model
gets its reference cross section (pb) from the tables in ``../shared/xsec/`` (SPEC
section 3); the model's signal-strength multipliers scale it afterwards.  Each table file
``xsec<NAME><SQRTS>.txt`` has a ``#`` header that names its source, process and units,
then one row per mass: ``mass [GeV] xsec [unc...]``.  The unit (pb or fb) is read from the
header, never assumed: the 8 TeV slepton table, both chargino-pair (C1C1) tables and the
13 TeV chargino-neutralino (N2C1) tables are in fb, the others in pb.  Tables are used as
given; two quirks worth knowing: the C1C1 tables start with a 50 GeV row without an
uncertainty (below the XW1 wall of 100 GeV, so it only matters for masses outside the
model space), and the 13 TeV gluino table switches from NLO+NLL to NNLOapprox+NNLL at
500 GeV, a 16% step between its 495 and 500 GeV rows.

Interpolation: log(sigma) linear in mass between the two neighbouring rows, because the
cross sections fall roughly exponentially with mass.  Outside a table's mass range
:class:`~protomodels.exceptions.XsecError` is raised (naming file, process, mass and
range) unless extrapolation is asked for (see "Tails" below); nothing is dropped
silently.  Note the upper ends: several tables stop at 2000 GeV (8 TeV tables, 13 TeV
electroweak ones), the 13 TeV slepton table at 1000 GeV, the 8 TeV slepton and chargino
tables at 500 and 1000 GeV, while proto-model masses go up to 2400 GeV.

Processes and the choices made (keys are signed PDG pairs sorted ascending):

- ``(1000021, 1000021)`` Xg Xg: gluino table, as is.
- ``(-pid, pid)`` for each light-quark partner Xd, Xu, Xs, Xc (1000001..1000004): 1/10 of
  the squark table, because that table is the sum over 10 mass-degenerate squarks
  (5 flavours x 2 chiralities) and a proto-model has one partner per flavour.
- ``(-pid, pid)`` for Xb, Xb2, Xt, Xt2 (1000005, 2000005, 1000006, 2000006): stop/sbottom
  table, as is (one state per entry, QCD production does not depend on flavour).
- ``(-pid, pid)`` for Xe, Xmu, Xtau (1000011, 1000013, 1000015): slepton table as is.
  The table is the sum of the left- and right-handed slepton of one generation; a
  proto-model has a single partner per lepton flavour, and we give it the L+R sum
  (roughly 1.4x a pure left-handed and 3-4x a pure right-handed slepton).  This is the
  generous choice; the multiplier can scale it down.
- Sneutrinos Xnue, Xnumu, Xnutau (1000012/14/16): no table here, so no direct production
  (they still appear in decays); logged once at debug level.
- ``(-1000024, 1000024)`` XW1 pairs: wino C1C1 table at m(XW1).
- ``(1000023, 1000024)`` XW1+ XZ2 and ``(-1000024, 1000023)`` XW1- XZ2: wino N2C1p and
  N2C1m tables.  Those tables assume m(C1) = m(N2); for a proto-model with different
  masses we evaluate them at the average (m(XW1) + m(XZ2)) / 2.  The tables start at
  100 GeV while XZ2 may be as light as 20 GeV, so a light XZ2 can put the average below
  the table and raise XsecError like any other out-of-range mass.
- XW2 is a second copy of XW1: ``(-1000037, 1000037)`` from the C1C1 table at m(XW2),
  and XW2 with XZ3 (``(1000025, 1000037)``, ``(-1000037, 1000025)``) from the N2C1p/m
  tables at the average of m(XW2) and m(XZ3), i.e. (XW2, XZ3) is treated as a second
  wino-like doublet just like (XW1, XZ2).
- Every other pair of electroweak partners (issue 12), from the LHC SUSY cross-section
  working group's higgsino-like tables at the pair's mean mass, 13 TeV only:
  neutral pairs XZ1 XZ2, XZ1 XZ3, XZ2 XZ2, XZ2 XZ3, XZ3 XZ3 from ``N2N1hino`` (N1 N2
  production; XZ1 XZ1 is invisible and left out); charged-neutral pairs XW1 XZ1, XW1 XZ3,
  XW2 XZ1, XW2 XZ2 from ``N2C1phino`` (XWi+ XZj) and ``N2C1mhino`` (XWi- XZj); the mixed
  chargino pair XW1 XW2 from ``C1C1hino``, half to each charge combination (XW1+ XW2-,
  XW1- XW2+; one multiplier serves both).  Why the mean mass: the working group's
  split-spectrum table (``N2N1nondegen13hino``: m(N1), m(N2) up to 360 GeV, splittings
  up to 110 GeV) lies within 0.88-1.00 (median 0.98) of the degenerate table at
  (m(N1) + m(N2)) / 2 over all its 73 rows; the split tables themselves cover too small a
  corner of the model space to be used.  8 TeV: there are no higgsino tables, so these
  processes have no 8 TeV cross section (8 TeV searches do not see them; they are much
  weaker than the 13 TeV ones for electroweak production).  The higgsino tables end at
  1325-1500 GeV and their last rows are rounded (N2C1p/m to two significant digits from
  about 500 GeV, down to "0.01" fb) or not monotone (C1C1hino's last row): see "tails".
- Left- and right-handed sleptons: the separate tables ``slepLslepL``/``slepRslepR`` are
  not used; a proto-model has one charged slepton per flavour, which keeps the L+R sum
  (``slepslep`` equals slepL + slepR at every row, checked in the tests), and its
  multiplier (0.01-100) covers a pure L (about 0.7 of the sum) or R (about 0.3) state.
- Left out: sneutrino production (no table), squark-squark production, and squark-gluino
  associated production: ``gluinosquark13`` sums all light flavours and both
  chiralities at equal masses, and the per-flavour share is dominated by the valence
  flavours through the PDFs (u >> d >> s, c); the table alone cannot give it, so a
  proto-model with one partner per flavour would get a share we cannot justify.

Tails: above its last row a table is continued from its last *trusted* row: walking
back from the end, a row is not trusted while its printed value is rounded coarser than
``MAX_ROUNDING`` (half a unit of its last digit relative to the value; the higgsino
N2C1p/m tables print "0.02" and "0.01" fb in their last rows) or is not strictly below
the row before it (C1C1hino's last row).  A row's rounding is judged with the finest
last digit printed in it or any later row (the higgsino N2C1 tables print two decimals
and drop trailing zeros: "0.7" there is 0.70).  Untrusted rows are replaced by the tail,
also inside the table's range.  Every table used before issue 12 is trusted to its last
row and keeps its tail: the straight line in log(sigma) through its two outermost rows.
The higgsino-like tables are continued with the mass dependence of their wino-like
counterpart at 13 TeV (N2C1p for N1N2 and N2C1p, N2C1m, C1C1; printed to six digits up
to 2000 GeV; beyond 2000 GeV their own line), normalised at the trusted end:
sigma(m) = sigma(m_end) x ref(m) / ref(m_end), with ref's running minimum from m_end
(the wino N2C1m table rises by 0.3% at 1400 GeV).  A straight line in log(sigma) falls too
fast, log(sigma) being convex in mass: cut at 1000 GeV, it underestimates the N1N2 table
at 1450 GeV by 40%, the N2C1p shape by 3% (7% at most in between; measured when
choosing).  Every table is thus positive and non-increasing from its trusted end to
2400 GeV and beyond (tested).

"""

from __future__ import annotations

import functools
import logging
import math
import os
import pathlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protomodels.exceptions import XsecError

if TYPE_CHECKING:  # pragma: no cover
    from .model import ProtoModel
    from .slha import Xsecs

logger = logging.getLogger(__name__)

XSEC_DIR_ENV = "PROTOMODELS_XSEC_DIR"

SQRTS_VALUES = (8, 13)

# Table name (as in the file name) -> process, for messages.
TABLE_PROCESSES: dict[str, str] = {
    "gluino": "gluino pair production",
    "squark": "squark anti-squark production, sum of 10 degenerate squarks",
    "stop": "stop (sbottom) pair production",
    "slepslep": "slepton pair production, L+R of one generation",
    "C1C1": "wino-like chargino pair production",
    "N2C1p": "wino-like chargino+ neutralino2 production",
    "N2C1m": "wino-like chargino- neutralino2 production",
    "N2N1hino": "higgsino-like neutralino1 neutralino2 production",
    "N2C1phino": "higgsino-like chargino+ neutralino2 production",
    "N2C1mhino": "higgsino-like chargino- neutralino2 production",
    "C1C1hino": "higgsino-like chargino pair production",
}

# Tables whose file name is not xsec<NAME><SQRTS>.txt; the higgsino ones exist at 13 TeV only.
_FILE_NAMES: dict[str, str] = {
    "N2N1hino": "xsecN2N1{sqrts}hino.txt",
    "N2C1phino": "xsecN2C1p{sqrts}hino.txt",
    "N2C1mhino": "xsecN2C1m{sqrts}hino.txt",
    "C1C1hino": "xsecC1C1{sqrts}hino.txt",
}
HIGGSINO_SQRTS = 13

# Tails (module docstring): a printed value rounded coarser than this is not trusted, and
# each higgsino-like table continues with the shape of its wino counterpart (name, sqrts).
MAX_ROUNDING = 0.1
TAIL_SHAPES: dict[str, tuple[str, int]] = {
    "N2N1hino": ("N2C1p", 13), "N2C1phino": ("N2C1p", 13), "N2C1mhino": ("N2C1m", 13),
    "C1C1hino": ("C1C1", 13),
}

# Multiply a cross section in this unit by the factor to get pb.
_UNIT_TO_PB: dict[str, float] = {"ab": 1e-6, "fb": 1e-3, "pb": 1.0, "nb": 1e3}

# A unit attached to the cross-section column, e.g. "xsec [fb]", "Cross section (pb)",
# "cross-section [pb]", "Nominal (pb)".
_XSEC_UNIT_RE = re.compile(
    r"(?:xsec|cross[\s_-]*section|nominal)\s*[\[(]\s*(ab|fb|pb|nb)\s*[\])]", re.IGNORECASE
)
# Any bracketed unit, e.g. "[fb]", used only when it is the same everywhere.
_ANY_UNIT_RE = re.compile(r"[\[(]\s*(ab|fb|pb|nb)\s*[\])]", re.IGNORECASE)
# The energy named in a header, e.g. "13 TeV", "13TeVgluglu", "13 tev".
_SQRTS_RE = re.compile(r"(?<!\d)(8|13)\s*tev", re.IGNORECASE)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# A data row: mass, optional "GeV", cross section, then anything (uncertainties).
_ROW_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:GeV)?\s+({_NUMBER})(?:\s|$)", re.IGNORECASE)

# Particle ids (SPEC section 2).
GLUINO = 1000021
LIGHT_SQUARKS = (1000001, 1000002, 1000003, 1000004)
HEAVY_SQUARKS = (1000005, 2000005, 1000006, 2000006)
CHARGED_SLEPTONS = (1000011, 1000013, 1000015)
SNEUTRINOS = (1000012, 1000014, 1000016)
XZ1, XZ2, XZ3 = 1000022, 1000023, 1000025
XW1, XW2 = 1000024, 1000037
KNOWN_PIDS = frozenset(
    (GLUINO, XZ1, XZ2, XZ3, XW1, XW2)
    + LIGHT_SQUARKS
    + HEAVY_SQUARKS
    + CHARGED_SLEPTONS
    + SNEUTRINOS
)
# The light-squark table sums 5 flavours x 2 chiralities of degenerate squarks.
LIGHT_SQUARK_DEGENERACY = 10
# Charged partner -> its neutral partner in a wino-like doublet.
_EW_DOUBLETS = ((XW1, XZ2), (XW2, XZ3))


def xsec_dir() -> pathlib.Path:
    """Folder of the cross-section tables.

    The environment variable lets installed copies and tests point elsewhere; the
    default is the shared folder next to the repository, where developers and CI have it.
    """
    env = os.environ.get(XSEC_DIR_ENV)
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "xsec"
    path = Path(env).expanduser() if env else default.resolve()
    if not path.is_dir():
        source = f"${XSEC_DIR_ENV}={env!r}" if env else "the default location"
        raise XsecError(
            f"cross-section table folder {path} (from {source}) does not exist: set "
            f"${XSEC_DIR_ENV} to the folder holding xsec*.txt, or put the tables at "
            f"{default.resolve()} (<repository>/../shared/xsec)"
        )
    return path


def _header_unit(path: Path, header: list[str]) -> str:
    """The cross-section unit named in a header; raise if it is missing or ambiguous."""
    text = "\n".join(header)
    units = {u.lower() for u in _XSEC_UNIT_RE.findall(text)}
    if not units:
        # No unit attached to the cross-section column: accept a bracketed unit only
        # when it is the only one in the header.
        units = {u.lower() for u in _ANY_UNIT_RE.findall(text)}
    if len(units) != 1:
        found = ", ".join(sorted(units)) if units else "none"
        raise XsecError(
            f"{path}: cannot determine the cross-section unit from the header "
            f"(units found: {found}); the header must name it, e.g. '# mass [GeV] xsec [pb]'"
        )
    return units.pop()


@dataclass(frozen=True, eq=False)
class XsecTable:
    """One reference table, in pb, parsed from one file.

    Arrays are read-only because tables are cached and shared between callers.
    """

    path: Path
    sqrts: int
    masses: np.ndarray
    xsecs_pb: np.ndarray
    process: str = ""
    unit: str = "pb"
    #: per row, half a unit of the last printed digit relative to the value (see "Tails")
    rounding: np.ndarray | None = None
    _log_xsecs: np.ndarray = field(init=False, repr=False)
    #: the table whose mass dependence continues this one above its trusted end (else a line)
    tail_shape: "XsecTable | None" = None
    #: index of the last trusted row, and the slope in log(pb) per GeV of the line tail
    trusted_end: int = field(init=False)
    tail_slope: float = field(init=False)

    def __post_init__(self) -> None:
        masses = np.array(self.masses, dtype=float)
        xsecs = np.array(self.xsecs_pb, dtype=float)
        if masses.ndim != 1 or masses.shape != xsecs.shape or masses.size < 2:
            raise XsecError(f"{self.path}: need at least two (mass, xsec) rows of equal length")
        if np.any(np.diff(masses) <= 0):
            raise XsecError(f"{self.path}: masses must be strictly increasing")
        if not (np.all(np.isfinite(xsecs)) and np.all(xsecs > 0)):
            raise XsecError(f"{self.path}: cross sections must be finite and positive")
        log_xsecs = np.log(xsecs)
        rounding = np.zeros_like(xsecs) if self.rounding is None else np.array(self.rounding, dtype=float)
        end, slope = _tail(self.path, masses, log_xsecs, rounding)
        for arr in (masses, xsecs, log_xsecs, rounding):
            arr.setflags(write=False)
        object.__setattr__(self, "masses", masses)
        object.__setattr__(self, "xsecs_pb", xsecs)
        object.__setattr__(self, "_log_xsecs", log_xsecs)
        object.__setattr__(self, "rounding", rounding)
        object.__setattr__(self, "trusted_end", end)
        object.__setattr__(self, "tail_slope", slope)

    @classmethod
    def from_file(cls, path: Path, sqrts: int, process: str = "",
                  tail_shape: "XsecTable | None" = None) -> XsecTable:
        """Parse a table file; the header gives the unit so fb tables become pb.

        Comment lines (``#``) and blank lines are skipped; any other line must be a row
        ``mass [GeV] xsec ...``, otherwise the file is rejected with its line number,
        so a damaged table never yields a silently wrong cross section.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise XsecError(f"cannot read cross-section table {path}: {err}") from err
        header: list[str] = []
        masses: list[float] = []
        xsecs: list[float] = []
        rounding: list[float] = []
        for lineno, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                header.append(stripped)
                continue
            match = _ROW_RE.match(stripped)
            if match is None:
                raise XsecError(f"{path}:{lineno}: not a 'mass xsec ...' row: {stripped!r}")
            masses.append(float(match.group(1)))
            xsecs.append(float(match.group(2)))
            rounding.append(_last_digit(match.group(2)))
        unit = _header_unit(path, header)
        named = {int(s) for s in _SQRTS_RE.findall("\n".join(header))}
        if named and sqrts not in named:
            raise XsecError(
                f"{path}: header names sqrt(s) = {sorted(named)} TeV, expected {sqrts} TeV"
            )
        # a row's rounding: half a unit of the finest last digit in it or any later row
        finest = np.minimum.accumulate(np.asarray(rounding, dtype=float)[::-1])[::-1]
        rounding = list(0.5 * finest / np.abs(np.asarray(xsecs)))
        factor = _UNIT_TO_PB[unit]
        logger.debug("read %s: %d rows, unit %s, %s TeV", path, len(masses), unit, sqrts)
        return cls(
            path=path,
            sqrts=sqrts,
            masses=np.asarray(masses),
            xsecs_pb=np.asarray(xsecs) * factor,
            process=process,
            unit=unit,
            rounding=np.asarray(rounding),
            tail_shape=tail_shape,
        )

    def __call__(self, mass: float, extrapolate: bool = False) -> float:
        """Cross section (pb) at ``mass`` (GeV): log(sigma) linear in mass between rows up
        to the last trusted row, the tail above it (module docstring, "Tails"; also for
        untrusted rows inside the range).

        Outside the table's mass range this raises ``XsecError``, unless ``extrapolate``
        asks for the tail above it (below it: the line through the two lowest rows): no
        process disappears silently, and the caller decides.
        """
        lo, hi = float(self.masses[0]), float(self.masses[-1])
        end = float(self.masses[self.trusted_end])
        mass = float(mass)
        if lo <= mass <= end:
            return math.exp(float(np.interp(mass, self.masses, self._log_xsecs)))
        if (not extrapolate and not lo <= mass <= hi) or math.isnan(mass):
            raise XsecError(
                f"{self.path.name} ({self.process or 'cross-section table'}, {self.sqrts} TeV): "
                f"mass {mass:g} GeV is outside the table range [{lo:g}, {hi:g}] GeV"
            )
        if mass > end:  # the tail (module docstring)
            if mass > hi:
                logger.debug("%s: extrapolating to %g GeV above %g", self.path.name, mass, hi)
            at_end = float(self.xsecs_pb[self.trusted_end])
            if self.tail_shape is not None:
                shape = self.tail_shape
                # the shape's running minimum from the trusted end: a wiggle of the
                # reference (wino N2C1m rises by 0.3% at 1400 GeV) cannot make a tail rise
                between = (shape.masses > end) & (shape.masses < mass)
                now = min([shape(mass, True)] + [float(v) for v in shape.xsecs_pb[between]])
                return float(at_end * now / shape(end, True))
            return float(at_end * math.exp(self.tail_slope * (mass - end)))
        m0, m1 = float(self.masses[0]), float(self.masses[1])
        y0, y1 = float(self._log_xsecs[0]), float(self._log_xsecs[1])
        logger.debug("%s: extrapolating to %g GeV below %g", self.path.name, mass, lo)
        return math.exp(y0 + (y1 - y0) * (mass - m0) / (m1 - m0))


def _last_digit(text: str) -> float:
    """The unit of the last printed digit of ``text`` ("0.02" -> 0.01, "7.54E+04" -> 100)."""
    from decimal import Decimal, InvalidOperation

    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:
        return 0.0
    return 10.0 ** exponent if isinstance(exponent, int) else 0.0


def _tail(path: Path, masses: np.ndarray, log_xsecs: np.ndarray,
          rounding: np.ndarray) -> tuple[int, float]:
    """The last trusted row and the slope of the line tail through it and the row before
    (module docstring, "Tails").  Raises XsecError when that slope does not fall."""
    end = len(masses) - 1
    while end > 1 and (rounding[end] > MAX_ROUNDING or log_xsecs[end] >= log_xsecs[end - 1]):
        end -= 1
    slope = float((log_xsecs[end] - log_xsecs[end - 1]) / (masses[end] - masses[end - 1]))
    if not slope < 0:
        raise XsecError(f"{path}: the cross section does not fall at its last trusted row "
                        f"({masses[end]:g} GeV), so it cannot be extrapolated")
    return end, slope


@functools.lru_cache(maxsize=None)
def load_table(name: str, sqrts: int) -> XsecTable:
    """The table ``xsec<name><sqrts>.txt``, e.g. ``load_table("gluino", 13)``.

    Cached because walkers ask for cross sections at every step.
    """
    if sqrts not in SQRTS_VALUES:
        raise XsecError(f"no cross-section tables for sqrt(s) = {sqrts} TeV; have {SQRTS_VALUES}")
    path = xsec_dir() / _FILE_NAMES.get(name, "xsec{name}{sqrts}.txt").format(name=name, sqrts=sqrts)
    if not path.is_file():
        raise XsecError(
            f"cross-section table {path} not found (tables known: {', '.join(TABLE_PROCESSES)})"
        )
    shape = load_table(*TAIL_SHAPES[name]) if name in TAIL_SHAPES else None
    return XsecTable.from_file(path, sqrts, TABLE_PROCESSES.get(name, name), tail_shape=shape)


@functools.lru_cache(maxsize=None)
def _log_no_table(pid: int) -> None:
    """Say once per particle that it has no production table (called for its side effect)."""
    logger.debug("no pair-production table for pid %d (sneutrino): left out", pid)


def _pair(a: int, b: int) -> tuple[int, int]:
    """Process key: the signed PDG pair sorted ascending."""
    return (a, b) if a <= b else (b, a)


def reference_xsecs(masses: dict[int, float], sqrts: int,
                    extrapolate: bool = True) -> dict[tuple[int, int], float]:
    """Pair-production reference cross sections (pb) of all processes available.

    ``masses`` holds the unfrozen particles (pid -> mass in GeV).  Keys are the signed
    PDG pair sorted ascending, e.g. (-1000006, 1000006) for top-partner pair production,
    (1000021, 1000021) for gluino pairs, (-1000024, 1000023) and (1000023, 1000024) for
    XW1- XZ2 and XW1+ XZ2, (-1000024, 1000024) for XW1 pairs.  They are the keys of the
    model's signal-strength multipliers, so sigma(process) = reference x multiplier.

    The process list and its approximations are in the module docstring.  A mass outside
    a table's range gets the table's tail (module docstring, "Tails"; logged at debug
    level; proto-model masses reach 2400 GeV while several tables stop at 2000 GeV or
    below), or raises :class:`XsecError` if ``extrapolate`` is False; an unknown pid
    always raises.
    """
    unknown = sorted(set(masses) - KNOWN_PIDS)
    if unknown:
        raise XsecError(f"unknown particle ids {unknown}; known: {sorted(KNOWN_PIDS)}")
    out: dict[tuple[int, int], float] = {}
    for pid in sorted(masses):
        mass = masses[pid]
        if pid == GLUINO:
            out[(pid, pid)] = load_table("gluino", sqrts)(mass, extrapolate)
        elif pid in LIGHT_SQUARKS:
            out[(-pid, pid)] = load_table("squark", sqrts)(mass, extrapolate) / LIGHT_SQUARK_DEGENERACY
        elif pid in HEAVY_SQUARKS:
            out[(-pid, pid)] = load_table("stop", sqrts)(mass, extrapolate)
        elif pid in CHARGED_SLEPTONS:
            out[(-pid, pid)] = load_table("slepslep", sqrts)(mass, extrapolate)
        elif pid in SNEUTRINOS:
            _log_no_table(pid)
        elif pid in (XW1, XW2):
            out[(-pid, pid)] = load_table("C1C1", sqrts)(mass, extrapolate)
    for charged, neutral in _EW_DOUBLETS:
        if charged in masses and neutral in masses:
            mean = 0.5 * (masses[charged] + masses[neutral])
            out[_pair(neutral, charged)] = load_table("N2C1p", sqrts)(mean, extrapolate)
            out[_pair(-charged, neutral)] = load_table("N2C1m", sqrts)(mean, extrapolate)
    if sqrts == HIGGSINO_SQRTS:
        out.update(_higgsino_like(masses, sqrts, extrapolate))
    return out


def _higgsino_like(masses: dict[int, float], sqrts: int,
                   extrapolate: bool) -> dict[tuple[int, int], float]:
    """The electroweak pairs served by the higgsino-like tables (module docstring)."""
    out: dict[tuple[int, int], float] = {}

    def mean(a: int, b: int) -> float:
        return 0.5 * (masses[a] + masses[b])

    neutral = [pid for pid in (XZ1, XZ2, XZ3) if pid in masses]
    for i, a in enumerate(neutral):
        for b in neutral[i:]:
            if a != XZ1 or b != XZ1:
                out[_pair(a, b)] = load_table("N2N1hino", sqrts)(mean(a, b), extrapolate)
    wino_like = set(_EW_DOUBLETS)
    for charged in (XW1, XW2):
        for neutral_pid in (XZ1, XZ2, XZ3):
            if charged in masses and neutral_pid in masses and (charged, neutral_pid) not in wino_like:
                m = mean(charged, neutral_pid)
                out[_pair(neutral_pid, charged)] = load_table("N2C1phino", sqrts)(m, extrapolate)
                out[_pair(-charged, neutral_pid)] = load_table("N2C1mhino", sqrts)(m, extrapolate)
    if XW1 in masses and XW2 in masses:
        half = 0.5 * load_table("C1C1hino", sqrts)(mean(XW1, XW2), extrapolate)
        out[_pair(-XW2, XW1)] = half
        out[_pair(-XW1, XW2)] = half
    return out


def effective_xsecs(model: "ProtoModel") -> "Xsecs":
    """Cross sections (pb) per (sqrts in TeV, process) of ``model`` with its
    signal-strength multipliers applied: the SLHA file's own where it gave them, else the
    reference tables (``reference_xsecs``)."""
    if model.xsecs is not None:
        base = dict(model.xsecs)
    else:
        base = {(s, key): value for s in SQRTS_VALUES
                for key, value in reference_xsecs(model.masses, s).items()}
    return {key: value * model.multiplier(key[1]) for key, value in base.items()}
