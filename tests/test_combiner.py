"""Tests of protomodels.combiner (SPEC section 6).

- base_id / combinable / combinability_graph follow the combinability rules, with a tiny
  hand-made CombinabilityMatrix;
- CombinabilityMatrix.load() reads the real published matrices (pairs checked against
  the raw YAML parsed here) and turns malformed files into CombinerError;
- best_combination is checked against a brute force written here: every clique
  (networkx.enumerate_all_cliques), each maximised over mu on a dense grid plus bounded
  Brent refinement, and the empty combination (TL = 0); plus hand-computed cases.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from scipy import optimize

from protomodels import combiner
from protomodels.combiner import (CombinabilityMatrix, ResultKey, base_id,
                                  best_combination, combinability_graph, combinable)
from protomodels.exceptions import CombinerError
from protomodels.likelihood import TabulatedNll, TruncatedGaussian

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MATRICES = (REPO / ".." / "shared" / "combinations").resolve()


# ---------------------------------------------------------------- base_id / combinable

@pytest.mark.parametrize("raw, stripped", [
    ("ATLAS-SUSY-2018-04-eff", "ATLAS-SUSY-2018-04"),
    ("CMS-SUS-16-039-agg", "CMS-SUS-16-039"),
    ("ATLAS-SUSY-2016-07-ma5", "ATLAS-SUSY-2016-07"),
    ("CMS-SUS-16-033-adl", "CMS-SUS-16-033"),
    ("CMS-PAS-SUS-16-052-agg", "CMS-PAS-SUS-16-052"),
    ("ATLAS-SUSY-2018-06-eff-ma5", "ATLAS-SUSY-2018-06"),
    ("ATLAS-SUSY-2019-08-multibin", "ATLAS-SUSY-2019-08"),
    ("CMS-SUS-19-006", "CMS-SUS-19-006"),
    ("CMS-PAS-EXO-16-036", "CMS-PAS-EXO-16-036"),
    ("ATLAS-CONF-2013-047", "ATLAS-CONF-2013-047"),
])
def test_base_id(raw, stripped):
    assert base_id(raw) == stripped
    assert base_id(stripped) == stripped  # idempotent


def test_base_id_only_strips_at_the_end():
    assert base_id("ATLAS-eff-2018-04") == "ATLAS-eff-2018-04"
    assert base_id("CMS-SUS-16-039-aggx") == "CMS-SUS-16-039-aggx"


TINY = CombinabilityMatrix([("A-1", "A-2")])


def test_combinable_same_experiment_energy_follows_matrix():
    a1, a2, a3 = (ResultKey(f"A-{i}", "ATLAS", 13) for i in (1, 2, 3))
    assert combinable(a1, a2, TINY) and combinable(a2, a1, TINY)  # symmetric
    assert not combinable(a1, a3, TINY) and not combinable(a3, a1, TINY)
    assert not combinable(a2, a3, TINY)
    # the matrix itself is symmetric
    assert TINY.combinable("A-1", "A-2") and TINY.combinable("A-2", "A-1")
    assert not TINY.combinable("A-1", "A-3")
    assert not TINY.combinable("A-1", "A-1")
    # an empty matrix combines nothing of the same experiment and energy
    assert not combinable(a1, a2, CombinabilityMatrix([]))


def test_combinable_different_energy_or_experiment():
    empty = CombinabilityMatrix([])
    assert combinable(ResultKey("A-1", "ATLAS", 8), ResultKey("A-3", "ATLAS", 13), empty)
    assert combinable(ResultKey("A-1", "ATLAS", 13), ResultKey("C-1", "CMS", 13), empty)
    assert combinable(ResultKey("C-1", "CMS", 13), ResultKey("A-1", "ATLAS", 13), empty)
    assert combinable(ResultKey("C-1", "CMS", 8), ResultKey("A-1", "ATLAS", 13), empty)


def test_same_analysis_never_combinable():
    # even when the matrix lists the pair, across energies or experiments
    m = CombinabilityMatrix([("A-1", "A-1-eff"), ("A-1-agg", "A-1-eff")])
    for x, y in [("A-1", "A-1-eff"), ("A-1-agg", "A-1-eff"), ("A-1-ma5", "A-1-adl")]:
        for ex, ey in [("ATLAS", "ATLAS"), ("ATLAS", "CMS")]:
            for sx, sy in [(13, 13), (8, 13)]:
                kx, ky = ResultKey(x, ex, sx), ResultKey(y, ey, sy)
                assert not combinable(kx, ky, m)
                assert not combinable(ky, kx, m)
    assert not combinable(ResultKey("A-1", "ATLAS", 13), ResultKey("A-1", "ATLAS", 13), m)


def test_combinability_graph():
    keys = [ResultKey("A-1", "ATLAS", 13),      # 0
            ResultKey("A-2", "ATLAS", 13),      # 1  matrix: 0-1
            ResultKey("A-3-eff", "ATLAS", 13),  # 2  none with 0, 1
            ResultKey("C-1", "CMS", 13),        # 3  with all ATLAS
            ResultKey("A-1-eff", "ATLAS", 8),   # 4  other energy, but same analysis as 0
            ]
    g = combinability_graph(keys, TINY)
    assert sorted(g.nodes) == [0, 1, 2, 3, 4]
    expected = {(0, 1), (0, 3), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4)}
    assert {tuple(sorted(e)) for e in g.edges} == expected


# ---------------------------------------------------------------- the real matrices

def _raw_pairs(path: Path):
    data = yaml.safe_load(path.read_text())
    return [(k, v) for k, vs in data.items() for v in vs]


def test_load_default_matrices(monkeypatch):
    monkeypatch.delenv(combiner.MATRICES_ENV, raising=False)
    assert DEFAULT_MATRICES.is_dir(), "shared combination matrices missing"
    matrix = CombinabilityMatrix.load()
    cms13 = _raw_pairs(DEFAULT_MATRICES / "CMS13.yaml")
    assert len(cms13) > 100
    # the first listed pair, a known one from the raw file, and a few more: both ways
    assert cms13[0] == ("CMS-EXO-19-001", "CMS-EXO-19-010")
    for a, b in [cms13[0], ("CMS-EXO-19-001", "CMS-SUS-16-039-agg")] + cms13[::37]:
        assert matrix.combinable(a, b) and matrix.combinable(b, a), (a, b)
        assert combinable(ResultKey(a, "CMS", 13), ResultKey(b, "CMS", 13), matrix)
        assert combinable(ResultKey(b, "CMS", 13), ResultKey(a, "CMS", 13), matrix)
    for name in ("ATLAS13.yaml", "ATLAS8.yaml", "CMS8.yaml"):
        for a, b in _raw_pairs(DEFAULT_MATRICES / name)[::11]:
            if a == b:  # ATLAS13.yaml lists some analyses with themselves
                continue
            assert matrix.combinable(b, a), (name, a, b)
    # a pair that is only listed in a comment ("#- ...") is not combinable
    all_pairs = {frozenset(p) for f in DEFAULT_MATRICES.glob("*.yaml") for p in _raw_pairs(f)}
    additions = combiner.ADDITIONS
    if additions.is_file():
        all_pairs |= {frozenset(p) for p in _raw_pairs(additions)}
    key, commented = None, []
    for line in (DEFAULT_MATRICES / "CMS13.yaml").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9-]+):\s*(#.*)?$", line):
            key = m.group(1)
        elif m := re.match(r"^#\s*-\s*([A-Za-z0-9-]+)", line):
            if key and frozenset((key, m.group(1))) not in all_pairs and key != m.group(1):
                commented.append((key, m.group(1)))
    assert commented, "expected some commented-out pairs in CMS13.yaml"
    for a, b in commented:
        assert not matrix.combinable(a, b) and not matrix.combinable(b, a), (a, b)
    # unknown ids
    assert not matrix.combinable("CMS-EXO-19-001", "CMS-NOT-AN-ANALYSIS")


def test_load_via_environment(monkeypatch, tmp_path):
    (tmp_path / "X13.yaml").write_text("X-1:\n- X-2\n- X-3\n")
    monkeypatch.setenv(combiner.MATRICES_ENV, str(tmp_path))
    matrix = CombinabilityMatrix.load(additions=None)
    assert matrix.combinable("X-3", "X-1") and matrix.combinable("X-1", "X-2")
    assert not matrix.combinable("X-2", "X-3")


@pytest.mark.parametrize("text", [
    "A-1: [A-2, A-3\n",            # unterminated flow sequence
    "A-1:\n- A-2\n  - A-3: [\n",   # broken indentation / flow
    "A-1: A-2\n",                  # entry is not a list
    "- A-1\n- A-2\n",              # top level is not a mapping
])
def test_malformed_yaml_raises(tmp_path, text):
    (tmp_path / "GOOD.yaml").write_text("A-5:\n- A-6\n")
    bad = tmp_path / "BAD13.yaml"
    bad.write_text(text)
    with pytest.raises(CombinerError) as info:
        CombinabilityMatrix.load(tmp_path, additions=None)
    assert "BAD13.yaml" in str(info.value)


def test_missing_matrices(tmp_path, monkeypatch):
    with pytest.raises(CombinerError):
        CombinabilityMatrix.load(tmp_path, additions=None)  # no *.yaml
    monkeypatch.setenv(combiner.MATRICES_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CombinerError) as info:
        CombinabilityMatrix.load(additions=None)
    assert "nowhere" in str(info.value)


# ---------------------------------------------------------------- best_combination

def _tl(curves, members, mu):
    return 2.0 * sum(float(curves[i](0.0)) - float(curves[i](mu)) for i in members)


def brute_force(curves, graph, mu_max, n_grid=2001):
    """(best TL, its mu, its clique) over all cliques and the empty combination."""
    grid = np.linspace(0.0, mu_max, n_grid)
    w = np.array([2.0 * (float(c(0.0)) - np.asarray(c(grid), dtype=float)) for c in curves])
    # grid maxima of every clique
    found = []
    for clique in nx.enumerate_all_cliques(graph):
        s = w[clique].sum(axis=0)
        k = int(np.argmax(s))
        found.append((float(s[k]), k, tuple(sorted(clique))))
    if not found:
        return 0.0, 0.0, ()
    found.sort(reverse=True)
    # refinement can raise a grid maximum by at most ~ |TL''| h^2 / 8: bound it generously
    curvature = float(np.abs(np.diff(w, n=2, axis=1)).max(axis=1).sum()) if n_grid > 2 else 0.0
    margin = curvature + 1e-9 * (1.0 + abs(found[0][0]))
    best = (0.0, 0.0, ())
    for value, k, clique in found:
        if value < found[0][0] - margin:
            break
        cand = (value, float(grid[k]), clique)
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, n_grid - 1)]
        res = optimize.minimize_scalar(lambda m: -_tl(curves, clique, m), bounds=(lo, hi),
                                       method="bounded", options={"xatol": 1e-12 * mu_max})
        if -res.fun > cand[0]:
            cand = (float(-res.fun), float(res.x), clique)
        if cand[0] > best[0]:
            best = cand
    return best


def _convex(a, b, m0, c):
    def f(mu):
        d = mu - m0
        return a * d * d + b * d ** 4 + c
    return f


tg_spec = st.tuples(st.just("tg"), st.floats(-3.0, 8.0), st.floats(0.1, 3.0))
tab_spec = st.tuples(st.just("tab"), st.floats(0.0, 4.0), st.floats(0.0, 1.0),
                     st.floats(-2.0, 9.0), st.floats(-20.0, 20.0), st.floats(1.0, 2.0)
                     ).filter(lambda s: s[1] + s[2] > 0.05)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 9))
    mu_max = draw(st.floats(0.2, 10.0))
    specs = draw(st.lists(st.one_of(tg_spec, tab_spec), min_size=n, max_size=n))
    pairs = list(itertools.combinations(range(n), 2))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    flags = draw(st.lists(st.floats(0.0, 1.0), min_size=len(pairs), max_size=len(pairs)))
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(p for p, f in zip(pairs, flags) if f < density)
    return specs, graph, mu_max


def _build(specs, mu_max):
    curves = []
    for spec in specs:
        if spec[0] == "tg":
            curves.append(TruncatedGaussian(mu_hat=spec[1], sigma=spec[2]))
        else:
            _, a, b, m0, c, stretch = spec
            # sampled at least up to mu_max (no clipping kink inside [0, mu_max])
            curves.append(TabulatedNll.sample(_convex(a, b, m0, c), stretch * mu_max, m0, n=12))
    return curves


def _check(curves, graph, mu_max):
    result = best_combination(curves, graph, mu_max)
    tl_bf, mu_bf, clique_bf = brute_force(curves, graph, mu_max)
    # optimum agrees with the brute force
    assert result.tl == pytest.approx(tl_bf, rel=1e-6, abs=1e-6), (result, tl_bf, mu_bf,
                                                                   clique_bf)
    assert 0.0 <= result.mu_hat <= mu_max
    members = result.members
    assert len(set(members)) == len(members)
    assert all(0 <= i < len(curves) for i in members)
    # members form a clique of the graph
    for i, j in itertools.combinations(members, 2):
        assert graph.has_edge(i, j), (members, i, j)
    # tl recomputed from the returned members at the returned mu_hat
    assert result.tl == pytest.approx(_tl(curves, members, result.mu_hat), rel=1e-12, abs=1e-12)
    # can anything be positive at all? (each node at its own clipped mu_hat or on a grid)
    grid = np.linspace(0.0, mu_max, 2001)
    anything = any(_tl(curves, [i], min(max(c.mu_hat, 0.0), mu_max)) > 0
                   or np.any(float(c(0.0)) - np.asarray(c(grid)) > 0)
                   for i, c in enumerate(curves))
    if not anything:
        assert tl_bf == 0.0
        assert members == () and result.tl == 0.0 and result.mu_hat == 0.0
    if tl_bf > 1e-9:
        assert members != () and result.tl > 0.0
    if members:
        assert result.tl > 0.0
    return result


@settings(max_examples=300, deadline=None, derandomize=True)
@given(problems())
def test_best_combination_matches_brute_force(problem):
    specs, graph, mu_max = problem
    _check(_build(specs, mu_max), graph, mu_max)


def test_singletons_best_single_node():
    """No edges: the best single node, TL by hand. For N(mu_hat, sigma) the weight is
    w(mu) = [mu_hat^2 - (mu - mu_hat)^2]/sigma^2, maximal at clip(mu_hat, 0, mu_max)."""
    params = [(1.0, 0.5), (3.0, 1.0), (-1.0, 0.3), (2.5, 2.0), (0.4, 0.2)]
    curves = [TruncatedGaussian(mu_hat=m, sigma=s) for m, s in params]
    graph = nx.empty_graph(len(params))

    def best_single(mu_max):
        out = []
        for i, (m, s) in enumerate(params):
            mu = min(max(m, 0.0), mu_max)
            out.append(((m * m - (mu - m) ** 2) / s ** 2, mu, i))
        return max(out)

    # mu_max = 10: each at its own mu_hat: 4, 9, -, 1.5625, 4 -> node 1 (TL 9 at mu 3)
    # mu_max = 1: node 0 4, node 1 9-4 = 5, node 3 (6.25-2.25)/4 = 1, node 4 4 -> node 1
    # mu_max = 0.3: node 0 (1-0.49)/0.25 = 2.04, node 1 9-7.29 = 1.71,
    #               node 4 (0.16-0.01)/0.04 = 3.75 -> node 4 at mu 0.3
    for mu_max, expect_node, expect_tl, expect_mu in [(10.0, 1, 9.0, 3.0), (1.0, 1, 5.0, 1.0),
                                                      (0.3, 4, 3.75, 0.3)]:
        tl, mu, node = best_single(mu_max)
        assert (node, mu) == (expect_node, expect_mu) and tl == pytest.approx(expect_tl)
        r = best_combination(curves, graph, mu_max)
        assert r.members == (node,)
        assert r.tl == pytest.approx(tl, rel=1e-9)
        assert r.mu_hat == pytest.approx(mu, abs=1e-6)


def test_two_nodes_by_hand():
    """w0 = 1 - (mu-1)^2, w1 = 4 - (mu-2)^2 (sigma = 1): joined, TL = 5 - (mu-1)^2 - (mu-2)^2
    peaks at mu = 1.5 with 4.5 > 4 (node 1 alone); a node with mu_hat < 0 never helps."""
    curves = [TruncatedGaussian(1.0, 1.0), TruncatedGaussian(2.0, 1.0),
              TruncatedGaussian(-0.5, 1.0)]
    full = nx.complete_graph(3)
    r = best_combination(curves, full, 10.0)
    assert r.members == (0, 1)
    assert r.mu_hat == pytest.approx(1.5, abs=1e-7) and r.tl == pytest.approx(4.5, rel=1e-10)
    r = best_combination(curves, nx.empty_graph(3), 10.0)
    assert r.members == (1,) and r.mu_hat == pytest.approx(2.0, abs=1e-7)
    assert r.tl == pytest.approx(4.0, rel=1e-10)
    r = best_combination(curves, full, 1.0)  # capped: at mu=1, 1 + 3 = 4
    assert r.members == (0, 1) and r.mu_hat == pytest.approx(1.0, abs=1e-9)
    assert r.tl == pytest.approx(4.0, rel=1e-10)


def test_no_excess_gives_empty():
    curves = [TruncatedGaussian(-1.0, 1.0), TruncatedGaussian(0.0, 0.5),
              TabulatedNll.sample(_convex(1.0, 0.0, -2.0, 5.0), 4.0, 0.0)]
    for graph in (nx.complete_graph(3), nx.empty_graph(3)):
        r = best_combination(curves, graph, 4.0)
        assert r.members == () and r.tl == 0.0 and r.mu_hat == 0.0
    assert best_combination([], nx.Graph(), 4.0).members == ()
    assert best_combination([TruncatedGaussian(1.0, 1.0)], nx.empty_graph(1), 0.0).members == ()


def test_optimum_near_end_of_a_positive_interval():
    """w_A = 1 - (mu-1)^2 is positive on (0, 2); w_B = [1.9^2 - (mu-1.9)^2]/0.01 is narrow.
    Joined, TL = w_A + w_B peaks at mu* = (2*1 + 200*1.9)/202, just inside A's interval,
    above B alone (361): the search must reach the end of A's positive interval."""
    curves = [TruncatedGaussian(1.0, 1.0), TruncatedGaussian(1.9, 0.1)]
    mu_star = (2.0 * 1.0 + 200.0 * 1.9) / 202.0
    tl_star = (1.0 - (mu_star - 1.0) ** 2) + (1.9 ** 2 - (mu_star - 1.9) ** 2) / 0.01
    assert tl_star > 361.0 + 0.1
    r = best_combination(curves, nx.complete_graph(2), 5.0)
    assert r.members == (0, 1)
    assert r.mu_hat == pytest.approx(mu_star, abs=1e-7)
    assert r.tl == pytest.approx(tl_star, rel=1e-10)
