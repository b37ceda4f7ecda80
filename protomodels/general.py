"""Any SLHA file SModelS takes, scored with the physics it contains (issue 13).

A file is a *proto-model* (``slha.read_slha``: the walker's model space, with its
channel menus, walls and prompt decays) only if it carries the project's marker
(``slha_document.MARKER``) and reads back exactly (``is_proto_model``).  Every other file
is a ``GeneralModel``: SModelS gets its own masses (absolute values: a negative mass
eigenvalue is the SLHA sign convention of a CP phase), total widths (SModelS' prompt and
stable thresholds, 1e-11 and 1e-25 GeV, decide what is prompt, long-lived or stable, so
HSCP, R-hadron, disappearing-track and displaced results apply), decays, QNUMBERS blocks
and XSECTION blocks, through ``predictor.predict_slha_text``; the critic, combiner and K
are the walker's.

Cross sections follow SModelS (``smodels.base.crossSection.getXsecFromSLHAFile`` then
``XSectionList.removeLowerOrder``): per process and sqrts the highest QCD order, and of
several lines of that order (scale or PDF variations) the largest value, whatever the
line order.  A file without any XSECTION block gets the reference tables' cross sections,
and only for gluinos and the squarks of the walker's tables (their production does not
depend on mixing); electroweak states, right-handed light squarks and sleptons then get
none, and the report names every such particle rather than guess a wino or higgsino
table for an unknown mixture.

The prior (SPEC section 5, the paper's exp(-(N_p/2 + N_BR/4 + N_ssm/8))) counts:
N_p the BSM particles other than the LSP that are produced (a cross section above 0) or
appear in the decay chain of a produced particle, so decoupled states (parked at 5-10
TeV without a cross section) do not count; N_BR per counted particle its distinct
non-zero BRs minus one (``significance.BR_TOLERANCE``); N_ssm the distinct multipliers of
the produced processes, 1 unless the project's SSM block says otherwise.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Set, Tuple

from .exceptions import SLHAError
from .slha_document import (SLHADocument, mass_entries, parse_integer, read_document,
                            resolved_xsections, ssm_entries)

PROMPT_WIDTH_GEV = 1e-11  # SModelS' default: wider decays are prompt
STABLE_WIDTH_GEV = 1e-25  # SModelS' default: narrower particles are stable
DECOUPLED_GEV = 5000.0  # heavier states that nothing produces are left out of the report
BSM_PID = 1000000  # |pid| at and above: BSM (SUSY numbering); QNUMBERS add others
#: SModelS' MSSM also has the heavy Higgs bosons (H0, A0, H+): BSM, but Z2-even, so never
#: the LSP; decays into them are kept (they decay on to SM particles).
HEAVY_HIGGS = (35, 36, 37)
#: Particles whose reference cross sections do not depend on mixing (module docstring).
STRONG = (1000001, 1000002, 1000003, 1000004, 1000005, 2000005, 1000006, 2000006, 1000021)
GRAVITINO = 1000039
#: SModelS' Standard Model particles (``smodels.share.models.SMparticles.SMList``): a
#: QNUMBERS block for one of them does not make it BSM (SModelS ignores such blocks).
SM_PIDS = frozenset((1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25, 111, 211))
#: QNUMBERS entries (SLHA 2 / MadGraph): 1 = 3 x charge, 2 = 2S + 1, 3 = colour, 4 = has
#: a distinct antiparticle (0/1); the allowed values of 3 and 4.
COLOURS = (1, 3, -3, 6, -6, 8)

XsecKey = Tuple[float, Tuple[int, ...]]  # (sqrts in TeV, sorted final-state pids)
Channels = List[Tuple[float, Tuple[int, ...]]]  # (BR, signed daughter pids)


@dataclass
class ProcessXsec:
    """The cross section SModelS uses for one process at one sqrts."""

    value_pb: float
    order: int  # QCD order (0 LO, 1 NLO, 2 NLO+NLL, ...); -1 for reference tables
    source: str  # "XSECTION line N" or "reference table"
    lines: int = 1  # how many lines of that order the file had


@dataclass
class GeneralModel:
    """A model as SModelS sees it (module docstring).  Masses in GeV (absolute values, by
    |pid|); decay tables by the signed pid they were written for (SModelS conjugates a
    table for the antiparticle that has none), with their total widths in GeV; cross
    sections in pb; ``ssm``: the project's SSM block (prior counting only)."""

    path: str
    masses: Dict[int, float]
    widths: Dict[int, float]
    decays: Dict[int, Channels]
    xsecs: Dict[XsecKey, ProcessXsec]
    qnumbers: Dict[int, List[str]]  # |pid| -> its QNUMBERS block, as SLHA text for SModelS
    ssm: Dict[Tuple[int, ...], float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def channels(self, pid: int) -> Channels:
        """The decays of |pid| (its own table, else its antiparticle's)."""
        return self.decays.get(abs(pid), self.decays.get(-abs(pid), []))

    @property
    def lsp(self) -> int:
        """The lightest Z2-odd particle; of equal masses the one without decays, then the
        lower pid."""
        odd = [p for p in self.masses if p not in HEAVY_HIGGS] or list(self.masses)
        return min(odd, key=lambda p: (self.masses[p], bool(self.channels(p)), p))

    def produced(self) -> Set[int]:
        """|pid| of particles with a cross section above ``significance.MIN_XSEC_FB``."""
        from .significance import MIN_XSEC_FB

        return {abs(p) for (_, final), x in self.xsecs.items()
                if x.value_pb * 1000.0 > MIN_XSEC_FB for p in final}

    def in_chains(self) -> Set[int]:
        """|pid| of the produced BSM particles and every BSM particle in their decay chains."""
        seen: Set[int] = set()
        todo = [p for p in self.produced() if p in self.masses]
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            for table in (self.decays.get(pid, []), self.decays.get(-pid, [])):
                todo.extend(abs(d) for br, daughters in table if br > 0 for d in daughters
                            if abs(d) in self.masses and abs(d) not in seen)
        return seen

    def long_lived(self) -> Dict[int, str]:
        """Particles in a decay chain that SModelS does not treat as prompt: |pid| ->
        'stable' (width below 1e-25 GeV, or no decay channel) or 'long-lived'; the LSP
        is left out (stable by definition: the missing energy)."""
        kinds: Dict[int, str] = {}
        lsp = self.lsp
        for pid in sorted(self.in_chains()):
            if pid == lsp:
                continue
            width = self.widths.get(pid, self.widths.get(-pid, 0.0))
            if width < STABLE_WIDTH_GEV or not self.channels(pid):
                kinds[pid] = "stable"
            elif width < PROMPT_WIDTH_GEV:
                kinds[pid] = "long-lived"
        return kinds

    def without_xsec(self) -> List[int]:
        """Z2-odd particles other than the LSP, below 5 TeV, that no process produces and no
        produced particle decays to: states the file may mean to be produced (e.g.
        electroweak ones in a file without XSECTION blocks) but SModelS will not see."""
        reached, lsp = self.in_chains(), self.lsp
        return sorted(p for p in self.masses if p != lsp and p not in reached
                      and p not in HEAVY_HIGGS and self.masses[p] < DECOUPLED_GEV)

    def multiplier(self, final: Tuple[int, ...]) -> float:
        """The SSM block's multiplier of the process with this final state (default 1)."""
        return self.ssm.get(tuple(sorted(final)), 1.0)

    def prior_terms(self) -> Dict[str, int]:
        """N_p, N_BR, N_ssm as the module docstring counts them."""
        from .significance import BR_TOLERANCE, MIN_XSEC_FB, SSM_TOLERANCE, _distinct

        counted = self.in_chains() - {self.lsp}
        n_brs = 0
        for pid in counted:
            nonzero = [br for br, _ in self.channels(pid) if br > 1e-9]
            n_brs += max(_distinct(nonzero, BR_TOLERANCE) - 1, 0)
        multipliers = {final: self.multiplier(final) for (_, final), x in self.xsecs.items()
                       if x.value_pb * 1000.0 > MIN_XSEC_FB}
        n_ssm = _distinct(list(multipliers.values()), SSM_TOLERANCE)
        return {"particles": len(counted), "brs": n_brs, "ssms": n_ssm}

    def smodels_text(self) -> str:
        """The SLHA text SModelS reads: masses (absolute), the decay tables as written with
        their widths, one XSECTION line per process and sqrts (the resolved one; reference
        values times the SSM multipliers, a file's own values as given), QNUMBERS blocks.
        Value lines are indented, so SModelS' pyslha reads them whatever the file did."""
        lines = [f"# {self.path}: as protomodels gives it to SModelS", "BLOCK MASS"]
        lines += [f"  {pid:>9d}  {mass!r}" for pid, mass in sorted(self.masses.items())]
        for pid in sorted(self.masses):
            if pid not in self.decays and -pid not in self.decays:
                lines.append(f"DECAY {pid:>9d}  0.0")
        for pid, table in sorted(self.decays.items()):
            lines.append(f"DECAY {pid:>9d}  {self.widths[pid]!r}")
            for br, daughters in table:
                ids = " ".join(f"{d:>9d}" for d in daughters)
                lines.append(f"   {br!r}  {len(daughters)}  {ids}")
        for pid, block in sorted(self.qnumbers.items()):
            lines += block
        for (sqrts, final), x in sorted(self.xsecs.items()):
            value = x.value_pb * (self.multiplier(final) if x.order < 0 else 1.0)
            if value <= 0:
                continue
            lines.append(f"XSECTION  {sqrts * 1000.0:.1f}  2212 2212 {len(final)} "
                         + " ".join(str(p) for p in final))
            lines.append(f"  0  {max(x.order, 0)}  0  0  0  0  {value!r}  protomodels")
        return "\n".join(lines) + "\n"

    def smodels_particles(self) -> List[Any]:
        """SModelS' MSSM particles plus the gravitino and every QNUMBERS-defined state
        (SModelS' own QNUMBERS reader), for ``predictor.decompose``.  SLHAError if a state
        SModelS does not know (no QNUMBERS block) is produced, in a decay chain or the
        LSP: SModelS would drop it and every decay into it."""
        from smodels.base.particle import Particle
        from smodels.share.models import mssm

        particles = list(mssm.BSMList)
        known = {abs(p.pdg) for p in particles if isinstance(p.pdg, int)}
        if GRAVITINO in self.masses and GRAVITINO not in known and GRAVITINO not in self.qnumbers:
            particles.append(Particle(isSM=False, label="gravitino", pdg=GRAVITINO, eCharge=0,
                                      colordim=1, spin=1.5))
            known.add(GRAVITINO)
        unknown = sorted(p for p in self.masses if p not in known and p not in self.qnumbers)
        reached = self.in_chains() | {self.lsp}
        used = [p for p in unknown if p in reached]
        if used:
            raise SLHAError(f"{self.path}: BLOCK MASS entry {used[0]} is not a particle of "
                            "SModelS' MSSM and has no QNUMBERS block; SModelS would drop it "
                            "and every decay into it: add a QNUMBERS block")
        for pid in unknown:
            note = f"{pid} is unknown to SModelS (no QNUMBERS block) and not produced: ignored"
            if note not in self.notes:
                self.notes.append(note)
        extra = {pid: block for pid, block in self.qnumbers.items() if pid not in known}
        if extra:
            from smodels.tools.particlesLoader import getParticlesFromSLHA

            with tempfile.NamedTemporaryFile("w", suffix=".slha", delete=False) as handle:
                handle.write("\n".join(line for block in extra.values() for line in block) + "\n")
            try:
                particles += getParticlesFromSLHA(handle.name)
            except Exception as error:  # SModelS' reader of blocks we already checked
                raise SLHAError(f"{self.path}: SModelS cannot read the QNUMBERS blocks "
                                f"({type(error).__name__}: {error})") from None
            finally:
                os.unlink(handle.name)
        return particles

    def report(self) -> Dict[str, Any]:
        """What ``significance --json`` adds for a general model (``model``)."""
        from .model import NAMES

        return {
            "lsp": self.lsp,
            "prior_counted": sorted(self.in_chains() - {self.lsp}),
            "long_lived": {str(p): k for p, k in sorted(self.long_lived().items())},
            "xsec_sources": [{"sqrts_tev": s, "process": list(final), "pb": x.value_pb,
                              "qcd_order": x.order, "source": x.source,
                              **({"lines_of_that_order": x.lines} if x.lines > 1 else {})}
                             for (s, final), x in sorted(self.xsecs.items())],
            "without_xsec": [{"pid": p, "name": NAMES.get(p, str(p)), "mass_gev": self.masses[p]}
                             for p in self.without_xsec()],
            "notes": list(self.notes),
        }


def from_document(doc: SLHADocument) -> GeneralModel:
    """A ``GeneralModel`` from a parsed SLHA document.  SLHAError (one line: file, line,
    block, entry, value) for a file SModelS could not take either: no BSM particle, a
    decay or cross section of a particle without a mass, BRs far from summing to 1, a
    malformed QNUMBERS block."""
    entries = mass_entries(doc)
    bsm = ({abs(pid) for pid in entries if abs(pid) >= BSM_PID or abs(pid) in HEAVY_HIGGS}
           | {p for p in doc.qnumbers if p not in SM_PIDS})
    masses = {abs(pid): abs(mass) for pid, (mass, _) in entries.items() if abs(pid) in bsm}
    if not any(p not in HEAVY_HIGGS for p in masses):
        raise SLHAError(f"{doc.path}: BLOCK MASS has no BSM particle (|PDG| >= {BSM_PID} or "
                        "defined by a QNUMBERS block)")
    notes: List[str] = []
    widths: Dict[int, float] = {}
    decays: Dict[int, Channels] = {}
    for pid, table in doc.decays.items():
        if abs(pid) not in masses:
            if abs(pid) >= BSM_PID:
                notes.append(f"DECAY {pid} (line {table.line}) has no entry in BLOCK MASS: "
                             "ignored")
            continue  # SM decays: SModelS does not use them
        total = sum(c.br for c in table.channels)
        if table.channels and abs(total - 1.0) > 0.01:
            raise doc.error(table.line, f"DECAY {pid}: branching ratios sum to {total:.4g}, "
                                        "not 1")
        for channel in table.channels:
            for d in channel.daughters:
                if abs(d) >= BSM_PID and abs(d) not in masses:
                    raise doc.error(channel.line, f"DECAY {pid} daughter {d} has no entry in "
                                                  "BLOCK MASS")
        widths[pid] = table.width
        decays[pid] = [(c.br, c.daughters) for c in table.channels]
    xsecs, xsec_notes = _resolve_xsecs(doc, masses)
    qnumbers = {pid: _qnumbers_text(doc, pid) for pid in doc.qnumbers if pid not in SM_PIDS}
    model = GeneralModel(path=doc.path, masses=masses, widths=widths, decays=decays,
                         xsecs=xsecs, qnumbers=qnumbers, ssm=ssm_entries(doc),
                         notes=notes + xsec_notes)
    lsp = model.lsp
    for pid in sorted(model.in_chains()):
        if pid not in decays and -pid not in decays and pid != lsp:
            model.notes.append(f"{pid} has no DECAY block: SModelS treats it as stable")
    return model


def _qnumbers_text(doc: SLHADocument, pid: int) -> List[str]:
    """A QNUMBERS block, checked, as SModelS' reader needs it: every line ends in a comment
    (its ``getParticlesFromSLHA`` cuts each line at ``find('#')``, so a line without one
    loses its last character), and the header names the particle."""
    block = doc.qnumbers[pid]
    entries: Dict[int, int] = {}
    for entry in block.lines:
        if len(entry.tokens) != 2:
            raise doc.error(entry.line, f"BLOCK QNUMBERS {pid} entry {' '.join(entry.tokens)!r}:"
                                        " expected <index> <value>")
        index = parse_integer(doc, entry.line, entry.tokens[0], f"BLOCK QNUMBERS {pid} index")
        value = parse_integer(doc, entry.line, entry.tokens[1],
                              f"BLOCK QNUMBERS {pid} entry {index}")
        if index in entries:
            raise doc.error(entry.line, f"BLOCK QNUMBERS {pid} entry {index} appears twice")
        entries[index] = value
    missing = sorted({1, 2, 3, 4} - set(entries))
    if missing:
        raise doc.error(block.line, f"BLOCK QNUMBERS {pid} lacks entries {missing} (1: 3 x "
                                    "charge, 2: 2S+1, 3: colour, 4: distinct antiparticle)")
    for index, allowed, meaning in ((2, entries[2] >= 1, "2S+1 >= 1"),
                                    (3, entries[3] in COLOURS, f"colour in {list(COLOURS)}"),
                                    (4, entries[4] in (0, 1), "0 or 1")):
        if not allowed:
            raise doc.error(block.line, f"BLOCK QNUMBERS {pid} entry {index} is "
                                        f"{entries[index]}, expected {meaning}")
    return ([f"BLOCK QNUMBERS {pid}  # X{pid}"]
            + [f"   {i}  {v}  #" for i, v in sorted(entries.items())])


def _resolve_xsecs(doc: SLHADocument, masses: Dict[int, float]
                   ) -> Tuple[Dict[XsecKey, ProcessXsec], List[str]]:
    """Per process and sqrts: the highest QCD order, of it the largest value, any initial
    state (as SModelS); reference values for gluinos and squarks without XSECTION blocks."""
    notes: List[str] = []
    for x in doc.xsections:
        if any(abs(p) >= BSM_PID and abs(p) not in masses for p in x.final):
            raise doc.error(x.line, f"XSECTION {' '.join(map(str, x.final))}: particle without "
                                    "an entry in BLOCK MASS")
        if x.initial != (2212, 2212):
            notes.append(f"XSECTION at line {x.line}: initial state {x.initial} is not pp; "
                         "used as SModelS does (it ignores the initial state)")
    chosen = {key: ProcessXsec(x.value_pb, x.order, f"XSECTION line {x.line}", lines)
              for key, (x, lines) in resolved_xsections(doc).items()}
    for x in chosen.values():
        if x.lines > 1:
            notes.append(f"{x.lines} lines of one QCD order for one process: the largest, "
                         f"{x.source}, is used (as SModelS does)")
    if not doc.xsections:
        chosen = _reference_strong(masses)
        notes.append("no XSECTION block: reference cross sections for gluinos and squarks "
                     "only (electroweak production depends on mixing the file does not give)")
    return chosen, notes


def _reference_strong(masses: Dict[int, float]) -> Dict[XsecKey, ProcessXsec]:
    from .xsec import reference_xsecs

    strong = {pid: m for pid, m in masses.items() if pid in STRONG and m < DECOUPLED_GEV}
    out: Dict[XsecKey, ProcessXsec] = {}
    if not strong:
        return out
    for sqrts in (8, 13):
        for final, value in reference_xsecs(strong, sqrts).items():
            out[(sqrts, tuple(sorted(final)))] = ProcessXsec(value, -1, "reference table")
    return out


def is_proto_model(doc: SLHADocument):
    """The ProtoModel of ``doc`` if it carries the marker and reads back exactly (written
    again by ``slha.to_slha`` it gives the same masses, decays, multipliers and cross
    sections to 1e-12), else None."""
    from .slha import model_from_document as proto_model, to_slha
    from .slha_document import parse_document
    from .xsec import effective_xsecs

    if not doc.written_by_protomodels:
        return None
    try:
        model = proto_model(doc)
        again = parse_document(to_slha(model, effective_xsecs(model)), doc.path)
    except SLHAError:
        return None
    return model if _same_physics(doc, again) else None


def _same_physics(a: SLHADocument, b: SLHADocument) -> bool:
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= 1e-12 * max(abs(x), abs(y), 1e-300)

    ma, mb = mass_entries(a), mass_entries(b)
    if ma.keys() != mb.keys() or any(not close(ma[p][0], mb[p][0]) for p in ma):
        return False
    if a.decays.keys() != b.decays.keys():
        return False
    for pid, table in a.decays.items():
        other = b.decays[pid]
        ca = sorted((c.daughters, c.br) for c in table.channels)
        cb = sorted((c.daughters, c.br) for c in other.channels)
        if not close(table.width, other.width) or len(ca) != len(cb) or any(
                da != db or not close(x, y) for (da, x), (db, y) in zip(ca, cb)):
            return False
    xa = sorted((x.sqrts_gev, x.final, x.order, x.value_pb) for x in a.xsections)
    xb = sorted((x.sqrts_gev, x.final, x.order, x.value_pb) for x in b.xsections)
    if len(xa) != len(xb) or any(p[:3] != q[:3] or not close(p[3], q[3]) for p, q in zip(xa, xb)):
        return False
    sa, sb = a.blocks.get("SSM"), b.blocks.get("SSM")
    return [e.tokens[:3] for e in (sa.lines if sa else [])] == \
        [e.tokens[:3] for e in (sb.lines if sb else [])]


def load_model(path):
    """The model in the SLHA file ``path``: a ``ProtoModel`` for files the walker wrote
    (``is_proto_model``), else a ``GeneralModel``.  SLHAError on a file SModelS could not
    take either (one line naming file, line, block, entry, value)."""
    return model_from_document(read_document(path))


def load_text(text: str, name: str = "<text>"):
    """``load_model`` of SLHA text (``name`` names it in errors)."""
    from .slha_document import parse_document

    return model_from_document(parse_document(text, name))


def model_from_document(doc: SLHADocument):
    """``load_model`` of a parsed document."""
    model = is_proto_model(doc)
    if model is not None:
        return model
    general = from_document(doc)
    if doc.written_by_protomodels:
        general.notes.append("carries the protomodels marker but does not read back as a "
                             "proto-model (edited by hand?): scored as a general model")
    return general
