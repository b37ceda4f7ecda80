"""SLHA text as written: blocks, DECAY tables and XSECTION blocks, with line numbers.

The project's own reader of the SLHA format (Skands et al., hep-ph/0311123; the XSECTION
block of the SModelS / Les Houches 2013 extension, arXiv:1403.4271), used for every file a
user gives us instead of pyslha, for three reasons measured on real files
(``../shared/cases``):

- pyslha silently skips XSECTION value lines that start in column 1, so such a file reads
  no cross section at all; here the line's place (after an XSECTION header) decides, not
  its indentation;
- pyslha's own errors (``AccessError: Tried to set a unique value...`` for a stray
  character in a PDG code) name no block or entry; here every problem is an ``SLHAError``
  with one line naming the file, line, block, entry and value;
- the document keeps every XSECTION line (several of one order, e.g. scale variations),
  so the caller decides how to resolve them instead of "the last line wins".

The reader knows the syntax only: which blocks mean what (MASS, DECAY, XSECTION, QNUMBERS,
the project's SSM) is for ``slha`` (proto-models) and ``general`` (any model).  Keywords
and block names are case-insensitive, comments (``#``) may follow anything, tabs and CRLF
line ends are blanks.  Blocks the project does not read are kept as raw lines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .exceptions import SLHAError

#: The first line of every file the project writes (``slha.to_slha``).
MARKER = "# SLHA file written by protomodels"
#: Numbers as Fortran and C print them (Python's ``float`` would also take '1_5', 'nan'
#: and non-ASCII digits, none of which a spectrum generator writes).
_REAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")  # [0-9], not \d: \d also takes non-ASCII digits
NEGATIVE_BR_TOLERANCE = 1e-6  # generators write BRs like -1e-10: read as 0


@dataclass
class BlockLine:
    """One data line of a BLOCK: its tokens (comment removed) and line number (1-based)."""

    tokens: List[str]
    line: int


@dataclass
class Block:
    """A BLOCK as written: its name, header arguments and data lines."""

    name: str  # upper case
    line: int
    argument: List[str] = field(default_factory=list)  # e.g. QNUMBERS' pid, or Q= scale
    lines: List[BlockLine] = field(default_factory=list)


@dataclass
class DecayChannel:
    """One decay line: BR, daughter PDG codes (signed, as written), line number."""

    br: float
    daughters: Tuple[int, ...]
    line: int


@dataclass
class DecayTable:
    """A DECAY table: the particle's signed PDG code, total width (GeV), channels."""

    pid: int
    width: float  # GeV
    line: int
    channels: List[DecayChannel] = field(default_factory=list)


@dataclass
class XsecLine:
    """One cross-section value: sqrts (GeV), the final state, QCD order, value (pb)."""

    sqrts_gev: float
    initial: Tuple[int, int]
    final: Tuple[int, ...]
    order: int
    value_pb: float
    line: int
    code: str = ""


@dataclass
class SLHADocument:
    """A parsed SLHA file: what was written, nothing interpreted (module docstring)."""

    path: str
    header: List[str]  # comment lines before the first block
    blocks: Dict[str, Block]  # upper-case name -> block (QNUMBERS live in ``qnumbers``)
    qnumbers: Dict[int, Block]  # |pid| -> its QNUMBERS block
    decays: Dict[int, DecayTable]
    xsections: List[XsecLine]

    @property
    def written_by_protomodels(self) -> bool:
        return bool(self.header) and " ".join(self.header[0].split()) == MARKER

    def error(self, line: int, message: str) -> SLHAError:
        return SLHAError(f"{self.path}:{line}: {message}")


def read_document(path) -> SLHADocument:
    """Parse the SLHA file ``path``.  SLHAError (one line: file, line, block, entry, value)
    for a missing or unreadable file and for any syntax the format does not allow."""
    path = Path(path)
    if path.is_dir():
        raise SLHAError(f"{path}: is a directory, not an SLHA file")
    if not path.is_file():
        raise SLHAError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SLHAError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_document(text, str(path))


def parse_document(text: str, path: str = "<text>") -> SLHADocument:
    """Parse SLHA ``text``; ``path`` names it in errors (see ``read_document``)."""
    doc = SLHADocument(path=path, header=[], blocks={}, qnumbers={}, decays={}, xsections=[])
    context: Optional[object] = None  # Block, DecayTable, XSECTION header tuple, or "skip"
    seen_data = False
    for number, raw_line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n")
                                      .split("\n"), start=1):
        content, _, comment = raw_line.partition("#")
        tokens = content.split()
        if not tokens:
            if not seen_data and raw_line.strip().startswith("#"):
                doc.header.append(raw_line.strip())
            continue
        seen_data = True
        keyword = tokens[0].upper()
        if keyword == "BLOCK":
            context = _open_block(doc, tokens, number)
        elif keyword in ("DECAY", "DECAY1L"):
            context = _open_decay(doc, tokens, number) if keyword == "DECAY" else "skip"
        elif keyword == "XSECTION":
            context = _open_xsection(doc, tokens, number)
        elif context is None:
            raise doc.error(number, f"data line {content.strip()!r} outside any BLOCK, DECAY "
                                    "or XSECTION")
        elif context == "skip":
            continue
        elif isinstance(context, Block):
            context.lines.append(BlockLine(tokens, number))
        elif isinstance(context, DecayTable):
            context.channels.append(_decay_channel(doc, context, tokens, number))
        else:
            doc.xsections.append(_xsec_value(doc, context, tokens, number, comment))
    return doc


