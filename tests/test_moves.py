"""Moves keep every model-space rule, and the sampler reproduces exp(K/2) exactly."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from protomodels.model import LSP, ProtoModel
from protomodels.moves import Space, default_moves, log_reference
from protomodels.xsec import effective_xsecs
from protomodels.predictor import decompose
from protomodels.slha import read_slha, to_slha, write_slha
from protomodels.walker import sample


def start_model() -> ProtoModel:
    return ProtoModel(masses={LSP: 300.0})


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_move_sequences_keep_the_invariants(seed, tmp_path_factory):
    """Random move sequences (every valid proposal accepted, 25 x 160 moves): each state
    passes validation, has finite reference density, is read back identically from SLHA,
    and every 8th is accepted by SModelS' decomposition."""
    space = Space()
    moves = default_moves(space)
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("moves") / "m.slha"
    for step in sample(start_model(), 0.0, lambda m: 0.0, moves, rng, steps=160, temperature=1e9):
        step.model.validate()
        assert log_reference(step.model, space) > -math.inf
        if not step.accepted:
            continue
        xsecs = effective_xsecs(step.model)
        write_slha(step.model, xsecs, path)
        back = read_slha(path)
        assert back.masses == step.model.masses
        assert set(back.decays) == set(step.model.decays)
        for pid, brs in step.model.decays.items():
            assert back.decays[pid] == pytest.approx(brs, rel=1e-12)
        assert back.ssm == step.model.ssm
        if step.step % 8 == 0 and any(v > 0 for v in xsecs.values()):
            decompose(to_slha(step.model, xsecs))  # SModelS accepts the file


def test_every_move_type_gets_accepted():
    rng = np.random.default_rng(11)
    seen = Counter()
    for step in sample(start_model(), 0.0, lambda m: 0.0, default_moves(Space()), rng,
                       steps=4000, temperature=1e9):
        seen[step.move] += step.accepted
    assert all(seen[m.name] > 0 for m, _ in default_moves(Space())), seen


def fake_K(model: ProtoModel) -> float:
    """An analytic score of the particle content only."""
    table = {(): 0.0, (1000021,): 3.0, (1000006,): -1.0, (1000006, 1000021): 4.0,
             (1000024,): 1.0, (1000021, 1000024): 2.0, (1000006, 1000024): 0.5,
             (1000006, 1000021, 1000024): 5.0}
    return table[tuple(sorted(p for p in model.masses if p != LSP))]


SETS = [(), (1000021,), (1000006,), (1000024,), (1000006, 1000021), (1000021, 1000024),
        (1000006, 1000024), (1000006, 1000021, 1000024)]


def set_frequencies_p_value(steps: int = 120000, seed: int = 2024, temperature: float = 1.0,
                            **sample_options) -> float:
    """The chi-square p-value of the 8 particle sets' visit frequencies (thinned) against
    exp(fake_K / 2T) normalised, for a chain of ``steps`` steps of ``sample``."""
    space = Space(candidates=(LSP, 1000021, 1000006, 1000024),
                  mass_ranges={LSP: (50.0, 90.0), 1000021: (400.0, 2400.0),
                               1000006: (600.0, 2400.0), 1000024: (350.0, 2400.0)})
    rng = np.random.default_rng(seed)
    model = start_model()
    model.masses[LSP] = 70.0
    counts = Counter()
    burn, thin = 2000, 40  # the particle set is autocorrelated over ~tens of steps
    moves = [(m, w * (2.5 if m.name == "unfreeze" else 1.0)) for m, w in default_moves(space)]
    for step in sample(model, fake_K(model), fake_K, moves, rng, steps=steps,
                       temperature=temperature, **sample_options):
        if step.step > burn and step.step % thin == 0:
            counts[tuple(sorted(p for p in step.model.masses if p != LSP))] += 1
    weights = np.array([math.exp(fake_K(ProtoModel(masses={LSP: 70.0, **{p: 1000.0 for p in s}}))
                                 / (2.0 * temperature)) for s in SETS])
    observed = np.array([counts[s] for s in SETS], dtype=float)
    expected = weights / weights.sum() * observed.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def test_visit_frequencies_match_exp_half_K():
    """With K depending only on which particles exist, the chain's visit frequencies of
    the 8 particle sets must be exp(K/2) normalised: a chi-square test (fixed seed)."""
    assert set_frequencies_p_value() > 0.001


def test_reference_measure_of_decays_is_sampled_exactly():
    """With K = 0 the chain samples the reference itself: with four open gluino channels
    the support size k has probability C(4, k)/15, within a 2-channel support each BR
    is uniform, and the gluino mass is uniform on its range although Unfreeze draws half
    its masses near the LSP (its proposal density must cancel exactly). Unequal move
    weights check the selection-probability correction too."""
    from protomodels.moves import (ChangeMass, CloseChannel, Freeze, JitterBRs, OpenChannel,
                                   ShiftSpectrum, Unfreeze)
    space = Space(candidates=(LSP, 1000021),
                  mass_ranges={LSP: (50.0, 90.0), 1000021: (600.0, 2400.0)})
    moves = [(Unfreeze(space), 2.0), (Freeze(space), 0.7), (ChangeMass(space), 1.0),
             (JitterBRs(space), 1.0), (OpenChannel(space), 1.5), (CloseChannel(space), 0.4),
             (ShiftSpectrum(space, 10.0), 0.5)]
    rng = np.random.default_rng(7)
    model = ProtoModel(masses={LSP: 70.0})
    sizes, shares, present, masses = Counter(), [], 0, []
    steps = 60000
    for step in sample(model, 0.0, lambda m: 0.0, moves, rng, steps=steps):
        if step.step <= 2000 or step.step % 5:
            continue
        decays = step.model.decays.get(1000021)
        if decays is None:
            continue
        present += 1
        masses.append(step.model.masses[1000021])
        sizes[len(decays)] += 1
        if len(decays) == 2:
            shares.append(decays[min(decays)])
    # the particle set: {LSP} and {LSP, Xg} have equal reference weight
    observed = np.array([sizes[k] for k in (1, 2, 3, 4)], dtype=float)
    expected = np.array([4, 6, 4, 1], dtype=float) / 15 * observed.sum()
    assert stats.chisquare(observed, expected).pvalue > 0.001, (observed, expected)
    assert stats.kstest(shares[::5], "uniform").pvalue > 0.001
    assert stats.kstest(masses[::10], "uniform", args=(600.0, 1800.0)).pvalue > 0.001
    fraction = present / ((steps - 2000) / 5)
    assert abs(fraction - 0.5) < 0.05, fraction


