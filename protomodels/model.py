"""The proto-model: which new particles exist, their masses, decays and multipliers.

SPEC section 2.  A proto-model is a plain value object; moves (issue 3) and the
significance pipeline only read and copy it.  The model space rules (walls, ordering
pairs, top corridor, open channels, BRs summing to 1) live here, in ``validate``, so
that every producer of models (SLHA reader, moves) is checked by one piece of code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple

from .exceptions import ModelError

LSP = 1000022
FROZEN_MASS = 1e6  # GeV: how frozen particles are written to SLHA
MAX_MASS = 2400.0  # GeV (paper)

#: pid -> ascii name (SPEC section 2).
NAMES: Dict[int, str] = {
    1000001: "Xd", 1000002: "Xu", 1000003: "Xs", 1000004: "Xc",
    1000005: "Xb", 2000005: "Xb2", 1000006: "Xt", 2000006: "Xt2",
    1000011: "Xe", 1000013: "Xmu", 1000015: "Xtau",
    1000012: "Xnue", 1000014: "Xnumu", 1000016: "Xnutau",
    1000021: "Xg", 1000022: "XZ1", 1000023: "XZ2", 1000025: "XZ3",
    1000024: "XW1", 1000037: "XW2",
}
PIDS: Dict[str, int] = {name: pid for pid, name in NAMES.items()}

#: Lower mass walls in GeV (paper); everything else starts at 0 (but above the LSP).
LOWER_WALL: Dict[int, float] = {
    1000021: 310.0, 1000001: 310.0, 1000002: 310.0, 1000003: 310.0, 1000004: 310.0,
    1000024: 100.0, 1000037: 100.0, 1000023: 20.0, 1000025: 20.0,
}

#: (lighter, heavier): the heavier exists only with the lighter, and stays heavier.
ORDERED_PAIRS: Tuple[Tuple[int, int], ...] = (
    (1000006, 2000006), (1000005, 2000005), (1000023, 1000025), (1000024, 1000037),
)

#: SM masses (GeV) used for every kinematic threshold; unlisted SM particles are massless.
SM_MASS: Dict[int, float] = {6: 173.0, 24: 80.4, 23: 91.2, 25: 125.0, 5: 4.7, 15: 1.78}

#: Charge-conjugate-invariant particles (their own antiparticle in SLHA terms).
SELF_CONJUGATE = {21, 22, 23, 25, 1000021, 1000022, 1000023, 1000025}

Channel = Tuple[int, ...]  # SLHA daughter pids of one decay line


@dataclass(frozen=True)
class ChannelSpec:
    """One entry of a particle's channel menu: one BR parameter, one or more SLHA lines.

    ``lines`` share the BR equally: lepton-flavour-universal decays (e, mu, tau) and
    the two charge assignments of a Majorana parent are tied to one parameter.
    ``offshell_of`` names the SM boson whose on-shell channel this replaces: such a
    channel is open only while the parent is too light to emit that boson on shell.
    """

    name: str
    lines: Tuple[Channel, ...]
    offshell_of: int = 0

    def daughter_mass(self, masses: Mapping[int, float]) -> float:
        """Sum of the daughter masses of the heaviest line (frozen daughters: infinite)."""
        return max(sum(_mass_of(d, masses) for d in line) for line in self.lines)

    def is_open(self, parent: int, masses: Mapping[int, float]) -> bool:
        """Kinematically open for this parent mass (one threshold table everywhere)."""
        m = masses[parent]
        if self.daughter_mass(masses) >= m:
            return False
        if self.offshell_of:
            bsm = [abs(d) for d in self.lines[0] if abs(d) >= 1000000]
            return m - sum(masses[p] for p in bsm) < SM_MASS[self.offshell_of]
        return True


def _mass_of(pid: int, masses: Mapping[int, float]) -> float:
    apid = abs(pid)
    if apid >= 1000000:
        return masses.get(apid, math.inf)
    return SM_MASS.get(apid, 0.0)


_Z1, _Z2, _W1 = 1000022, 1000023, 1000024
_SQUARK_PARTNER = {1000001: (1, 2), 1000002: (2, 1), 1000003: (3, 4), 1000004: (4, 3)}


def _squark_menu(pid: int) -> Tuple[ChannelSpec, ...]:
    q, qprime = _SQUARK_PARTNER[pid]
    sign = -1 if q in (1, 3) else 1  # d-type squark emits an up quark and a W1-
    return (
        ChannelSpec("q XZ1", ((q, _Z1),)),
        ChannelSpec("q XZ2", ((q, _Z2),)),
        ChannelSpec("q' XW1", ((qprime, sign * _W1),)),
    )


def _channel_menu() -> Dict[int, Tuple[ChannelSpec, ...]]:
    """The fixed channel menu of every non-LSP candidate (paper's menu, charge-consistent)."""
    menu: Dict[int, Tuple[ChannelSpec, ...]] = {}
    for pid in _SQUARK_PARTNER:
        menu[pid] = _squark_menu(pid)
    menu[1000005] = (ChannelSpec("b XZ1", ((5, _Z1),)), ChannelSpec("t XW1", ((6, -_W1),)),
                     ChannelSpec("b XZ2", ((5, _Z2),)))
    menu[2000005] = menu[1000005] + (ChannelSpec("Z Xb", ((23, 1000005),)),
                                     ChannelSpec("h Xb", ((25, 1000005),)))
    menu[1000006] = (ChannelSpec("t XZ1", ((6, _Z1),)), ChannelSpec("b XW1", ((5, _W1),)),
                     ChannelSpec("t XZ2", ((6, _Z2),)))
    menu[2000006] = menu[1000006] + (ChannelSpec("Z Xt", ((23, 1000006),)),
                                     ChannelSpec("h Xt", ((25, 1000006),)))
    gluino = [
        ChannelSpec("q q XZ1", ((1, -1, _Z1),)),
        ChannelSpec("b b XZ1", ((5, -5, _Z1),)),
        ChannelSpec("t t XZ1", ((6, -6, _Z1),)),
        ChannelSpec("g XZ1", ((21, _Z1),)),
    ]
    for sq, q in ((1000001, 1), (1000002, 2), (1000003, 3), (1000004, 4),
                  (1000005, 5), (2000005, 5), (1000006, 6), (2000006, 6)):
        gluino.append(ChannelSpec(f"{NAMES[sq]} q", ((sq, -q), (-sq, q))))
    menu[1000021] = tuple(gluino)
    menu[1000024] = (
        ChannelSpec("W XZ1", ((24, _Z1),)),
        ChannelSpec("l nu XZ1", ((_Z1, -11, 12), (_Z1, -13, 14), (_Z1, -15, 16)), offshell_of=24),
        ChannelSpec("q q' XZ1", ((_Z1, 2, -1),), offshell_of=24),
        ChannelSpec("W XZ2", ((24, _Z2),)),
        ChannelSpec("Xnu l", ((1000012, -11), (1000014, -13), (1000016, -15))),
        ChannelSpec("Xl nu", ((-1000011, 12), (-1000013, 14), (-1000015, 16))),
    )
    menu[1000037] = (
        ChannelSpec("W XZ1", ((24, _Z1),)), ChannelSpec("W XZ2", ((24, _Z2),)),
        ChannelSpec("Z XW1", ((23, _W1),)), ChannelSpec("h XW1", ((25, _W1),)),
    )
    menu[1000023] = (
        ChannelSpec("Z XZ1", ((23, _Z1),)),
        ChannelSpec("h XZ1", ((25, _Z1),)),
        ChannelSpec("l l XZ1", ((_Z1, 11, -11), (_Z1, 13, -13), (_Z1, 15, -15)), offshell_of=23),
        ChannelSpec("q q XZ1", ((_Z1, 1, -1),), offshell_of=23),
        ChannelSpec("W XW1", ((24, -_W1), (-24, _W1))),
        ChannelSpec("Xl l", ((1000011, -11), (-1000011, 11), (1000013, -13), (-1000013, 13),
                             (1000015, -15), (-1000015, 15))),
    )
    menu[1000025] = (
        ChannelSpec("Z XZ1", ((23, _Z1),)), ChannelSpec("h XZ1", ((25, _Z1),)),
        ChannelSpec("Z XZ2", ((23, _Z2),)), ChannelSpec("h XZ2", ((25, _Z2),)),
        ChannelSpec("W XW1", ((24, -_W1), (-24, _W1))),
    )
    for slep, lep, nu in ((1000011, 11, 12), (1000013, 13, 14), (1000015, 15, 16)):
        menu[slep] = (ChannelSpec("l XZ1", ((lep, _Z1),)), ChannelSpec("nu XW1", ((nu, -_W1),)),
                      ChannelSpec("l XZ2", ((lep, _Z2),)))
    for snu, lep, nu in ((1000012, 11, 12), (1000014, 13, 14), (1000016, 15, 16)):
        menu[snu] = (ChannelSpec("nu XZ1", ((nu, _Z1),)), ChannelSpec("l XW1", ((lep, _W1),)),
                     ChannelSpec("nu XZ2", ((nu, _Z2),)))
    return menu


CHANNELS: Dict[int, Tuple[ChannelSpec, ...]] = _channel_menu()

#: SLHA line (sorted daughters) -> (parent, channel name), to read files back.
LINE_TO_CHANNEL: Dict[Tuple[int, Channel], str] = {
    (parent, tuple(sorted(line))): spec.name
    for parent, specs in CHANNELS.items() for spec in specs for line in spec.lines
}


def channel_spec(parent: int, name: str) -> ChannelSpec:
    for spec in CHANNELS[parent]:
        if spec.name == name:
            return spec
    raise ModelError(f"{NAMES.get(parent, parent)} has no decay channel {name!r}")


def pair_key(pid_a: int, pid_b: int) -> Tuple[int, int]:
    """A production process as its signed PDG pair, sorted: the key of cross sections."""
    return (pid_a, pid_b) if pid_a <= pid_b else (pid_b, pid_a)


def ssm_key(pid_a: int, pid_b: int) -> Tuple[int, int]:
    """The key of a process' multiplier: charge-conjugate processes share one value."""
    return min(pair_key(pid_a, pid_b), pair_key(_conjugate(pid_a), _conjugate(pid_b)))


def _conjugate(pid: int) -> int:
    return pid if abs(pid) in SELF_CONJUGATE else -pid


@dataclass
class ProtoModel:
    """Unfrozen particles with masses (GeV), decays (channel name -> BR) and multipliers.

    ``ssm`` maps process keys (see ``ssm_key``) to signal-strength multipliers;
    a process not listed has multiplier 1.  ``xsecs`` optionally holds cross sections
    given by an input file (pb, keyed by (sqrts TeV, ``pair_key``)); when present they
    replace the reference tables (SPEC section 3: a file's own XSECTION blocks are
    used as given).
    """

    masses: Dict[int, float]
    decays: Dict[int, Dict[str, float]] = field(default_factory=dict)
    ssm: Dict[Tuple[int, int], float] = field(default_factory=dict)
    xsecs: Dict[Tuple[int, Tuple[int, int]], float] | None = None

    @property
    def unfrozen(self) -> Tuple[int, ...]:
        return tuple(sorted(self.masses))

    def copy(self) -> "ProtoModel":
        """A deep copy in canonical order (particles by PDG id, channels by name, keys
        sorted): the order ``from_dict`` gives a model read from a checkpoint, so a
        resumed chain and the live one do every floating-point sum in the same order."""
        return dataclasses.replace(
            self, masses=dict(sorted(self.masses.items())),
            decays={p: dict(sorted(d.items())) for p, d in sorted(self.decays.items())},
            ssm=dict(sorted(self.ssm.items())),
            xsecs=None if self.xsecs is None else dict(sorted(self.xsecs.items())))

    def multiplier(self, pair: Tuple[int, int]) -> float:
        return self.ssm.get(ssm_key(*pair), 1.0)

    def to_dict(self) -> Dict[str, object]:
        """JSON form (names as keys, exact floats): what histories and hiscores store."""
        out: Dict[str, object] = {
            "masses": {NAMES[p]: m for p, m in sorted(self.masses.items())},
            "decays": {NAMES[p]: dict(sorted(d.items())) for p, d in sorted(self.decays.items())},
            "ssm": [[a, b, v] for (a, b), v in sorted(self.ssm.items())],
        }
        if self.xsecs is not None:
            out["xsecs_pb"] = [[s, a, b, v] for (s, (a, b)), v in sorted(self.xsecs.items())]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str = "model") -> "ProtoModel":
        """Inverse of ``to_dict``; unknown names raise ModelError naming ``source``."""
        try:
            masses = {PIDS[n]: float(m) for n, m in data["masses"].items()}
            decays = {PIDS[n]: {str(c): float(b) for c, b in d.items()}
                      for n, d in data.get("decays", {}).items()}
            ssm = {(int(a), int(b)): float(v) for a, b, v in data.get("ssm", [])}
            xsecs = None
            if "xsecs_pb" in data:
                xsecs = {(int(s), (int(a), int(b))): float(v) for s, a, b, v in data["xsecs_pb"]}
        except KeyError as error:
            raise ModelError(f"{source}: unknown or missing field {error}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ModelError(f"{source}: malformed model ({error})") from None
        return cls(masses=masses, decays=decays, ssm=ssm, xsecs=xsecs)

    def describe(self) -> str:
        """One line: particles and masses, lightest first."""
        return ", ".join(f"{NAMES[p]} {self.masses[p]:.0f}"
                         for p in sorted(self.masses, key=self.masses.get))

    def validate(self, source: str = "model") -> None:
        """Raise ModelError naming ``source`` and the field if any SPEC-2 rule is broken."""
        if LSP not in self.masses:
            raise ModelError(f"{source}: the LSP XZ1 (1000022) must be present")
        for pid, mass in self.masses.items():
            name = NAMES.get(pid)
            if name is None:
                raise ModelError(f"{source}: unknown particle id {pid}")
            if not math.isfinite(mass) or mass <= 0:
                raise ModelError(f"{source}: mass of {name} ({pid}) is {mass}; it must be positive")
            if mass > MAX_MASS:
                raise ModelError(f"{source}: mass of {name} is {mass} GeV, above {MAX_MASS:.0f} GeV")
            if mass < LOWER_WALL.get(pid, 0.0):
                raise ModelError(f"{source}: mass of {name} is {mass} GeV, below its wall "
                                 f"{LOWER_WALL[pid]:.0f} GeV")
            if pid != LSP and mass < self.masses[LSP]:
                raise ModelError(f"{source}: {name} ({mass} GeV) is lighter than the LSP XZ1 "
                                 f"({self.masses[LSP]} GeV)")
        for light, heavy in ORDERED_PAIRS:
            if heavy in self.masses and (light not in self.masses
                                         or self.masses[heavy] < self.masses[light]):
                raise ModelError(f"{source}: {NAMES[heavy]} needs a lighter {NAMES[light]}")
        if 1000006 in self.masses:
            mt, dm = self.masses[1000006], self.masses[1000006] - self.masses[LSP]
            if mt <= 280.0 and 150.0 < dm < 200.0:
                raise ModelError(f"{source}: Xt at {mt} GeV with m(Xt)-m(XZ1) = {dm:.1f} GeV "
                                 "is in the forbidden top corridor")
        for pid in self.masses:
            if pid == LSP:
                if self.decays.get(pid):
                    raise ModelError(f"{source}: the LSP XZ1 must not decay")
                continue
            brs = self.decays.get(pid) or {}
            if not brs:
                raise ModelError(f"{source}: {NAMES[pid]} has no decay table")
            for name, br in brs.items():
                spec = channel_spec(pid, name)
                if not (0.0 <= br <= 1.0 + 1e-9) or not math.isfinite(br):
                    raise ModelError(f"{source}: BR({NAMES[pid]} -> {name}) = {br} is not in [0, 1]")
                if br > 0 and not spec.is_open(pid, self.masses):
                    raise ModelError(f"{source}: {NAMES[pid]} -> {name} is kinematically closed "
                                     f"(m = {self.masses[pid]} GeV) but has BR {br}")
            total = sum(brs.values())
            if abs(total - 1.0) > 1e-3:
                raise ModelError(f"{source}: BRs of {NAMES[pid]} sum to {total:.6g}, not 1")
        for key, value in self.ssm.items():
            if not math.isfinite(value) or value < 0:
                raise ModelError(f"{source}: multiplier of process {key} is {value}; "
                                 "it must be non-negative")