def _number(doc: SLHADocument, line: int, token: str, what: str) -> float:
    if not _REAL.match(token):
        raise doc.error(line, f"{what} is {token!r}, not a number")
    value = float(token)
    if math.isinf(value):
        raise doc.error(line, f"{what} is {token!r}, not a finite number")
    return value


def parse_integer(doc: SLHADocument, line: int, token: str, what: str) -> int:
    """``token`` as an integer (also written as a float, e.g. 1.000022E+06, as some tools
    do); SLHAError naming ``what`` otherwise."""
    if _INTEGER.match(token):
        return int(token)
    if _REAL.match(token):
        value = float(token)
        if math.isfinite(value) and value == int(value):
            return int(value)
    raise doc.error(line, f"{what} is {token!r}, not an integer")



def _open_block(doc: SLHADocument, tokens: List[str], line: int) -> Block:
    if len(tokens) < 2:
        raise doc.error(line, "BLOCK without a name")
    name = tokens[1].upper()
    block = Block(name=name, line=line, argument=tokens[2:])
    if name == "QNUMBERS":
        if not block.argument:
            raise doc.error(line, "BLOCK QNUMBERS without a particle id")
        pid = abs(parse_integer(doc, line, block.argument[0], "BLOCK QNUMBERS particle id"))
        if pid in doc.qnumbers:
            raise doc.error(line, f"BLOCK QNUMBERS {pid} appears twice (first at line "
                                  f"{doc.qnumbers[pid].line})")
        doc.qnumbers[pid] = block
        return block
    if name in doc.blocks:
        raise doc.error(line, f"BLOCK {name} appears twice (first at line "
                              f"{doc.blocks[name].line})")
    doc.blocks[name] = block
    return block


def _open_decay(doc: SLHADocument, tokens: List[str], line: int) -> DecayTable:
    if len(tokens) < 3:
        raise doc.error(line, f"DECAY line {' '.join(tokens)!r}: expected DECAY <pid> <width>")
    pid = parse_integer(doc, line, tokens[1], "DECAY particle id")
    width = _number(doc, line, tokens[2], f"DECAY {pid} total width")
    if width < 0:
        raise doc.error(line, f"DECAY {pid} total width is {tokens[2]}, negative")
    if pid in doc.decays:
        raise doc.error(line, f"DECAY {pid} appears twice (first at line {doc.decays[pid].line})")
    table = DecayTable(pid=pid, width=width, line=line)
    doc.decays[pid] = table
    return table


def _decay_channel(doc: SLHADocument, table: DecayTable, tokens: List[str],
                   line: int) -> DecayChannel:
    where = f"DECAY {table.pid}"
    if len(tokens) < 3:
        raise doc.error(line, f"{where} line {' '.join(tokens)!r}: expected <BR> <NDA> <ids>")
    br = _number(doc, line, tokens[0], f"{where} branching ratio")
    if -NEGATIVE_BR_TOLERANCE <= br < 0:
        br = 0.0
    if br < 0 or br > 1 + 1e-6:
        raise doc.error(line, f"{where} branching ratio is {tokens[0]}, outside [0, 1]")
    nda = parse_integer(doc, line, tokens[1], f"{where} number of daughters")
    if nda < 1 or len(tokens) != 2 + nda:
        raise doc.error(line, f"{where} channel {' '.join(tokens[2:])!r}: NDA {tokens[1]} "
                              f"does not match {len(tokens) - 2} daughter ids")
    daughters = tuple(parse_integer(doc, line, t, f"{where} daughter id") for t in tokens[2:])
    return DecayChannel(br=br, daughters=daughters, line=line)


def _open_xsection(doc: SLHADocument, tokens: List[str], line: int):
    if len(tokens) < 6:
        raise doc.error(line, f"XSECTION line {' '.join(tokens)!r}: expected XSECTION <sqrts> "
                              "<id1> <id2> <n> <final ids>")
    sqrts = _number(doc, line, tokens[1], "XSECTION sqrts (GeV)")
    if sqrts <= 0:
        raise doc.error(line, f"XSECTION sqrts is {tokens[1]}, not positive")
    initial = (parse_integer(doc, line, tokens[2], "XSECTION initial id"),
               parse_integer(doc, line, tokens[3], "XSECTION initial id"))
    n_final = parse_integer(doc, line, tokens[4], "XSECTION number of final-state particles")
    if n_final < 1 or len(tokens) != 5 + n_final:
        raise doc.error(line, f"XSECTION final state {' '.join(tokens[5:])!r} does not match "
                              f"its count {tokens[4]}")
    final = tuple(parse_integer(doc, line, t, "XSECTION final-state id") for t in tokens[5:])
    return (sqrts, initial, final, line)


