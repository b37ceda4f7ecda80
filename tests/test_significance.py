"""The prior's counting rules (SPEC section 6) and K's assembly."""

from __future__ import annotations

import math

import pytest

from protomodels.model import ProtoModel
from protomodels.significance import critic, log_prior_term, prior_terms, two_ln_prior


def test_paper_example_costs_two():
    """1 particle + 1 non-trivial BR + 2 production modes costs 2 in K."""
    assert two_ln_prior({"particles": 1, "brs": 1, "ssms": 2}) == -2.0


def test_counting_on_a_model():
    # Xb with two BRs, XW1 with one; processes Xb Xb (ssm 1) and XW1 XW1 (ssm 0.5)
    model = ProtoModel(
        masses={1000022: 100.0, 1000024: 200.0, 1000005: 800.0},
        decays={1000005: {"b XZ1": 0.7, "t XW1": 0.3}, 1000024: {"W XZ1": 1.0}},
        ssm={(-1000024, 1000024): 0.5})
    model.validate()
    # the LSP is not counted: it is always there, and the LSP-only model must have K = 0
    assert prior_terms(model) == {"particles": 2, "brs": 1, "ssms": 2}
    assert log_prior_term(model) == pytest.approx(-(2 + 0.5 + 0.5))
    # XW1 XZ2 production in both charges shares one multiplier
    model.masses[1000023] = 160.0
    model.decays[1000023] = {"Z XZ1": 0.0, "l l XZ1": 1.0}
    model.validate()
    model.ssm[(-1000024, 1000023)] = 3.0
    assert prior_terms(model) == {"particles": 3, "brs": 1, "ssms": 3}


def test_near_equal_values_count_once():
    model = ProtoModel(masses={1000022: 100.0, 1000021: 1000.0},
                       decays={1000021: {"q q XZ1": 0.5, "b b XZ1": 0.49, "g XZ1": 0.01}})
    assert prior_terms(model)["brs"] == 1  # 0.5 and 0.49 are within 5%
    model.decays[1000021] = {"q q XZ1": 0.5, "b b XZ1": 0.45, "g XZ1": 0.05}
    assert prior_terms(model)["brs"] == 2


def test_multiplier_counting_ignores_unproduced_and_merges_within_3_percent():
    model = ProtoModel(masses={1000022: 100.0, 1000021: 1000.0, 1000006: 900.0},
                       decays={1000021: {"q q XZ1": 1.0}, 1000006: {"t XZ1": 1.0}},
                       ssm={(1000021, 1000021): 1.0, (-1000006, 1000006): 1.02})
    assert prior_terms(model)["ssms"] == 1
    model.ssm[(-1000006, 1000006)] = 0.0  # a process with no cross section has no multiplier
    assert prior_terms(model)["ssms"] == 1
    model.ssm[(-1000006, 1000006)] = 1.2
    assert prior_terms(model)["ssms"] == 2


def test_lsp_only_prior_is_one():
    assert log_prior_term(ProtoModel(masses={1000022: 200.0})) == 0.0


def test_critic_without_predictions_is_unbounded():
    assert critic([], 1.0) == (0.0, math.inf)
