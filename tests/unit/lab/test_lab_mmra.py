"""Tabular EM-DPO and min-max regret aggregation (paper 3, PAPERS.md §4.4-4.5, §8.3)."""

import itertools

import numpy as np
import pytest

from pluralign.lab import (em_dpo_tabular, mmra_hedge, mmra_lp, payoff_matrix, random_world, regret_matrix,
                           simulate_annotators, total_variation, worst_case_regret)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    world = random_world(rng, n_types=3, n_prompts=4, n_responses=4)
    orders, annotator, types = simulate_annotators(world, 150, 40, 3, rng)
    em = em_dpo_tabular(orders, annotator, world.pi_ref, world.beta, 3, rng, true_types=types)
    return world, em


def test_em_dpo_recovers_types_and_their_policies(fitted):
    world, em = fitted
    assert em.ari == pytest.approx(1.0)
    true = world.type_policies()
    best = min(itertools.permutations(range(3)),
               key=lambda p: total_variation(em.policies[list(p)], true).max())
    assert total_variation(em.policies[list(best)], true).max() < 0.1
    assert em.fit.eta.min() >= 1e-6


def test_em_dpo_on_pairs_also_separates_many_comparisons_per_annotator():
    rng = np.random.default_rng(1)
    world = random_world(rng, n_types=2, n_prompts=3, n_responses=4)
    orders, annotator, types = simulate_annotators(world, 80, 60, 2, rng)
    em = em_dpo_tabular(orders, annotator, world.pi_ref, world.beta, 2, rng, true_types=types)
    assert em.ari > 0.9


def test_regret_matrix_by_hand():
    ref = np.array([[0.5, 0.5]])
    pols = np.array([[[0.8, 0.2]], [[0.2, 0.8]]])
    reg = regret_matrix(pols, ref)
    log_ratio = np.log(np.array([0.8, 0.2]) / 0.5)
    expected = log_ratio @ np.array([0.8, 0.2]) - log_ratio @ np.array([0.2, 0.8])
    np.testing.assert_allclose(reg, [[0.0, expected], [expected, 0.0]])


def test_lp_on_a_symmetric_game():
    R = payoff_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    w, value = mmra_lp(R)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-12)
    assert value == pytest.approx(0.5)
    w, value = mmra_lp(payoff_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]), importance=[3.0, 1.0]))
    np.testing.assert_allclose(w, [0.75, 0.25], atol=1e-12)  # 3 (1 - w0) = w0


def test_lp_and_optimistic_hedge_agree_and_beat_every_single_policy(fitted):
    world, em = fitted
    R = payoff_matrix(regret_matrix(em.policies, world.pi_ref))
    w_lp, value = mmra_lp(R)
    w_hedge = mmra_hedge(R, n_steps=100_000)  # the paper's T and step 5/sqrt(T)
    assert np.max(np.abs(w_lp - w_hedge)) <= 1e-3
    assert worst_case_regret(R, w_hedge) == pytest.approx(value, abs=1e-3)
    singles = [worst_case_regret(R, np.eye(3)[j]) for j in range(3)]
    assert value <= min(singles) + 1e-12
    assert worst_case_regret(R, w_hedge) <= min(singles)