def test_merge_and_split_keep_the_set_frequencies():
    """Two light-quark partners in overlapping ranges merge and split often; with K from
    the particle set only, the set frequencies must still be exp(K/2) normalised."""
    from protomodels.moves import Freeze, JitterBRs, ChangeMass, Merge, Split, Unfreeze
    space = Space(candidates=(LSP, 1000001, 1000002),
                  mass_ranges={LSP: (50.0, 90.0), 1000001: (400.0, 700.0),
                               1000002: (400.0, 700.0)})
    k_of = {(): 0.0, (1000001,): 2.0, (1000002,): 1.0, (1000001, 1000002): 3.0}

    def K(model):
        return k_of[tuple(sorted(p for p in model.masses if p != LSP))]

    moves = [(Unfreeze(space), 1.0), (Freeze(space), 1.0), (ChangeMass(space, 100.0), 1.0),
             (JitterBRs(space), 0.5), (Merge(space), 1.5), (Split(space), 0.8)]
    rng = np.random.default_rng(99)
    model = ProtoModel(masses={LSP: 70.0})
    counts, merges = Counter(), 0
    for step in sample(model, 0.0, K, moves, rng, steps=120000):
        merges += step.accepted and step.move in ("merge", "split")
        if step.step > 2000 and step.step % 20 == 0:
            counts[tuple(sorted(p for p in step.model.masses if p != LSP))] += 1
    sets = list(k_of)
    observed = np.array([counts[s] for s in sets], dtype=float)
    weights = np.exp(np.array([k_of[s] for s in sets]) / 2)
    expected = weights / weights.sum() * observed.sum()
    assert merges > 1000
    assert stats.chisquare(observed, expected).pvalue > 0.001, (observed, expected)


def test_mass_move_with_one_width_draws_as_before_and_several_widths_mix():
    """One width: the same random numbers as the single-width move of earlier runs
    (their resumes continue exactly); several: each width is used."""
    import numpy as np

    from protomodels.model import LSP, ProtoModel
    from protomodels.moves import ChangeMass, Space
    from protomodels.runs import legacy_config

    model = ProtoModel(masses={LSP: 500.0})
    one, listed = ChangeMass(Space(), 150.0), ChangeMass(Space(), [150.0])
    rng_a, rng_b, rng_old = (np.random.default_rng(4) for _ in range(3))
    for _ in range(20):
        rng_old.integers(1)  # the old move: which particle, then its Gaussian step
        expected = 500.0 + rng_old.normal(0.0, 150.0)
        assert one.propose(model, rng_a).model.masses[LSP] == expected
        assert listed.propose(model, rng_b).model.masses[LSP] == expected
    steps = [abs(ChangeMass(Space(), (20.0, 400.0)).propose(model, np.random.default_rng(s))
                 .model.masses[LSP] - 500.0) for s in range(400)]
    assert sum(d < 30 for d in steps) > 100 and sum(d > 300 for d in steps) > 50
    assert legacy_config({})["mass_steps"] == [150.0]


def test_move_mixes_old_runs_keep_theirs():
    """Mix 1 (runs made before the setting) has no spectrum shift and draws unfreeze masses
    from the reference with the random numbers of earlier runs; mix 2 adds the shift,
    which moves every mass by the same amount; an unknown mix is an error."""
    from protomodels.moves import ShiftSpectrum, Unfreeze, unfreezable
    from protomodels.runs import legacy_config

    space = Space()
    assert "shift" not in [m.name for m, _ in default_moves(space, mix=1)]
    assert "shift" in [m.name for m, _ in default_moves(space, mix=2)]
    with pytest.raises(ValueError, match="move mix 3"):
        default_moves(space, mix=3)
    assert legacy_config({})["move_mix"] == 1
    model = ProtoModel(masses={LSP: 300.0})
    rng_new, rng_old = np.random.default_rng(5), np.random.default_rng(5)
    proposal = Unfreeze(space, anchored=False).propose(model, rng_new)
    options = unfreezable(model, space)
    pid = options[rng_old.integers(len(options))]
    assert proposal.model.masses[pid] == rng_old.uniform(*space.mass_range(pid))
    model = ProtoModel(masses={LSP: 300.0, 1000021: 1500.0}, decays={1000021: {"q q XZ1": 1.0}})
    shifted = ShiftSpectrum(space, 50.0).propose(model, np.random.default_rng(1)).model
    delta = shifted.masses[LSP] - model.masses[LSP]
    assert abs(delta) > 0
    assert shifted.masses[1000021] - model.masses[1000021] == pytest.approx(delta, abs=1e-9)
