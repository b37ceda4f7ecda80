"""The Metropolis-Hastings loop: it knows moves and a score, no physics (SPEC section 7).

``sample`` is a generator yielding one ``Step`` per proposal, like emcee's: the caller
decides what to store, when to checkpoint and when to stop.  The target is
exp(K / 2T) times the moves' reference measure (see ``moves``).

With a ``screen`` (a cheap estimate s(x) of K, e.g. ``screening.KSurrogate``) each
proposal is first screened by *delayed acceptance* (Christen and Fox, J. Comput. Graph.
Stat. 14 (2005) 795; SPEC section 9): stage 1 accepts it with the full Metropolis-Hastings
ratio of the move (reference measure, proposal densities and move-selection weights) on
the surrogate target exp(s / 2T); only a survivor is scored, and stage 2 accepts it with
min(1, exp[(K' - K)/2T - (s' - s)/2T]).  With a fixed s the chain's target stays
exp(K / 2T) exactly, whatever s is; a caller that retrains s from the chain's past makes
it an adaptive chain until it stops retraining (``screening``: a recorded schedule, then
frozen).

The score returns K, or, as emcee's log-probability function may, a pair (K, blob): the
blob is whatever the caller wants back with the state (``runs``: the score's record of
the model); the loop only carries it, as ``Step.blob`` of the state after each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .model import ProtoModel
from .moves import Move, choose

ScreenFunction = Callable[[ProtoModel], Optional[float]]  # None: no screen for that model
ScoreFunction = Callable[[ProtoModel], Union[float, Tuple[float, Any]]]  # K, or (K, blob)


@dataclass
class Step:
    """One proposal: which move, whether it was accepted, and the state after it.

    ``screened``: rejected by the screen's first stage, without scoring the proposal.
    ``proposal``/``proposal_K``: the proposal and its K when it was scored (None when
    there was none, it broke a model-space rule, or it was screened out).  ``blob``: the
    score's blob of the state after the step (None for a score that returns K alone)."""

    step: int
    move: str
    accepted: bool
    K: float
    model: ProtoModel
    screened: bool = False
    proposal: Optional[ProtoModel] = None
    proposal_K: Optional[float] = None
    blob: Any = None


def _scored(score: ScoreFunction, model: ProtoModel) -> Tuple[float, Any]:
    value = score(model)
    if isinstance(value, tuple):
        return float(value[0]), value[1]
    return float(value), None


def second_stage_log_ratio(K_new: float, K_old: float, s_new: float, s_old: float,
                           temperature: float) -> float:
    """log of delayed acceptance's second-stage ratio, exp[(K'-K)/2T] / exp[(s'-s)/2T]
    (Christen and Fox 2005, eq. 2.2 with the first stage of eq. 2.1): it removes what the
    first stage already charged for the surrogate's change."""
    return (K_new - K_old) / (2.0 * temperature) - (s_new - s_old) / (2.0 * temperature)


def sample(model: ProtoModel, K: float, score: ScoreFunction,
           moves: Sequence[Tuple[Move, float]], rng: np.random.Generator, steps: int,
           temperature: float = 1.0, first_step: int = 1,
           screen: Optional[ScreenFunction] = None, blob: Any = None) -> Iterator[Step]:
    """Run ``steps`` Metropolis-Hastings steps from ``model`` (whose K, and the score's
    blob if any, are given); with ``screen``, by delayed acceptance (module docstring).
    ``screen`` is called afresh at every step, for the state and then the proposal, so a
    caller may replace the surrogate it wraps between two steps; a step where it returns
    None for either is a plain one (exact: the choice is symmetric in the two states).
    A plain step draws
    exactly the random numbers of plain Metropolis-Hastings; a screened one draws a
    uniform for each stage whose log ratio is negative."""
    for step in range(first_step, first_step + steps):
        move, log_weights = choose(moves, rng)
        proposal = move.propose(model, rng)
        accepted = screened = False
        scored: Optional[float] = None
        scored_blob: Any = None
        if proposal is not None and proposal.log_ratio > -math.inf:
            log_q = proposal.log_ratio + log_weights
            s_old = None if screen is None else screen(model)
            s_new = None if s_old is None else screen(proposal.model)
            if s_old is None or s_new is None:  # a plain step (a choice symmetric in x, x')
                scored, scored_blob = _scored(score, proposal.model)
                log_alpha = (scored - K) / (2.0 * temperature) + log_q
            else:
                log_first = (s_new - s_old) / (2.0 * temperature) + log_q
                if log_first >= 0 or rng.random() < math.exp(log_first):
                    scored, scored_blob = _scored(score, proposal.model)
                    log_alpha = second_stage_log_ratio(scored, K, s_new, s_old, temperature)
                else:
                    screened, log_alpha = True, -math.inf
            if not screened and (log_alpha >= 0 or rng.random() < math.exp(log_alpha)):
                model, K, blob, accepted = proposal.model, scored, scored_blob, True
        yield Step(step=step, move=move.name, accepted=accepted, K=K, model=model,
                   screened=screened,
                   proposal=proposal.model if scored is not None else None, proposal_K=scored,
                   blob=blob)
