"""Exact answers on a mixture of annotator types (pluralign.lab.mixture_world; paper 3, PAPERS.md §4.3-4.5)."""

import numpy as np
import pytest
from scipy.special import expit

from pluralign.lab import dpo_optimum, em_dpo_tabular, simulate_annotators
from pluralign.lab import mixture_world as mw
from pluralign.lab.em_dpo import TabularWorld

MAJ = np.array([2.0, -1.0, 0.5, -1.5])
MIN = np.array([-1.0, 2.5, 0.5, -1.5])


def two_group_world(beta=0.5, shares=(0.7, 0.3), pi_ref=None):
    rewards = np.stack([np.stack([np.roll(MAJ, x) for x in range(2)]), np.stack([np.roll(MIN, x) for x in range(2)])])
    ref = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]) if pi_ref is None else pi_ref
    return TabularWorld(rewards, np.array(shares), ref, beta)


def test_pooled_pair_optimum_is_dpo_on_the_mixed_preferences():
    # set_size 2 with uniform pairs is population DPO with P = sum_t eta_t sigmoid(r_t,i - r_t,j), mu uniform
    world = two_group_world()
    pooled = mw.pooled_optimum(world, 2)
    for x in range(2):
        r = world.rewards[:, x, :]
        P = np.einsum("t,tij->ij", world.type_weights, expit(r[:, :, None] - r[:, None, :]))
        exact = dpo_optimum(P, world.pi_ref[x], np.full(4, 0.25), world.beta)
        np.testing.assert_allclose(pooled[x], exact, rtol=1e-7, atol=1e-10)


def test_pooled_optimum_of_one_type_is_its_own_optimum_and_ranking_law_sums_to_one():
    world = two_group_world(shares=(1.0, 0.0))
    for set_size in (2, 3, 4):
        np.testing.assert_allclose(mw.pooled_optimum(world, set_size), world.type_policies()[0], rtol=1e-7, atol=1e-12)
        _, probs = mw.pooled_ranking_law(two_group_world(), 1, set_size)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_pooled_rankings_collapse_the_minority():
    # the 30% minority's pick N (role 1) keeps far less mass than under the minority's own optimum
    world = two_group_world(pi_ref=np.full((2, 4), 0.25))
    pooled, own = mw.pooled_optimum(world, 3), world.type_policies()[1]
    n_index = [1, 2]  # role N of prompt x sits at candidate (1 + x) mod 4
    for x in range(2):
        assert pooled[x, n_index[x]] < 0.15 < 0.95 < own[x, n_index[x]]


def test_group_regrets_by_hand_and_linear_in_mixtures():
    world = two_group_world()
    optima = world.type_policies()
    pi = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    by_hand = [np.mean([(optima[t, x] - pi[x]) @ world.rewards[t, x] / world.beta for x in range(2)]) for t in range(2)]
    np.testing.assert_allclose(mw.group_regrets(world, pi), by_hand, rtol=1e-12)
    assert mw.group_regrets(world, optima[0])[0] == pytest.approx(0.0, abs=1e-12)
    w = np.array([0.25, 0.75])
    mixed = mw.mixture(np.stack([optima[0], pi]), w)
    expected = w[0] * mw.group_regrets(world, optima[0]) + w[1] * mw.group_regrets(world, pi)
    np.testing.assert_allclose(mw.group_regrets(world, mixed), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        mw.group_regrets(world, pi[:1])
    with pytest.raises(ValueError, match="distribution"):
        mw.mixture(optima, [0.5, 0.6])


def test_mmra_of_the_type_optima_equalises_and_beats_every_single_policy():
    world = two_group_world()
    optima = world.type_policies()
    res = mw.mmra_of(optima, world.pi_ref)
    regrets = mw.group_regrets(world, res["policy"])
    # two types with an interior solution: the min-max mixture equalises their regrets
    assert regrets[0] == pytest.approx(regrets[1], rel=1e-6)
    assert regrets.max() == pytest.approx(res["worst_regret"], rel=1e-6)
    for t in range(2):
        assert res["worst_regret"] < mw.group_regrets(world, optima[t]).max()
    assert res["worst_regret"] < mw.group_regrets(world, mw.pooled_optimum(world, 3)).max()


def test_true_type_posterior_by_hand():
    # one prompt, 3 responses; annotator 0 ranks (0 > 1 > 2) twice, annotator 1 ranks (2 > 1 > 0) once
    rewards = np.array([[[1.0, 0.0, -1.0]], [[-1.0, 0.0, 1.0]]])
    world = TabularWorld(rewards, np.array([0.6, 0.4]), np.full((1, 3), 1 / 3), 1.0)
    orders = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0]])
    annotator = np.array([0, 0, 1])

    def pl(u, o):
        return np.exp(u[o[0]]) / np.exp(u).sum() * np.exp(u[o[1]]) / np.exp(u[o[1:]]).sum()

    a = np.array([[0.6 * pl(rewards[0, 0], [0, 1, 2]) ** 2, 0.4 * pl(rewards[1, 0], [0, 1, 2]) ** 2],
                  [0.6 * pl(rewards[0, 0], [2, 1, 0]), 0.4 * pl(rewards[1, 0], [2, 1, 0])]])
    np.testing.assert_allclose(mw.true_type_posterior(world, orders, annotator), a / a.sum(axis=1, keepdims=True),
                               rtol=1e-12)
    assert mw.oracle_ari(world, orders, annotator, np.array([0, 1])) == pytest.approx(1.0)


def test_rankings_identify_types_one_pair_per_annotator_does_not():
    world = two_group_world(pi_ref=np.full((2, 4), 0.25))
    rng = np.random.default_rng(0)
    orders, annotator, types = simulate_annotators(world, 80, 4, 3, rng)
    assert mw.oracle_ari(world, orders, annotator, types) > 0.9
    em = em_dpo_tabular(orders, annotator, world.pi_ref, world.beta, 2, rng, true_types=types,
                        init_gamma=np.eye(2)[types])  # explicit init: the first M-step fits the true clusters
    assert em.ari > 0.85 and em.cluster_ari is None  # 0.90 for this seed
    orders, annotator, types = simulate_annotators(world, 300, 1, 2, rng)
    # even the true rewards cannot tell most annotators apart from one comparison each
    assert mw.oracle_ari(world, orders, annotator, types) < 0.5
