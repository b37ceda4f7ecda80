"""The Metropolis-Hastings loop: it knows moves and a score, no physics (SPEC section 7).

``sample`` is a generator yielding one ``Step`` per proposal, like emcee's: the caller
decides what to store, when to checkpoint and when to stop.  The target is
exp(K / 2T) times the moves' reference measure (see ``moves``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Tuple

import numpy as np

from .model import ProtoModel
from .moves import Move, choose


@dataclass
class Step:
    """One proposal: which move, whether it was accepted, and the state after it."""

    step: int
    move: str
    accepted: bool
    K: float
    model: ProtoModel


def sample(model: ProtoModel, K: float, score: Callable[[ProtoModel], float],
           moves: Sequence[Tuple[Move, float]], rng: np.random.Generator, steps: int,
           temperature: float = 1.0, first_step: int = 1) -> Iterator[Step]:
    """Run ``steps`` Metropolis-Hastings steps from ``model`` (whose K is given)."""
    for step in range(first_step, first_step + steps):
        move, log_weights = choose(moves, rng)
        proposal = move.propose(model, rng)
        accepted = False
        if proposal is not None and proposal.log_ratio > -math.inf:
            new_K = score(proposal.model)
            log_alpha = (new_K - K) / (2.0 * temperature) + proposal.log_ratio + log_weights
            if log_alpha >= 0 or rng.random() < math.exp(log_alpha):
                model, K, accepted = proposal.model, new_K, True
        yield Step(step=step, move=move.name, accepted=accepted, K=K, model=model)
