"""Proposal moves of the walker, each Hastings-correct (SPEC section 7).

The walker samples pi(x) ~ exp(K(x) / 2T) mu(x), where mu is a *reference measure* over
proto-models that every move respects:

- which particles are unfrozen: counting measure (weight 1 per valid set);
- each unfrozen particle's mass: uniform on its range in the ``Space`` (default: its
  lower wall to 2400 GeV);
- each unfrozen non-LSP particle's decays: a support S (the channels with non-zero BR)
  uniform over the non-empty subsets of its open channels, then BRs flat (Dirichlet(1))
  on the simplex over S; LFU-tied channels are one channel;
- each production process' multiplier: 1 with probability P_ONE, 0 with P_ZERO, else
  log-uniform on ``Space.ssm_range``.

Given the particle set, mu is a probability distribution, so with K depending only on the
set, the set's visit frequencies are exp(K/2) normalised: that is what the statistical
test checks.  States that break a model-space rule have pi = 0 (proposals are rejected).

A move's ``propose(model, rng)`` returns ``Proposal(model, log_ratio)`` with
log_ratio = log[mu(x') q(x | x')] - log[mu(x) q(x' | x)] (Jacobians included), or None
when it does not apply.  Moves that are each other's reverse (unfreeze/freeze, open/close
a channel) name it in ``reverse``; the sampler adds log(w_reverse / w_move) for their
selection weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .exceptions import ModelError
from .model import (CHANNELS, LOWER_WALL, LSP, MAX_MASS, NAMES, ORDERED_PAIRS, ProtoModel,
                    ssm_key)
from .xsec import reference_xsecs

P_ONE, P_ZERO = 0.8, 0.1  # reference probabilities of a multiplier being exactly 1 or 0
MASS_STEPS = (20.0, 60.0, 150.0, 400.0)  # GeV: widths of ChangeMass' Gaussian step
#: Versions of the move mix (a run records its own, so that a resume continues exactly):
#: 1 = unfreeze draws masses from the reference only, no spectrum shift (runs made before
#: the setting); 2 = unfreeze anchors half its mass draws above the LSP, plus ShiftSpectrum.
MOVE_MIXES = (1, 2)
MOVE_MIX = 2
ANCHOR_SHARE = 0.5     # mix 2: share of unfreeze mass draws anchored above the LSP
ANCHOR_WIDTH = 500.0   # GeV: width of the half-normal mass gap above the LSP


@dataclass(frozen=True)
class Space:
    """The model space a walker explores: candidate particles and parameter ranges."""

    candidates: Tuple[int, ...] = tuple(sorted(NAMES))
    mass_ranges: Dict[int, Tuple[float, float]] = field(default_factory=dict)
    ssm_range: Tuple[float, float] = (1e-2, 1e2)

    def mass_range(self, pid: int) -> Tuple[float, float]:
        default = (LOWER_WALL.get(pid, 1.0), MAX_MASS)
        return self.mass_ranges.get(pid, default)


@dataclass
class Proposal:
    """A proposed state and log[mu(x') q(x | x')] - log[mu(x) q(x' | x)].  The model is
    kept in canonical order (``ProtoModel.copy``): a move that adds a particle or channel
    appends it, and an accepted state must not differ from its checkpointed copy even in
    the order of a sum (a resumed chain would drift from the live one in the last bit)."""

    model: ProtoModel
    log_ratio: float

    def __post_init__(self) -> None:
        self.model = self.model.copy()


def open_channels(pid: int, masses: Dict[int, float]) -> List[str]:
    return [spec.name for spec in CHANNELS[pid] if spec.is_open(pid, masses)]


def process_keys(model: ProtoModel) -> List[Tuple[int, int]]:
    """Multiplier keys of the processes the model's unfrozen particles have."""
    return sorted({ssm_key(*pair) for pair in reference_xsecs(model.masses, 13)})


def _log_ssm_reference(value: Optional[float], space: Space) -> float:
    if value is None or value == 1.0:
        return math.log(P_ONE)
    if value == 0.0:
        return math.log(P_ZERO)
    lo, hi = space.ssm_range
    if not lo <= value <= hi:
        return -math.inf
    return math.log(1.0 - P_ONE - P_ZERO) - math.log(math.log(hi / lo))  # density in log(value)


def _log_mass_reference(pid: int, space: Space) -> float:
    lo, hi = space.mass_range(pid)
    return -math.log(hi - lo)


def _log_particle_reference(model: ProtoModel, pid: int, space: Space) -> float:
    lo, hi = space.mass_range(pid)
    mass = model.masses[pid]
    if not lo <= mass <= hi:
        return -math.inf
    log_mu = _log_mass_reference(pid, space)
    if pid == LSP:
        return log_mu
    n_open = len(open_channels(pid, model.masses))
    support = [c for c, br in model.decays.get(pid, {}).items() if br > 0]
    if n_open == 0 or not support:
        return -math.inf
    return log_mu - math.log(2.0 ** n_open - 1.0) + math.lgamma(len(support))


def log_reference(model: ProtoModel, space: Space) -> float:
    """log mu(model); -inf outside the model space (a broken rule, a value out of range)."""
    try:
        model.validate()
    except ModelError:
        return -math.inf
    if any(pid not in space.candidates for pid in model.masses):
        return -math.inf
    total = sum(_log_particle_reference(model, pid, space) for pid in model.masses)
    for key in process_keys(model):
        total += _log_ssm_reference(model.ssm.get(key), space)
    return total


def draw_ssm(rng: np.random.Generator, space: Space) -> Optional[float]:
    """A multiplier drawn from the reference (None means exactly 1, i.e. not stored)."""
    u = rng.random()
    if u < P_ONE:
        return None
    if u < P_ONE + P_ZERO:
        return 0.0
    lo, hi = space.ssm_range
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_decays(pid: int, model: ProtoModel, rng: np.random.Generator) -> Dict[str, float]:
    """BRs drawn from the reference: uniform non-empty support, flat on its simplex."""
    channels = open_channels(pid, model.masses)
    if not channels:
        return {}
    while True:
        chosen = [c for c in channels if rng.random() < 0.5]
        if chosen:
            break
    brs = rng.dirichlet(np.ones(len(chosen)))
    return {c: float(b) for c, b in zip(chosen, brs)}


def unfreezable(model: ProtoModel, space: Space) -> List[int]:
    heavy_of = {heavy: light for light, heavy in ORDERED_PAIRS}
    return [p for p in space.candidates
            if p not in model.masses and p != LSP
            and (p not in heavy_of or heavy_of[p] in model.masses)]


def freezable(model: ProtoModel) -> List[int]:
    light_of = {light: heavy for light, heavy in ORDERED_PAIRS}
    return [p for p in model.unfrozen
            if p != LSP and not (p in light_of and light_of[p] in model.masses)]


def _log_drawn(model: ProtoModel, pid: int, keys, space: Space, mass: bool = True) -> float:
    """log mu of what an unfreeze (or split, without the mass) draws for particle ``pid``:
    its mass, decays, and the multipliers of its new processes ``keys``."""
    value = _log_particle_reference(model, pid, space)
    if not mass:
        value -= _log_mass_reference(pid, space)
    return value + sum(_log_ssm_reference(model.ssm.get(k), space) for k in keys)


def _log_mass_proposal(pid: int, mass: float, model: ProtoModel, space: Space) -> float:
    """log of an anchored Unfreeze's density (1/GeV, move mix 2) of drawing ``mass`` for
    ``pid``, given the model without it: half of the draws uniform on the particle's
    range (the reference), half a mass gap above the LSP from a half-normal of width
    ANCHOR_WIDTH, because a search's signal depends on the gap to the LSP (its excesses
    sit at particular gaps, e.g. 200-400 GeV for CMS-SUS-20-004's XZ2 -> h XZ1): a
    uniform draw up to 2400 GeV lands in such a band a few percent of the time."""
    lo, hi = space.mass_range(pid)
    uniform = 1.0 / (hi - lo) if lo <= mass <= hi else 0.0
    gap = mass - model.masses[LSP]
    half_normal = (math.sqrt(2.0 / math.pi) / ANCHOR_WIDTH
                   * math.exp(-0.5 * (gap / ANCHOR_WIDTH) ** 2)) if gap >= 0 else 0.0
    density = (1.0 - ANCHOR_SHARE) * uniform + ANCHOR_SHARE * half_normal
    return math.log(density) if density > 0 else -math.inf


def _log_mass_term(pid: int, with_pid: ProtoModel, without: ProtoModel, space: Space,
                   anchored: bool) -> float:
    """log q(mass) - log mu(mass) of the unfreeze that adds ``pid`` to ``without``: the
    correction of ``_log_drawn`` for anchored draws; exactly 0 for reference draws, so
    runs of move mix 1 resume with the arithmetic they were made with."""
    if not anchored:
        return 0.0
    return (_log_mass_proposal(pid, with_pid.masses[pid], without, space)
            - _log_mass_reference(pid, space))


def _draw_mass(pid: int, model: ProtoModel, space: Space, rng: np.random.Generator,
               anchored: bool) -> float:
    """Unfreeze's mass draw for ``pid`` (density ``_log_mass_proposal``)."""
    lo, hi = space.mass_range(pid)
    if anchored and rng.random() < ANCHOR_SHARE:
        return float(model.masses[LSP] + abs(rng.normal(0.0, ANCHOR_WIDTH)))
    return float(rng.uniform(lo, hi))


def _draw_new_multipliers(old: ProtoModel, new: ProtoModel, rng: np.random.Generator,
                          space: Space) -> set:
    """Draw, from the reference, the multipliers of processes ``new`` has and ``old`` lacks."""
    fresh = set(process_keys(new)) - set(process_keys(old))
    for key in sorted(fresh):
        value = draw_ssm(rng, space)
        if value is not None:
            new.ssm[key] = value
    return fresh


def remove_particle(model: ProtoModel, pid: int) -> ProtoModel:
    """A copy of ``model`` with ``pid`` frozen and the multipliers of the processes it
    leaves without a particle dropped (Freeze's and Merge's new state; it may break a
    rule, e.g. when another particle decays into ``pid``: check ``log_reference``)."""
    new = model.copy()
    del new.masses[pid]
    new.decays.pop(pid, None)
    keep = set(process_keys(new))
    new.ssm = {k: v for k, v in new.ssm.items() if k in keep}
    return new


class Move:
    """Base class: a named proposal with an optional reverse move."""

    name = "move"
    reverse: Optional[str] = None

    def __init__(self, space: Space):
        self.space = space

    def propose(self, model: ProtoModel, rng: np.random.Generator) -> Optional[Proposal]:
        raise NotImplementedError

    def _ratio(self, old: ProtoModel, new: ProtoModel, log_q_reverse: float,
               log_q_forward: float) -> Proposal:
        log_new = log_reference(new, self.space)
        if log_new == -math.inf:
            return Proposal(new, -math.inf)
        return Proposal(new, log_new - log_reference(old, self.space)
                        + log_q_reverse - log_q_forward)


class _AnchoredMove(Move):
    """Unfreeze and Freeze, each the other's reverse: both must agree on ``anchored``."""

    def __init__(self, space: Space, anchored: bool = True):
        super().__init__(space)
        self.anchored = anchored


class Unfreeze(_AnchoredMove):
    """Add a particle: its decays and multipliers drawn from the reference, its mass from
    the reference (``anchored=False``, move mix 1) or half the time from a half-normal gap
    above the LSP (``_log_mass_proposal``)."""

    name, reverse = "unfreeze", "freeze"

    def propose(self, model, rng):
        options = unfreezable(model, self.space)
        if not options:
            return None
        pid = int(options[rng.integers(len(options))])
        new = model.copy()
        new.masses[pid] = _draw_mass(pid, model, self.space, rng, self.anchored)
        if pid != LSP:
            new.decays[pid] = draw_decays(pid, new, rng)
        fresh = _draw_new_multipliers(model, new, rng, self.space)
        if log_reference(new, self.space) == -math.inf:
            return Proposal(new, -math.inf)
        # q(x'|x) = 1/|options| x mu(new particle's parameters); mu(x') / mu(x) leaves
        # exactly that factor plus the change of the other particles' BR normalisations.
        drawn = (_log_drawn(new, pid, fresh, self.space)
                 + _log_mass_term(pid, new, model, self.space, self.anchored))
        log_forward = -math.log(len(options)) + drawn
        log_reverse = -math.log(len(freezable(new)))
        return self._ratio(model, new, log_reverse, log_forward)


class Freeze(_AnchoredMove):
    """Remove a particle (never the LSP, never the lighter of an ordered pair alone); the
    reverse of an Unfreeze with the same ``anchored``."""

    name, reverse = "freeze", "unfreeze"

    def propose(self, model, rng):
        options = freezable(model)
        if not options:
            return None
        pid = int(options[rng.integers(len(options))])
        new = remove_particle(model, pid)
        if log_reference(new, self.space) == -math.inf:
            return Proposal(new, -math.inf)
        gone = set(process_keys(model)) - set(process_keys(new))
        drawn = (_log_drawn(model, pid, gone, self.space)
                 + _log_mass_term(pid, model, new, self.space, self.anchored))
        log_forward = -math.log(len(options))
        log_reverse = -math.log(len(unfreezable(new, self.space))) + drawn
        return self._ratio(model, new, log_reverse, log_forward)


def mass_step_widths(step: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    """The Gaussian widths (GeV) of ChangeMass and ShiftSpectrum; ValueError unless there
    is at least one and all are positive."""
    widths = tuple(float(s) for s in np.atleast_1d(step))
    if not widths or min(widths) <= 0:
        raise ValueError(f"mass steps {list(widths)}: need at least one width > 0 GeV")
    return widths


class ChangeMass(Move):
    """Gaussian step of one particle's mass (the LSP too); symmetric.

    The step's width is drawn uniformly from ``steps`` (GeV) at every proposal,
    independently of the state, so the proposal stays symmetric: narrow steps let the
    cold rungs of a ladder tune a basin's masses (a 150 GeV step at T = 0.1 was accepted
    18% of the time), wide ones cross between basins.
    """

    name = "mass"

    def __init__(self, space: Space, step: Union[float, Sequence[float]] = MASS_STEPS):
        super().__init__(space)
        self.steps = mass_step_widths(step)

    def propose(self, model, rng):
        pids = model.unfrozen
        pid = pids[rng.integers(len(pids))]
        width = self.steps[rng.integers(len(self.steps))] if len(self.steps) > 1 else self.steps[0]
        new = model.copy()
        new.masses[pid] = float(model.masses[pid] + rng.normal(0.0, width))
        return self._ratio(model, new, 0.0, 0.0)


class ShiftSpectrum(Move):
    """Shift every mass, the LSP's included, by one Gaussian step (width drawn from
    ``steps`` as in ChangeMass); symmetric, Jacobian 1.  Keeps the mass gaps a signal
    depends on, so a basin found at one LSP mass can slide to where another excess needs
    the LSP (one ChangeMass of the LSP changes every gap at once)."""

    name = "shift"

    def __init__(self, space: Space, step: Union[float, Sequence[float]] = MASS_STEPS):
        super().__init__(space)
        self.steps = mass_step_widths(step)

    def propose(self, model, rng):
        width = self.steps[rng.integers(len(self.steps))]
        delta = float(rng.normal(0.0, width))
        new = model.copy()
        new.masses = {pid: mass + delta for pid, mass in new.masses.items()}
        return self._ratio(model, new, 0.0, 0.0)


class JitterBRs(Move):
    """Move a BR share between two channels of one particle's support; symmetric."""

    name = "brs"

    def __init__(self, space: Space, width: float = 0.1):
        super().__init__(space)
        self.width = width

    def propose(self, model, rng):
        pids = _multi_channel(model)
        if not pids:
            return None
        pid = pids[rng.integers(len(pids))]
        names = sorted(model.decays[pid])
        a, b = rng.choice(len(names), size=2, replace=False)
        delta = float(rng.uniform(-self.width, self.width))
        new = model.copy()
        new.decays[pid][names[a]] += delta
        new.decays[pid][names[b]] -= delta
        if min(new.decays[pid][names[a]], new.decays[pid][names[b]]) <= 0:
            return Proposal(new, -math.inf)
        return self._ratio(model, new, 0.0, 0.0)


def _multi_channel(model: ProtoModel) -> List[int]:
    """Particles with at least two channels in their support (jitter and close apply)."""
    return [p for p in model.unfrozen if len(model.decays.get(p, {})) >= 2]


def _can_open(model: ProtoModel) -> Dict[int, List[str]]:
    return {p: [c for c in open_channels(p, model.masses) if c not in model.decays.get(p, {})]
            for p in model.unfrozen if p != LSP}


class OpenChannel(Move):
    """Give a new open channel a share b ~ U(0, 1); the others keep their ratios."""

    name, reverse = "open", "close"

    def propose(self, model, rng):
        candidates = {p: c for p, c in _can_open(model).items() if c}
        if not candidates:
            return None
        pids = sorted(candidates)
        pid = pids[rng.integers(len(pids))]
        channel = candidates[pid][rng.integers(len(candidates[pid]))]
        share = float(rng.random())
        k = len(model.decays[pid])
        new = model.copy()
        new.decays[pid] = {c: br * (1.0 - share) for c, br in model.decays[pid].items()}
        new.decays[pid][channel] = share
        closable = _multi_channel(new)
        log_forward = -math.log(len(pids)) - math.log(len(candidates[pid]))
        log_reverse = -math.log(len(closable)) - math.log(k + 1)
        proposal = self._ratio(model, new, log_reverse, log_forward)
        proposal.log_ratio += (k - 1) * math.log1p(-share)  # Jacobian of the rescaling
        return proposal


class CloseChannel(Move):
    """Remove one channel of a particle's support; the others are renormalised."""

    name, reverse = "close", "open"

    def propose(self, model, rng):
        pids = _multi_channel(model)
        if not pids:
            return None
        pid = pids[rng.integers(len(pids))]
        names = sorted(model.decays[pid])
        channel = names[rng.integers(len(names))]
        share = model.decays[pid][channel]
        new = model.copy()
        del new.decays[pid][channel]
        new.decays[pid] = {c: br / (1.0 - share) for c, br in new.decays[pid].items()}
        k = len(new.decays[pid])
        openable = {p: c for p, c in _can_open(new).items() if c}
        log_forward = -math.log(len(pids)) - math.log(len(names))
        log_reverse = -math.log(len(openable)) - math.log(len(openable[pid]))
        proposal = self._ratio(model, new, log_reverse, log_forward)
        proposal.log_ratio -= (k - 1) * math.log1p(-share)
        return proposal


class ScaleMultiplier(Move):
    """Multiply one (continuous) multiplier by exp(N(0, width)); symmetric in log."""

    name = "ssm"

    def __init__(self, space: Space, width: float = 0.1):
        super().__init__(space)
        self.width = width

    def propose(self, model, rng):
        keys = [k for k in process_keys(model) if model.ssm.get(k, 1.0) not in (0.0, 1.0)]
        if not keys:
            return None
        key = keys[rng.integers(len(keys))]
        new = model.copy()
        new.ssm[key] = float(model.ssm[key] * math.exp(rng.normal(0.0, self.width)))
        return self._ratio(model, new, 0.0, 0.0)


class RedrawMultiplier(Move):
    """Redraw one process' multiplier from the reference: set it to 1, to 0, or anew."""

    name = "ssm_redraw"

    def propose(self, model, rng):
        keys = process_keys(model)
        if not keys:
            return None
        key = keys[rng.integers(len(keys))]
        new = model.copy()
        value = draw_ssm(rng, self.space)
        new.ssm.pop(key, None)
        if value is not None:
            new.ssm[key] = value
        # an independence proposal from the reference: q = mu for this coordinate
        q_new = _log_ssm_reference(value, self.space)
        q_old = _log_ssm_reference(model.ssm.get(key), self.space)
        return self._ratio(model, new, q_old, q_new)


#: Particles that may merge into one (the paper's simplification): no ordering pairs.
SAME_KIND = ((1000001, 1000002, 1000003, 1000004), (1000011, 1000013, 1000015),
             (1000012, 1000014, 1000016))
MERGE_DISTANCE = 200.0  # GeV


def _kind(pid: int) -> Tuple[int, ...]:
    for group in SAME_KIND:
        if pid in group:
            return group
    return ()


def mergeable(model: ProtoModel) -> List[Tuple[int, int]]:
    """Unordered pairs (lighter pid first) of same-kind particles within 200 GeV."""
    pids = model.unfrozen
    return [(a, b) for i, a in enumerate(pids) for b in pids[i + 1:]
            if b in _kind(a) and abs(model.masses[a] - model.masses[b]) < MERGE_DISTANCE]


def split_partners(model: ProtoModel, pid: int, space: Space) -> List[int]:
    """Frozen same-kind candidates a split of ``pid`` may create (higher pid: the merge
    keeps the lower one)."""
    return [k for k in _kind(pid) if k > pid and k not in model.masses and k in space.candidates]


def splittable(model: ProtoModel, space: Space) -> List[int]:
    return [p for p in model.unfrozen if split_partners(model, p, space)]


class Merge(Move):
    """Two same-kind particles within 200 GeV become one at their mean mass; the lower
    pid survives with its decays and multipliers, the other is frozen."""

    name, reverse = "merge", "split"

    def propose(self, model, rng):
        pairs = mergeable(model)
        if not pairs:
            return None
        keep, gone = pairs[rng.integers(len(pairs))]
        new = remove_particle(model, gone)
        new.masses[keep] = 0.5 * (model.masses[keep] + model.masses[gone])
        if log_reference(new, self.space) == -math.inf:
            return Proposal(new, -math.inf)
        lost = set(process_keys(model)) - set(process_keys(new))
        drawn = _log_drawn(model, gone, lost, self.space, mass=False)
        log_forward = -math.log(len(pairs))
        log_reverse = (-math.log(len(splittable(new, self.space)))
                       - math.log(len(split_partners(new, keep, self.space)))
                       - math.log(MERGE_DISTANCE) - math.log(2.0) + drawn)
        return self._ratio(model, new, log_reverse, log_forward)


class Split(Move):
    """Reverse of Merge: m -> (m + d, m - d), d ~ U(-100, 100) GeV, the new particle's
    decays and multipliers drawn from the reference."""

    name, reverse = "split", "merge"

    def propose(self, model, rng):
        options = splittable(model, self.space)
        if not options:
            return None
        keep = options[rng.integers(len(options))]
        partners = split_partners(model, keep, self.space)
        gone = partners[rng.integers(len(partners))]
        half = float(rng.uniform(-0.5, 0.5) * MERGE_DISTANCE)
        new = model.copy()
        mean = model.masses[keep]
        new.masses[keep], new.masses[gone] = mean + half, mean - half
        new.decays[gone] = draw_decays(gone, new, rng)
        fresh = _draw_new_multipliers(model, new, rng, self.space)
        if log_reference(new, self.space) == -math.inf:
            return Proposal(new, -math.inf)
        drawn = _log_drawn(new, gone, fresh, self.space, mass=False)
        log_forward = (-math.log(len(options)) - math.log(len(partners))
                       - math.log(MERGE_DISTANCE) - math.log(2.0) + drawn)
        log_reverse = -math.log(len(mergeable(new)))
        return self._ratio(model, new, log_reverse, log_forward)


def default_moves(space: Space, mass_steps: Sequence[float] = MASS_STEPS,
                  mix: int = MOVE_MIX) -> List[Tuple[Move, float]]:
    """The walker's move mix (weights are relative); ``mass_steps``: ChangeMass' (and
    ShiftSpectrum's) widths in GeV; ``mix``: a version in MOVE_MIXES.  A run records
    both (runs made before they were settings: 150 GeV and mix 1).  ValueError for an
    unknown mix."""
    if mix not in MOVE_MIXES:
        raise ValueError(f"move mix {mix!r}: expected one of {list(MOVE_MIXES)}")
    anchored = mix >= 2
    moves: List[Tuple[Move, float]] = [
        (Unfreeze(space, anchored), 1.0), (Freeze(space, anchored), 1.0),
        (ChangeMass(space, mass_steps), 3.0),
        (JitterBRs(space), 1.0), (OpenChannel(space), 0.5), (CloseChannel(space), 0.5),
        (ScaleMultiplier(space), 1.0), (RedrawMultiplier(space), 0.5),
        (Merge(space), 0.25), (Split(space), 0.25),
    ]
    if mix >= 2:
        moves.append((ShiftSpectrum(space, mass_steps), 1.0))
    return moves


def choose(moves: Sequence[Tuple[Move, float]], rng: np.random.Generator
           ) -> Tuple[Move, float]:
    """Pick a move by weight; also return log(w_reverse / w_move) for the MH ratio."""
    weights = np.array([w for _, w in moves], dtype=float)
    index = int(rng.choice(len(moves), p=weights / weights.sum()))
    move, weight = moves[index]
    if move.reverse is None:
        return move, 0.0
    reverse = [w for m, w in moves if m.name == move.reverse]
    if not reverse:
        raise ValueError(f"move {move.name!r} needs its reverse {move.reverse!r} in the mix")
    return move, math.log(reverse[0] / weight)
