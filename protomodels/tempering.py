"""Replica exchange (parallel tempering) between walker chains; no physics.

A run's chains sit on the rungs of a temperature ladder T_1 < ... < T_R.  Chain ``c``
belongs to column ``c // R`` and rung ``c % R`` and keeps its temperature for the whole
run; each is an exact Metropolis-Hastings chain on exp(K / 2T) times the moves'
reference measure (``walker.sample``).  With more walkers than rungs the ladder is
repeated: ``columns = ceil(walkers / R)`` copies, ``R x columns`` chains in all (so
``--walkers`` is rounded up to whole ladders; the processes that run them are a separate
matter, see ``runs``).

Every ``swap_every`` steps (at the step numbers that are multiples of it) the chains
stop, and in each column the states of adjacent rungs are proposed for exchange, from
the hottest pair down to the coldest, each accepted with probability

    min(1, exp[(K_i - K_j) (1/(2 T_j) - 1/(2 T_i))])

for the chain at T_i holding K_i and the chain at T_j holding K_j: the product of the two
targets after the exchange over before it; the reference measure is the same at every
temperature and cancels.  Every proposal consumes one uniform number from the run's swap
stream (its own child of the run's SeedSequence), accepted or not, so the stream's state
depends only on the number of sweeps.  The chains at T = 1 then sample the posterior
exactly; colder rungs optimise, hotter ones cross between basins (Earl & Deem 2005;
Vousden, Farr & Mandel 2016 for the ladder; emcee's PTSampler and ptemcee do the same
sweep).  The ladder is fixed: no adaptation.

The swap decisions of a run are journalled in ``tempering.json`` (the step through which
swaps are done, the swap stream's state, and a pending sweep's new chain states) and
logged in ``swaps.jsonl``, so that a run killed between writing the chains' new states
and recording the sweep repeats nothing and skips nothing when resumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .schemas import schema_id

#: The default ladder (README, "Search"): geometric from T = 0.1 (which optimises) to
#: T = 1 (the posterior), ratio 10**0.2 = 1.58 between rungs.  The first ladder, 0.1,
#: 0.25, 0.5, 1, 2, 4, swapped only 4-16% of the time between its two coldest rungs, and
#: its T = 2 and 4 chains sat in many-particle models with K of -3 to -7 that never
#: helped the cold end (README, "Search").
DEFAULT_LADDER: Tuple[float, ...] = (0.1, 0.16, 0.25, 0.4, 0.63, 1.0)
DEFAULT_SWAP_EVERY = 10
TEMPERING_SCHEMA = schema_id("tempering")


@dataclass(frozen=True)
class Ladder:
    """The temperatures (ascending, each > 0) and how many copies (columns) of them run."""

    temperatures: Tuple[float, ...]
    columns: int = 1

    def __post_init__(self) -> None:
        temps = tuple(float(t) for t in self.temperatures)
        if not temps or any(not t > 0 for t in temps) or any(b <= a for a, b in zip(temps, temps[1:])):
            raise ValueError(f"ladder {list(self.temperatures)}: temperatures must be positive "
                             "and strictly increasing")
        if self.columns < 1:
            raise ValueError(f"ladder: {self.columns} columns")
        object.__setattr__(self, "temperatures", temps)

    @classmethod
    def for_walkers(cls, temperatures: Sequence[float], walkers: int) -> "Ladder":
        """Enough copies of the ladder for ``walkers`` chains: ceil(walkers / rungs)."""
        return cls(tuple(temperatures), max(1, math.ceil(walkers / len(temperatures))))

    @property
    def rungs(self) -> int:
        return len(self.temperatures)

    @property
    def chains(self) -> int:
        return self.rungs * self.columns

    def temperature(self, chain: int) -> float:
        return self.temperatures[chain % self.rungs]

    def chain(self, column: int, rung: int) -> int:
        return column * self.rungs + rung

    def at(self, temperature: float) -> List[int]:
        """The chains at ``temperature`` (e.g. the T = 1 chains that sample the posterior)."""
        return [c for c in range(self.chains) if math.isclose(self.temperature(c), temperature)]


def log_swap_ratio(K_i: float, T_i: float, K_j: float, T_j: float) -> float:
    """ln of the acceptance ratio of exchanging the states of a chain at T_i (holding K_i)
    and one at T_j (holding K_j): (K_i - K_j)(1/(2 T_j) - 1/(2 T_i)).  A state that could
    not be scored (K = -inf) never moves to a colder rung; two such states: 0."""
    if K_i == K_j:
        return 0.0
    value = (K_i - K_j) * (1.0 / (2.0 * T_j) - 1.0 / (2.0 * T_i))
    return -math.inf if math.isnan(value) else value


@dataclass
class Swap:
    """One proposed exchange between adjacent rungs of one column."""

    step: int
    column: int
    rungs: Tuple[int, int]
    chains: Tuple[int, int]
    K: Tuple[float, float]
    log_ratio: float
    accepted: bool


def sweep(Ks: Sequence[float], ladder: Ladder, rng: np.random.Generator,
          step: int) -> Tuple[List[int], List[Swap]]:
    """One sweep of swap proposals at ``step`` over the chains' current K (module
    docstring).  Returns ``origin`` (chain c holds, after the sweep, the state chain
    ``origin[c]`` held before it) and the proposals made."""
    if len(Ks) != ladder.chains:
        raise ValueError(f"{len(Ks)} K values for {ladder.chains} chains")
    origin = list(range(ladder.chains))
    K = [float(k) for k in Ks]
    swaps: List[Swap] = []
    for column in range(ladder.columns):
        for rung in range(ladder.rungs - 2, -1, -1):
            a, b = ladder.chain(column, rung), ladder.chain(column, rung + 1)
            log_ratio = log_swap_ratio(K[a], ladder.temperatures[rung], K[b],
                                       ladder.temperatures[rung + 1])
            u = rng.random()
            accepted = log_ratio >= 0 or u < math.exp(log_ratio)
            swaps.append(Swap(step, column, (rung, rung + 1), (a, b), (K[a], K[b]),
                              log_ratio, accepted))
            if accepted:
                origin[a], origin[b] = origin[b], origin[a]
                K[a], K[b] = K[b], K[a]
    return origin, swaps


def boundaries(start: int, end: int, swap_every: int, rungs: int) -> List[int]:
    """The step numbers in (start, end] at which the chains stop: every multiple of
    ``swap_every`` (a sweep follows) and ``end``; a one-rung ladder never stops early."""
    if rungs < 2:
        return [end] if end > start else []
    stops = list(range((start // swap_every + 1) * swap_every, end + 1, swap_every))
    if not stops or stops[-1] != end:
        stops.append(end)
    return [s for s in stops if s > start]


def acceptance_by_pair(swaps: Sequence[Dict[str, Any]], ladder: Ladder) -> List[Dict[str, Any]]:
    """Swap acceptance per adjacent rung pair from ``swaps.jsonl`` records."""
    table = []
    for rung in range(ladder.rungs - 1):
        mine = [s for s in swaps if tuple(s["rungs"]) == (rung, rung + 1)]
        table.append({"T": [ladder.temperatures[rung], ladder.temperatures[rung + 1]],
                      "proposed": len(mine), "accepted": sum(bool(s["accepted"]) for s in mine),
                      "acceptance": (sum(bool(s["accepted"]) for s in mine) / len(mine)) if mine else None})
    return table


class TemperingStore:
    """A run's swap journal: ``tempering.json`` (written atomically) and ``swaps.jsonl``."""

    def __init__(self, out: Path):
        self.path = Path(out) / "tempering.json"
        self.log = Path(out) / "swaps.jsonl"

    def load(self, seed: np.random.SeedSequence) -> Dict[str, Any]:
        """The journal, or a fresh one whose swap stream starts from ``seed``.  Raises
        ``RunError`` naming the file when it is unreadable or not of its schema."""
        from .atomic import read_json_record
        from .exceptions import RunError

        if not self.path.exists():
            rng = np.random.Generator(np.random.PCG64(seed))
            return {"schema": TEMPERING_SCHEMA, "swapped_through": 0,
                    "rng": rng.bit_generator.state, "pending": None}
        return read_json_record(self.path, TEMPERING_SCHEMA, RunError, "swap journal")

    def begin(self, journal: Dict[str, Any], step: int, states: Dict[int, Dict[str, Any]],
              swaps: List[Swap], rng_after: Dict[str, Any]) -> Dict[str, Any]:
        """Record a decided sweep before any chain's state changes."""
        from .atomic import write_json_atomic

        journal = dict(journal, pending={"step": step, "states": {str(c): s for c, s in states.items()},
                                         "swaps": [asdict(s) for s in swaps], "rng": rng_after})
        write_json_atomic(self.path, journal)
        return journal

    def finish(self, journal: Dict[str, Any]) -> Dict[str, Any]:
        """After the chains hold their new states: log the sweep and close it."""
        from .atomic import write_json_atomic

        pending = journal["pending"]
        # a sweep logged before a kill is logged once
        kept = [s for s in self.read_swaps(check=False) if s["step"] < pending["step"]]
        lines = "".join(json.dumps(s, sort_keys=True) + "\n" for s in kept + pending["swaps"])
        from .atomic import write_text_atomic
        write_text_atomic(self.log, lines)
        journal = {"schema": TEMPERING_SCHEMA, "swapped_through": pending["step"],
                   "rng": pending["rng"], "pending": None}
        write_json_atomic(self.path, journal)
        return journal

    def read_swaps(self, check: bool = True) -> List[Dict[str, Any]]:
        """The logged swap proposals (``swaps.jsonl``: one ``Swap`` a line), each checked
        against the shipped schema ``swap`` (version 1 belongs to run.json's
        ``protomodels.run/1``): a damaged line is a ``RunError`` naming the file, the line
        and the JSON path.  ``finish`` rewrites the log atomically, so not even a killed
        run leaves half a line.  ``check=False`` (``finish``, at every sweep) checks only
        the JSON and the step."""
        from .exceptions import RunError
        from .schemas import validate

        if not self.log.exists():
            return []
        swaps = []
        for number, line in enumerate(self.log.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            source = f"{self.log}:{number}"
            try:
                swap = json.loads(line)
            except json.JSONDecodeError as error:
                raise RunError(f"{source}: corrupt swap line ({error})") from None
            if check:
                validate(swap, "swap", source, RunError)
            elif not (isinstance(swap, dict) and isinstance(swap.get("step"), int)):
                raise RunError(f"{source}: $.step: missing or not an integer")
            swaps.append(swap)
        return swaps


def swap_stream(seed: int, chains: int) -> np.random.SeedSequence:
    """The swap stream's seed: the run's SeedSequence child after the chains' own."""
    return np.random.SeedSequence(seed).spawn(chains + 1)[chains]


def pending_states(journal: Dict[str, Any]) -> Optional[Dict[int, Dict[str, Any]]]:
    pending = journal.get("pending")
    if not pending:
        return None
    return {int(c): s for c, s in pending["states"].items()}
