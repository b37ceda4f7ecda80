"""The combiner: which results may be combined, and the best combination (SPEC section 6).

Combinability graph: nodes are informative predictions; two are joined when they are
approximately uncorrelated: different sqrt(s), or different experiments, or, for the
same experiment and energy, listed in the SModelS collaboration's published matrices
(``../shared/combinations/*.yaml``) or in the project's own documented additions
(``database/combinations-additions.yaml``).  Predictions of the same analysis (equal
ids once the database's suffixes -eff, -agg, -ma5, -adl are stripped) are never joined.

Search: the best combination maximises TL(c, mu) = sum_{a in c} w_a(mu),
w_a(mu) = 2 [nll_a(0) - nll_a(mu)], over cliques c and mu in [0, mu_max].  For fixed mu
it is a maximum-weight clique problem, and only nodes with positive weight can help.
Each w_a is unimodal with w_a(0) = 0, so it is positive on an interval (0, r_a): the
r_a cut [0, mu_max] into segments on which the positive set is fixed, and on each
segment the optimum is one of the maximal cliques of the positive nodes, maximised over
mu in the segment (see ``best_combination``).  Exact, singletons included.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import networkx as nx
import numpy as np
import yaml
from scipy import optimize

from .exceptions import CombinerError
from .likelihood import NllCurve

logger = logging.getLogger(__name__)

MATRICES_ENV = "PROTOMODELS_COMBINATIONS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
ADDITIONS = REPO_ROOT / "database" / "combinations-additions.yaml"
_SUFFIX = re.compile(r"(-(eff|agg|ma5|adl|strong|ewk|hino|multibin|exclusive|inclusive))+$")


def base_id(analysis_id: str) -> str:
    """Analysis id without the database's suffixes: the same analysis is never combined."""
    return _SUFFIX.sub("", analysis_id)


