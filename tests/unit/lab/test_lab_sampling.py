"""Samplers, social-choice structure and the one-shot IPO ranking claims (paper 4, §5.2)."""

import numpy as np
import pytest

from pluralign.lab import (attribute_preference_matrices, bradley_terry_matrix, condorcet_winner, cyclic_matrix,
                           instance_dependent_sampler, ipo_optimum, is_cyclic, is_strongly_transitive,
                           on_policy_sampler, sample_matrices, shift_sharpens, smith_set, uniform_sampler)
from pluralign.lab.generators import TRANSITIVE_EXAMPLE
from pluralign.lab.sampling import has_row_advantage, max_margin_sampler, row_advantage_pairs
from pluralign.lab.tournament import copeland_ranking

# 4 responses: {0, 1, 2} form a cycle and all beat response 3.
CYCLE_OVER_LOSER = np.array([[0.5, 0.9, 0.45, 0.6],
                             [0.1, 0.5, 0.95, 0.7],
                             [0.55, 0.05, 0.5, 0.51],
                             [0.4, 0.3, 0.49, 0.5]])


def test_condorcet_smith_and_transitivity():
    assert condorcet_winner(TRANSITIVE_EXAMPLE) == 0
    assert condorcet_winner(cyclic_matrix(0.3)) is None
    assert condorcet_winner(CYCLE_OVER_LOSER) is None
    np.testing.assert_array_equal(smith_set(CYCLE_OVER_LOSER), [0, 1, 2])
    np.testing.assert_array_equal(smith_set(TRANSITIVE_EXAMPLE), [0])
    assert is_strongly_transitive(TRANSITIVE_EXAMPLE)
    assert not is_strongly_transitive(cyclic_matrix(0.3))
    assert is_cyclic(CYCLE_OVER_LOSER) and not is_cyclic(TRANSITIVE_EXAMPLE)
    # transitive but not strongly transitive: rows 1 and 2 cross
    weak = np.array([[0.5, 0.6, 0.6], [0.4, 0.5, 0.9], [0.4, 0.1, 0.5]])
    assert not is_cyclic(weak) and not is_strongly_transitive(weak)


def test_on_policy_sampler_is_the_ipo_fixed_point():
    rng = np.random.default_rng(3)
    for P in attribute_preference_matrices(5, rng, K=5, scale=3.0):
        ref = rng.dirichlet(np.ones(5))
        for beta in (0.5, 5.0, 40.0):
            mu = on_policy_sampler(P, ref, beta)
            np.testing.assert_allclose(ipo_optimum(P, ref, mu, beta), mu, atol=1e-10)


def test_delta_on_condorcet_winner_puts_it_on_top():
    # the explicit construction: (P delta_c)_c = 1/2 > P_ic = (P delta_c)_i
    P, ref = TRANSITIVE_EXAMPLE, np.full(3, 1 / 3)
    pi = ipo_optimum(P, ref, np.eye(3)[0], 0.1)
    assert pi.argmax() == 0


def test_instance_dependent_sampler_puts_condorcet_winner_or_smith_set_on_top():
    rng = np.random.default_rng(0)
    ref = np.full(4, 0.25)
    checked = 0
    for P in attribute_preference_matrices(60, rng, K=4, scale=2.0):
        choice = instance_dependent_sampler(P, ref, beta=1.0)
        target = set(choice.target.tolist())
        if len(target) == 4:
            continue
        assert choice.achieved  # always achievable with a uniform reference
        logp = np.log(ipo_optimum(P, ref, choice.mu, 1.0))
        others = [o for o in range(4) if o not in target]
        gap = min(logp[s] - logp[o] for s in target for o in others)
        assert gap == pytest.approx(choice.margin, abs=1e-9) and gap > 0
        checked += 1
    assert checked > 20


