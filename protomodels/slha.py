"""Proto-models to and from SLHA files (MASS, DECAY, XSECTION and our SSM block).

Written files are what SModelS reads: every candidate particle appears in MASS (frozen
ones at 1e6 GeV, no decay table), unfrozen non-LSP particles decay promptly, and the
cross sections at 8 and 13 TeV are XSECTION blocks in pb *including* the multipliers.
The ``SSM`` block records the multipliers themselves, so that a file read back gives
the same model: cross sections given in a file are divided by its multipliers to get
the per-process reference values (``ProtoModel.xsecs``).

Reading (``read_slha``) takes a file as a proto-model: SM and Higgs-sector ids
(|pid| < 1000000) are ignored, BSM ids outside the candidate table are an error unless
decoupled (mass >= 1e5 GeV).  Files of any other model: ``general.load_model``.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Tuple

from .atomic import write_text_atomic
from .exceptions import ModelError, SLHAError
from .model import (CHANNELS, FROZEN_MASS, LINE_TO_CHANNEL, LSP, NAMES, ProtoModel,
                    channel_spec, pair_key, ssm_key)
from .slha_document import (MARKER, SLHADocument, mass_entries, read_document,
                            resolved_xsections, ssm_entries)

DECOUPLED_MASS = 1e5  # GeV: heavier particles count as frozen
PROMPT_WIDTH = 1.0  # GeV, total width written for unfrozen non-LSP particles
SQRTS = (8, 13)

Xsecs = Dict[Tuple[int, Tuple[int, int]], float]  # (sqrts TeV, process key) -> pb


def to_slha(model: ProtoModel, xsecs: Xsecs) -> str:
    """SLHA text of ``model`` with the given effective cross sections (pb, ssm applied)."""
    lines = [MARKER, "BLOCK MASS"]
    for pid in sorted(NAMES):
        mass = float(model.masses.get(pid, FROZEN_MASS))  # repr of a float: exact and plain
        lines.append(f"   {pid:>8d}  {mass!r:>22}  # {NAMES[pid]}")
    for pid in model.unfrozen:
        name = NAMES[pid]
        if pid == LSP:
            lines.append(f"DECAY {pid:>8d}  0.0  # {name}")
            continue
        lines.append(f"DECAY {pid:>8d}  {PROMPT_WIDTH!r}  # {name}")
        for channel, br in sorted(model.decays[pid].items()):
            if br <= 0:
                continue
            spec = channel_spec(pid, channel)
            for daughters in spec.lines:
                share = float(br) / len(spec.lines)
                ids = " ".join(f"{d:>8d}" for d in daughters)
                lines.append(f"   {share!r:>22}  {len(daughters)}  {ids}  # {name} -> {channel}")
    if model.ssm:
        lines.append("BLOCK SSM  # signal-strength multipliers per production process")
        for (a, b), value in sorted(model.ssm.items()):
            lines.append(f"   {a:>8d} {b:>8d}  {float(value)!r:>22}  # {_pname(a)} {_pname(b)}")
    for (sqrts, (a, b)), value in sorted(xsecs.items()):
        if value <= 0:
            continue
        lines.append(f"XSECTION  {sqrts * 1000.0:.1f}  2212 2212 2 {a} {b}"
                     f"  # {_pname(a)} {_pname(b)}")
        lines.append(f"  0  2  0  0  0  0  {float(value)!r}  protomodels")
    return "\n".join(lines) + "\n"


def _pname(pid: int) -> str:
    return ("anti-" if pid < 0 else "") + NAMES.get(abs(pid), str(pid))


def write_slha(model: ProtoModel, xsecs: Xsecs, path: os.PathLike) -> None:
    """Write atomically: a crash never leaves half a file."""
    write_text_atomic(path, to_slha(model, xsecs))


def read_slha(path: os.PathLike) -> ProtoModel:
    """Read an SLHA file as a proto-model of the walker's model space (every BSM particle
    a candidate, decays in its channel menu); errors name the file, line and entry.
    Files of any other model: ``general.load_model``."""
    return model_from_document(read_document(path))


def model_from_document(doc: SLHADocument) -> ProtoModel:
    """The validated ProtoModel of a parsed SLHA document (see ``read_slha``)."""
    masses = _read_masses(doc)
    decays = _read_decays(doc, masses)
    ssm = _read_ssm(doc)
    xsecs = _read_xsecs(doc, ssm)
    model = ProtoModel(masses=masses, decays=decays, ssm=ssm, xsecs=xsecs)
    try:
        model.validate(doc.path)
    except ModelError as error:
        raise SLHAError(str(error)) from None
    return model


def _read_masses(doc: SLHADocument) -> Dict[int, float]:
    masses: Dict[int, float] = {}
    for pid, (mass, line) in mass_entries(doc).items():
        if abs(pid) < 1000000:
            continue  # SM and Higgs sector: not part of the proto-model
        if mass < 0:
            raise doc.error(line, f"MASS of {NAMES.get(pid, pid)} ({pid}) is {mass}; "
                                  "proto-model masses are non-negative")
        if mass >= DECOUPLED_MASS:
            continue  # frozen / decoupled
        if pid not in NAMES:
            raise doc.error(line, f"MASS block has particle id {pid} at {mass} GeV, not a "
                                  "proto-model candidate")
        masses[pid] = mass
    if LSP not in masses:
        raise SLHAError(f"{doc.path}: MASS block lacks the LSP XZ1 (1000022) below "
                        f"{DECOUPLED_MASS:g} GeV")
    return masses


def _read_decays(doc: SLHADocument, masses: Mapping[int, float]) -> Dict[int, Dict[str, float]]:
    decays: Dict[int, Dict[str, float]] = {}
    for pid in masses:
        if pid == LSP:
            continue
        table = doc.decays.get(pid)
        if table is None or not table.channels:
            raise SLHAError(f"{doc.path}: DECAY block of {NAMES[pid]} ({pid}) is missing or empty")
        brs: Dict[str, float] = {name: 0.0 for name in (s.name for s in CHANNELS[pid])}
        for entry in table.channels:
            name = LINE_TO_CHANNEL.get((pid, tuple(sorted(entry.daughters))))
            if name is None:
                raise doc.error(entry.line, f"DECAY {pid} has channel {list(entry.daughters)} "
                                            f"with BR {entry.br}, which is not in the "
                                            f"{NAMES[pid]} channel menu")
            brs[name] += entry.br
        decays[pid] = {name: br for name, br in brs.items() if br > 0}
    return decays


def _read_ssm(doc: SLHADocument) -> Dict[Tuple[int, int], float]:
    return {ssm_key(*key): value for key, value in ssm_entries(doc).items()}


def _read_xsecs(doc: SLHADocument, ssm: Mapping[Tuple[int, int], float]) -> Xsecs | None:
    """Reference-equivalent cross sections (pb) from XSECTION blocks, resolved as SModelS
    does (``slha_document.resolved_xsections``), divided by the multipliers."""
    if not doc.xsections:
        return None
    xsecs: Xsecs = {}
    for (sqrts, _), (x, _) in resolved_xsections(doc).items():
        if len(x.final) != 2:
            raise doc.error(x.line, f"XSECTION for {list(x.final)}: only 2 -> 2 processes are "
                                    "supported")
        if sqrts not in SQRTS:
            raise doc.error(x.line, f"XSECTION at {x.sqrts_gev:g} GeV: proto-models have "
                                    f"cross sections at {' and '.join(map(str, SQRTS))} TeV only")
        key = pair_key(*x.final)
        multiplier = ssm.get(ssm_key(*key), 1.0)
        xsecs[(sqrts, key)] = x.value_pb / multiplier if multiplier > 0 else 0.0
    return xsecs
