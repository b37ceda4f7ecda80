"""Proto-models to and from SLHA files (MASS, DECAY, XSECTION and our SSM block).

Written files are what SModelS reads: every candidate particle appears in MASS (frozen
ones at 1e6 GeV, no decay table), unfrozen non-LSP particles decay promptly, and the
cross sections at 8 and 13 TeV are XSECTION blocks in pb *including* the multipliers.
The ``SSM`` block records the multipliers themselves, so that a file read back gives
the same model: cross sections given in a file are divided by its multipliers to get
the per-process reference values (``ProtoModel.xsecs``).

Reading accepts any SLHA file: SM and Higgs-sector ids (|pid| < 1000000) are ignored,
BSM ids outside the candidate table are an error unless decoupled (mass >= 1e5 GeV).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Mapping, Tuple

import pyslha

from .atomic import write_text_atomic
from .exceptions import ModelError, SLHAError
from .model import (CHANNELS, FROZEN_MASS, LINE_TO_CHANNEL, LSP, NAMES, ProtoModel,
                    channel_spec, pair_key, ssm_key)

DECOUPLED_MASS = 1e5  # GeV: heavier particles count as frozen
PROMPT_WIDTH = 1.0  # GeV, total width written for unfrozen non-LSP particles
SQRTS = (8, 13)

Xsecs = Dict[Tuple[int, Tuple[int, int]], float]  # (sqrts TeV, process key) -> pb


def to_slha(model: ProtoModel, xsecs: Xsecs) -> str:
    """SLHA text of ``model`` with the given effective cross sections (pb, ssm applied)."""
    lines = ["# SLHA file written by protomodels", "BLOCK MASS"]
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
    """Read any SLHA file into a validated ProtoModel; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise SLHAError(f"{path}: no such file")
    try:
        doc = pyslha.read(str(path), ignorenomass=True, ignorenobr=True)
    except Exception as error:  # pyslha raises bare ParseError/ValueError/IndexError
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise SLHAError(f"{path}: malformed SLHA, pyslha cannot parse it ({detail})") from None
    if "MASS" not in doc.blocks:
        raise SLHAError(f"{path}: no MASS block")
    masses = _read_masses(path, doc.blocks["MASS"])
    decays = _read_decays(path, doc, masses)
    ssm = _read_ssm(path, doc)
    xsecs = _read_xsecs(path, doc, ssm)
    model = ProtoModel(masses=masses, decays=decays, ssm=ssm, xsecs=xsecs)
    try:
        model.validate(str(path))
    except ModelError as error:
        raise SLHAError(str(error)) from None
    return model


def _read_masses(path: Path, block) -> Dict[int, float]:
    masses: Dict[int, float] = {}
    for key, value in block.items():
        pid = key if isinstance(key, int) else key[0]
        try:
            mass = float(value)
        except (TypeError, ValueError):
            raise SLHAError(f"{path}: MASS of {pid} is {value!r}, not a number") from None
        if abs(pid) < 1000000:
            continue  # SM and Higgs sector: not part of the proto-model
        if math.isnan(mass) or mass < 0:
            raise SLHAError(f"{path}: MASS of {NAMES.get(pid, pid)} ({pid}) is {value}; "
                            "masses must be non-negative numbers")
        if mass >= DECOUPLED_MASS:
            continue  # frozen / decoupled
        if pid not in NAMES:
            raise SLHAError(f"{path}: MASS block has unknown particle id {pid} at {mass} GeV "
                            f"(known: {', '.join(str(p) for p in sorted(NAMES))})")
        masses[pid] = mass
    if LSP not in masses:
        raise SLHAError(f"{path}: MASS block lacks the LSP XZ1 (1000022) below {DECOUPLED_MASS:g} GeV")
    return masses


def _read_decays(path: Path, doc, masses: Mapping[int, float]) -> Dict[int, Dict[str, float]]:
    decays: Dict[int, Dict[str, float]] = {}
    for pid in masses:
        if pid == LSP:
            continue
        decay = doc.decays.get(pid)
        if decay is None or not decay.decays:
            raise SLHAError(f"{path}: DECAY block of {NAMES[pid]} ({pid}) is missing or empty")
        brs: Dict[str, float] = {name: 0.0 for name in (s.name for s in CHANNELS[pid])}
        for entry in decay.decays:
            daughters = tuple(sorted(int(d) for d in entry.ids))
            name = LINE_TO_CHANNEL.get((pid, daughters))
            if name is None:
                raise SLHAError(f"{path}: DECAY {pid} has channel {list(entry.ids)} with BR "
                                f"{entry.br}, which is not in the {NAMES[pid]} channel menu")
            brs[name] += float(entry.br)
        decays[pid] = {name: br for name, br in brs.items() if br > 0}
    return decays


def _read_ssm(path: Path, doc) -> Dict[Tuple[int, int], float]:
    ssm: Dict[Tuple[int, int], float] = {}
    block = doc.blocks.get("SSM")
    if block is None:
        return ssm
    for key, value in block.items():
        if not isinstance(key, tuple) or len(key) != 2:
            raise SLHAError(f"{path}: SSM entry {key!r} must have two particle ids")
        ssm[ssm_key(int(key[0]), int(key[1]))] = float(value)
    return ssm


def _read_xsecs(path: Path, doc, ssm: Mapping[Tuple[int, int], float]) -> Xsecs | None:
    """Reference-equivalent cross sections (pb) from XSECTION blocks: highest QCD order wins."""
    if not doc.xsections:
        return None
    best: Dict[Tuple[int, Tuple[int, int]], Tuple[int, float]] = {}
    for process in doc.xsections.values():
        if len(process.pidsfinal) != 2:
            raise SLHAError(f"{path}: XSECTION for {process.pidsfinal}: only 2 -> 2 processes are supported")
        key = pair_key(*(int(p) for p in process.pidsfinal))
        for xsec in process.xsecs:
            sqrts = int(round(float(xsec.sqrts) / 1000.0))
            value = float(xsec.value)
            if math.isnan(value) or value < 0:
                raise SLHAError(f"{path}: XSECTION {process.pidsfinal} at {xsec.sqrts} GeV is {value}")
            order = int(xsec.qcd_order)
            if (sqrts, key) not in best or order > best[(sqrts, key)][0]:
                best[(sqrts, key)] = (order, value)
    xsecs: Xsecs = {}
    for (sqrts, key), (_, value) in best.items():
        multiplier = ssm.get(ssm_key(*key), 1.0)
        xsecs[(sqrts, key)] = value / multiplier if multiplier > 0 else 0.0
    return xsecs