def test_smith_set_needs_the_instance_dependent_sampler():
    ref = np.full(4, 0.25)
    # the uniform sampler lets the Smith member 2 fall below the loser 3 here
    pi_uniform = ipo_optimum(CYCLE_OVER_LOSER, ref, uniform_sampler(4), 5.0)
    assert pi_uniform[2] < pi_uniform[3]
    choice = instance_dependent_sampler(CYCLE_OVER_LOSER, ref, 5.0)
    pi = ipo_optimum(CYCLE_OVER_LOSER, ref, choice.mu, 5.0)
    assert choice.achieved and min(pi[:3]) > pi[3]


def test_reference_strength_condition():
    P = TRANSITIVE_EXAMPLE
    weak_winner_ref = np.array([1e-4, 0.5, 0.4999])
    # delta_c needs beta (1/2 - P_ic) > log(ref_i / ref_c): here beta = 1 is far too weak
    choice = instance_dependent_sampler(P, weak_winner_ref, 1.0)
    assert not choice.achieved and choice.margin < 0
    # the LP is exact: no sampler does better (random samplers never beat its margin)
    rng = np.random.default_rng(1)
    for mu in rng.dirichlet(np.ones(3), size=200):
        logp = np.log(ipo_optimum(P, weak_winner_ref, mu, 1.0))
        assert min(logp[0] - logp[1], logp[0] - logp[2]) <= choice.margin + 1e-12
    bound = max(np.log(weak_winner_ref[i] / weak_winner_ref[0]) / (0.5 - P[i, 0]) for i in (1, 2))
    assert instance_dependent_sampler(P, weak_winner_ref, 1.01 * bound).achieved
    _, margin = max_margin_sampler(P, weak_winner_ref, 1.01 * bound, [0])
    assert margin > 0


def test_shifting_the_sampler_up_sharpens_ipo_where_row_advantage_holds():
    rng = np.random.default_rng(5)
    matrices = list(sample_matrices("strongly_transitive", 60, rng, correlation=0.5))
    matrices += [bradley_terry_matrix(rng.normal(size=4)) for _ in range(20)]
    n_guaranteed = 0
    for P in matrices:
        ref, mu = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4))
        order = copeland_ranking(P)
        shifted = 0.6 * mu + 0.4 * np.eye(4)[order[0]]
        check = shift_sharpens(P, ref, mu, shifted, beta=3.0)
        assert check["strongly_transitive"] and check["dominates"]
        guaranteed = check["guaranteed_pairs"]
        assert np.all(check["sharpened_pairs"][guaranteed])
        n_guaranteed += guaranteed.sum()
        # strong transitivity: IPO keeps the order whatever the sampler
        assert np.all(np.diff(np.log(ipo_optimum(P, np.full(4, 0.25), shifted, 3.0))[order]) <= 1e-12)
    assert n_guaranteed >= 20


def test_bradley_terry_top_pair_always_has_row_advantage():
    rng = np.random.default_rng(11)
    for _ in range(50):
        P = bradley_terry_matrix(2 * rng.normal(size=5))
        assert is_strongly_transitive(P) and row_advantage_pairs(P)[0]
        mu = rng.dirichlet(np.ones(5))
        top = copeland_ranking(P)[0]
        check = shift_sharpens(P, np.full(5, 0.2), mu, 0.7 * mu + 0.3 * np.eye(5)[top], beta=2.0)
        assert check["gaps_after"][0] > check["gaps_before"][0]


def test_without_row_advantage_a_gap_can_shrink():
    # strongly transitive, but the top response's edge over the second is largest against the bottom
    P = np.array([[0.5, 0.6, 0.9], [0.4, 0.5, 0.6], [0.1, 0.4, 0.5]])
    assert is_strongly_transitive(P) and not has_row_advantage(P)
    mu = np.full(3, 1 / 3)
    check = shift_sharpens(P, np.full(3, 1 / 3), mu, 0.5 * mu + 0.5 * np.eye(3)[0], beta=2.0)
    assert not check["guaranteed"] and not check["sharpened"]
    assert check["gaps_after"][0] < check["gaps_before"][0]