def matrices_dir() -> Path:
    env = os.environ.get(MATRICES_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "combinations"
    if not path.is_dir():
        raise CombinerError(f"combinability matrices not found at {path}; set {MATRICES_ENV} "
                            "to the folder holding ATLAS13.yaml, CMS13.yaml, ...")
    return path


class CombinabilityMatrix:
    """Symmetric set of combinable analysis-id pairs of the same experiment and energy."""

    def __init__(self, pairs: Iterable[Tuple[str, str]]):
        self._pairs: Set[frozenset] = {frozenset(p) for p in pairs if p[0] != p[1]}

    @classmethod
    def load(cls, directory: Path | None = None, additions: Path | None = ADDITIONS
             ) -> "CombinabilityMatrix":
        directory = directory or matrices_dir()
        files = sorted(directory.glob("*.yaml"))
        if not files:
            raise CombinerError(f"{directory}: no *.yaml combinability matrices")
        if additions is not None and additions.is_file():
            files.append(additions)
        pairs: List[Tuple[str, str]] = []
        for path in files:
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as error:
                raise CombinerError(f"{path}: malformed YAML ({error})") from None
            if not isinstance(data, dict):
                raise CombinerError(f"{path}: expected 'ANALYSIS-ID: [ids]' entries")
            for key, others in data.items():
                if not isinstance(others, list):
                    raise CombinerError(f"{path}: entry {key!r} must be a list of analysis ids")
                pairs.extend((str(key), str(other)) for other in others)
        logger.debug("loaded %d combinable pairs from %d files", len(pairs), len(files))
        return cls(pairs)

    def combinable(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._pairs


@dataclass(frozen=True)
class ResultKey:
    """What decides combinability of a prediction."""

    analysis_id: str
    experiment: str
    sqrts: int


def combinable(a: ResultKey, b: ResultKey, matrix: CombinabilityMatrix) -> bool:
    if base_id(a.analysis_id) == base_id(b.analysis_id):
        return False
    if a.sqrts != b.sqrts or a.experiment != b.experiment:
        return True
    return matrix.combinable(a.analysis_id, b.analysis_id)


def combinability_graph(keys: Sequence[ResultKey], matrix: CombinabilityMatrix) -> nx.Graph:
    """Nodes 0..n-1 (indices into ``keys``), edges between combinable predictions."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(keys)))
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if combinable(keys[i], keys[j], matrix):
                graph.add_edge(i, j)
    return graph


@dataclass(frozen=True)
class Combination:
    """The best combination: members (node indices), its mu_hat and TL(c, mu_hat)."""

    members: Tuple[int, ...]
    mu_hat: float
    tl: float


EMPTY = Combination(members=(), mu_hat=0.0, tl=0.0)


class _Weights:
    """w_a(mu) = 2 [nll_a(0) - nll_a(mu)] for a set of curves."""

    def __init__(self, curves: Sequence[NllCurve]):
        self.curves = curves
        self.nll0 = np.array([float(c(0.0)) for c in curves])

    def at(self, index: int, mu: float) -> float:
        return 2.0 * (self.nll0[index] - float(self.curves[index](mu)))

    def on(self, index: int, grid: np.ndarray) -> np.ndarray:
        return 2.0 * (self.nll0[index] - np.asarray(self.curves[index](grid), dtype=float))

    def total(self, members: Sequence[int], mu: float) -> float:
        return sum(self.at(i, mu) for i in members)


SCAN = 16  # intervals of the scan of each segment


def _refine(func, grid: np.ndarray, values: np.ndarray) -> Tuple[float, float]:
    """(max, argmax) of ``func`` given its scan: bounded Brent around the best point."""
    k = int(np.argmax(values))
    best = (float(values[k]), float(grid[k]))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if b > a:
        res = optimize.minimize_scalar(lambda m: -func(m), bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-9 * max(grid[-1], 1e-12)})
        if -res.fun > best[0]:
            best = (float(-res.fun), float(res.x))
    return best


def _scan_bound(values: np.ndarray) -> float:
    """An upper bound of a concave function from its scan on a uniform grid.

    On each interval a concave function lies below the extension of a neighbouring
    secant, so it never exceeds the largest sample by more than the largest step."""
    return float(values.max() + np.abs(np.diff(values)).max())


def best_combination(curves: Sequence[NllCurve], graph: nx.Graph, mu_max: float) -> Combination:
    """Global maximum of TL(c, mu) over cliques c of ``graph`` and mu in [0, mu_max].

    ``curves[i]`` is the nll curve of node i, unimodal on [0, mu_max] with its minimum at
    ``mu_hat`` (clipped into the range), so w_i is positive exactly on (0, r_i).  Between
    consecutive r_i the set P of positive nodes is fixed, and for any mu there the best
    combination is a maximal clique of the graph restricted to P (all its weights are
    positive, extending a clique never lowers TL).  So the exact optimum is the best, over
    these segments and the maximal cliques of each, of the 1-D maximum of TL(C, mu).
    """
    if not curves or mu_max <= 0:
        return EMPTY
    weights = _Weights(curves)
    ends: Dict[int, float] = {}
    for i, curve in enumerate(curves):
        mode = min(max(curve.mu_hat, 0.0), mu_max)
        if mode <= 0 or weights.at(i, mode) <= 0:
            continue  # no excess: never positive on (0, mu_max]
        if weights.at(i, mu_max) > 0:
            ends[i] = mu_max
        else:
            ends[i] = float(optimize.brentq(lambda m: weights.at(i, m), mode, mu_max,
                                            xtol=1e-12 * mu_max))
    if not ends:
        return EMPTY
    best = (0.0, 0.0, ())
    lo = 0.0
    cliques_seen = refined = 0
    for hi in sorted(set(ends.values())):
        positive = [i for i, end in ends.items() if end >= hi]
        grid = np.linspace(lo, hi, SCAN + 1)
        rows = {i: weights.on(i, grid) for i in positive}
        scans = []
        for clique in nx.find_cliques(graph.subgraph(positive)):
            values = np.sum([rows[i] for i in clique], axis=0)
            scans.append((_scan_bound(values), len(scans), clique, values))
        cliques_seen += len(scans)
        # Refine the most promising first; a clique whose bound cannot beat the best
        # found so far is skipped (the sums are concave here, see _scan_bound).
        for bound, _, clique, values in sorted(scans, key=lambda s: (-s[0], s[1])):
            if bound <= best[0]:
                break
            refined += 1
            tl, mu = _refine(lambda m: weights.total(clique, m), grid, values)
            if tl > best[0]:
                best = (tl, mu, tuple(sorted(clique)))
        lo = hi
    tl, mu, members = best
    logger.debug("combiner: %d useful nodes, %d segment cliques (%d refined), TL=%.6g at "
                 "mu=%.6g", len(ends), cliques_seen, refined, tl, mu)
    if not members:
        return EMPTY
    # Members whose weight vanished at the optimum (a segment edge) add nothing: drop them.
    members = tuple(i for i in members if weights.at(i, mu) > 0) or members
    return Combination(members=members, mu_hat=mu, tl=weights.total(members, mu))