def _xsec_value(doc: SLHADocument, header, tokens: List[str], line: int,
                comment: str) -> XsecLine:
    sqrts, initial, final, header_line = header
    where = f"XSECTION {' '.join(str(p) for p in final)} (line {header_line})"
    if len(tokens) < 7:
        raise doc.error(line, f"{where} value line {' '.join(tokens)!r}: expected <scale> "
                              "<QCD order> <EW order> <kappa_f> <kappa_r> <PDF> <value> [code]")
    order = parse_integer(doc, line, tokens[1], f"{where} QCD order")
    value = _number(doc, line, tokens[6], f"{where} value (pb)")
    if value < 0:
        raise doc.error(line, f"{where} value is {tokens[6]} pb, negative")
    code = " ".join(tokens[7:]) or comment.strip()
    return XsecLine(sqrts_gev=sqrts, initial=initial, final=final, order=order,
                    value_pb=value, line=line, code=code)


def mass_entries(doc: SLHADocument) -> Dict[int, Tuple[float, int]]:
    """The MASS block as pid -> (mass in GeV as written, line).  SLHAError for a missing
    block, an entry that is not '<pid> <mass>', or a pid given twice."""
    block = doc.blocks.get("MASS")
    if block is None:
        raise SLHAError(f"{doc.path}: no MASS block")
    masses: Dict[int, Tuple[float, int]] = {}
    for entry in block.lines:
        if len(entry.tokens) != 2:
            raise doc.error(entry.line, f"BLOCK MASS entry {' '.join(entry.tokens)!r}: "
                                        "expected <pid> <mass>")
        key = entry.tokens[0]
        pid = parse_integer(doc, entry.line, key, f"BLOCK MASS entry {key!r}: the particle id")
        mass = _number(doc, entry.line, entry.tokens[1], f"BLOCK MASS entry {pid}: the mass")
        if pid in masses:
            raise doc.error(entry.line, f"BLOCK MASS entry {pid} appears twice (first at line "
                                        f"{masses[pid][1]})")
        masses[pid] = (mass, entry.line)
    return masses


def ssm_entries(doc: SLHADocument) -> Dict[Tuple[int, ...], float]:
    """The project's SSM block (signal-strength multipliers): sorted (pid, pid) -> value;
    empty without the block.  SLHAError for a malformed entry."""
    block = doc.blocks.get("SSM")
    ssm: Dict[Tuple[int, ...], float] = {}
    if block is None:
        return ssm
    for entry in block.lines:
        if len(entry.tokens) < 3:
            raise doc.error(entry.line, f"BLOCK SSM entry {' '.join(entry.tokens)!r}: expected "
                                        "<pid> <pid> <multiplier>")
        a = parse_integer(doc, entry.line, entry.tokens[0], "BLOCK SSM particle id")
        b = parse_integer(doc, entry.line, entry.tokens[1], "BLOCK SSM particle id")
        value = _number(doc, entry.line, entry.tokens[2], f"BLOCK SSM entry {a} {b}")
        if value < 0:
            raise doc.error(entry.line, f"BLOCK SSM entry {a} {b} is {entry.tokens[2]}: a "
                                        "multiplier must be a finite number >= 0")
        ssm[tuple(sorted((a, b)))] = value
    return ssm


def resolved_xsections(doc: SLHADocument) -> Dict[Tuple[float, Tuple[int, ...]], Tuple[XsecLine, int]]:
    """The cross section SModelS uses per (sqrts in TeV, sorted final state): of the
    highest QCD order, the largest of its lines (``smodels.base.crossSection``:
    ``removeDuplicates`` then ``removeLowerOrder``), never the line order; with the number
    of lines of that order.  sqrts is an int where it is one (8, 13; 13.6 stays 13.6)."""
    chosen: Dict[Tuple[float, Tuple[int, ...]], Tuple[XsecLine, int]] = {}
    for x in doc.xsections:
        sqrts = x.sqrts_gev / 1000.0
        key = (int(round(sqrts)) if abs(sqrts - round(sqrts)) < 1e-5 else sqrts,
               tuple(sorted(x.final)))
        current = chosen.get(key)
        if current is None or x.order > current[0].order:
            chosen[key] = (x, 1)
        elif x.order == current[0].order:
            best = x if x.value_pb > current[0].value_pb else current[0]
            chosen[key] = (best, current[1] + 1)
    return chosen
