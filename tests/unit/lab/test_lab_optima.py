"""Closed-form and exactly solved optima against plain gradient methods on their objectives."""

import numpy as np
import pytest
from scipy.special import expit, logit

from pluralign.lab import (bradley_terry_matrix, conditional_pm_optimum, reference_support, dpo_is_sampling_invariant, dpo_optimum,
                           ipo_optimum, kl_rlhf_optimum, pm_divergence, pm_rlhf_optimum, rpo_optimum)
from pluralign.lab.collapse import collapse_reference_numbers, preference_collapse_table
from pluralign.lab.dpo import chosen_distribution, dpo_first_order_residual, dpo_population_loss
from pluralign.lab.generators import TRANSITIVE_EXAMPLE


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ascend(grad_wrt_pi, K, lr=0.5, steps=20000):
    """Gradient ascent on softmax logits: d J / d theta = pi * (g - <pi, g>) with g = dJ/dpi."""
    theta = np.zeros(K)
    for _ in range(steps):
        pi = softmax(theta)
        g = grad_wrt_pi(pi)
        theta += lr * pi * (g - pi @ g)
    return softmax(theta)


def random_preference_matrix(rng, K):
    upper = rng.uniform(0.05, 0.95, (K, K))
    P = np.triu(upper, 1)
    P = P + np.tril(1 - P.T, -1)
    np.fill_diagonal(P, 0.5)
    return P


RNG = np.random.default_rng(7)
R = RNG.normal(size=5)
REF = RNG.dirichlet(np.ones(5))


def test_kl_rlhf_optimum_matches_gradient_ascent():
    beta = 0.7
    pi = ascend(lambda p: R - beta * (np.log(p / REF) + 1), 5)
    np.testing.assert_allclose(kl_rlhf_optimum(R, REF, beta), pi, atol=1e-8)


def test_pm_rlhf_optimum_matches_gradient_ascent():
    for beta in (1.0, 0.4):
        pi = ascend(lambda p: R - beta * (np.log(p) + 1), 5)
        np.testing.assert_allclose(pm_rlhf_optimum(R, beta), pi, atol=1e-8)
    np.testing.assert_allclose(pm_rlhf_optimum(R), softmax(R), atol=1e-15)


def test_conditional_pm_optimum_matches_gradient_ascent():
    beta, support = 0.8, np.array([True, False, True, True, False])
    penalty_ref = np.where(support, 0.0, np.log(REF))  # KL branch off the support
    # plain gradient ascent is slow on tiny probabilities (its step scales with pi): longer run
    pi = ascend(lambda p: R - beta * (np.log(p) + 1) + beta * penalty_ref, 5, lr=1.5, steps=40000)
    np.testing.assert_allclose(conditional_pm_optimum(R, REF, beta, support), pi, atol=1e-8)
    # all-support reduces to PM, empty support to KL
    np.testing.assert_allclose(conditional_pm_optimum(R, REF, beta, np.ones(5, bool)), pm_rlhf_optimum(R, beta))
    np.testing.assert_allclose(conditional_pm_optimum(R, REF, beta, []), kl_rlhf_optimum(R, REF, beta))


def test_conditional_pm_with_separate_coefficients_matches_gradient_ascent():
    beta_pm, beta_kl, support = 0.8, 0.3, np.array([True, False, True, True, False])
    coef = np.where(support, beta_pm, beta_kl)
    ref_term = np.where(support, 0.0, beta_kl * np.log(REF))
    pi = ascend(lambda p: R - coef * (np.log(p) + 1) + ref_term, 5, lr=1.5, steps=40000)
    got = conditional_pm_optimum(R, REF, beta_pm, support, beta_kl=beta_kl)
    np.testing.assert_allclose(got, pi, atol=1e-8)
    # stationarity: r + [KL] beta_kl log pi_ref - c (log pi + 1) is the same for every response
    level = R + ref_term - coef * (np.log(got) + 1)
    np.testing.assert_allclose(level - level.mean(), 0.0, atol=1e-12)


def test_alpha_zero_selects_no_response_so_conditional_pm_is_kl():
    assert not reference_support(REF, 0.0).any()
    np.testing.assert_allclose(conditional_pm_optimum(R, REF, 0.5, reference_support(REF, 0.0)),
                               kl_rlhf_optimum(R, REF, 0.5), rtol=1e-13)
    np.testing.assert_array_equal(reference_support(REF, 0.2), REF > 0.2)


def test_ipo_optimum_matches_gradient_ascent_and_batches():
    P = random_preference_matrix(RNG, 5)
    mu, beta = RNG.dirichlet(np.ones(5)), 3.0
    # objective: beta * E_{y~pi, y'~mu} P(y beats y') - KL(pi || pi_ref)
    pi = ascend(lambda p: beta * P @ mu - np.log(p / REF) - 1, 5)
    np.testing.assert_allclose(ipo_optimum(P, REF, mu, beta), pi, atol=1e-8)
    batch = ipo_optimum(np.stack([P, P.T]), REF, mu, beta)
    np.testing.assert_allclose(batch[1], ipo_optimum(P.T, REF, mu, beta))


def dpo_gradient(h, P, mu, beta):
    """Gradient of 2 sum_ij mu_i mu_j P_ij softplus(-beta (h_i - h_j)), pair by pair."""
    g = np.zeros_like(h)
    for i in range(len(h)):
        for j in range(len(h)):
            w = 2 * mu[i] * mu[j] * P[i, j] * beta * expit(-beta * (h[i] - h[j]))
            g[i] -= w
            g[j] += w
    return g


def test_dpo_optimum_matches_gradient_descent_and_first_order_conditions():
    P = random_preference_matrix(RNG, 4)
    ref, mu, beta = RNG.dirichlet(np.ones(4)), RNG.dirichlet(np.ones(4)), 1.5
    theta = np.log(ref)
    for _ in range(30000):
        theta -= 2.0 * dpo_gradient(theta - np.log(ref), P, mu, beta)
    pi = dpo_optimum(P, ref, mu, beta)
    np.testing.assert_allclose(pi, softmax(theta), atol=1e-7)
    assert np.max(np.abs(dpo_first_order_residual(P, pi, ref, mu, beta))) < 1e-13
    np.testing.assert_allclose(dpo_optimum(P, ref, mu, beta, method="lbfgs"), pi, atol=1e-7)
    assert dpo_population_loss(np.zeros(4), P, mu, beta) == pytest.approx(np.log(2))


def test_dpo_unsampled_responses_follow_gradient_descent_convention():
    P = random_preference_matrix(RNG, 4)
    ref, beta = RNG.dirichlet(np.ones(4)), 2.0
    mu = np.array([0.5, 0.0, 0.3, 0.2])
    theta = np.log(ref)  # free logits started at the reference: the unsampled one gets no gradient
    for _ in range(30000):
        theta -= 2.0 * dpo_gradient(theta - np.log(ref), P, mu, beta)
    np.testing.assert_allclose(dpo_optimum(P, ref, mu, beta), softmax(theta), atol=1e-7)


def test_dpo_handles_tiny_sampler_mass_and_large_beta():
    P = random_preference_matrix(RNG, 5)
    ref = RNG.dirichlet(np.ones(5))
    mu = np.array([0.4, 0.3, 1e-200, 0.2, 0.1])
    pi = dpo_optimum(P, ref, mu / mu.sum(), 50.0)
    h = np.log(pi / ref)
    # row-normalised conditions hold even for the response sampled with mass 1e-200
    rows = (P - expit(50.0 * (h[:, None] - h[None, :]))) @ (mu / mu.sum())
    assert np.max(np.abs(rows)) < 1e-10


def test_dpo_sampling_invariance_iff_bradley_terry():
    r = RNG.normal(size=4)
    ref = RNG.dirichlet(np.ones(4))
    mus = [np.full(4, 0.25), RNG.dirichlet(np.ones(4)), RNG.dirichlet(0.3 * np.ones(4))]
    bt = bradley_terry_matrix(r)
    assert dpo_is_sampling_invariant(bt)
    first = dpo_optimum(bt, ref, mus[0], 2.0)
    np.testing.assert_allclose(first, kl_rlhf_optimum(r, ref, 2.0), atol=1e-10)  # h = r / beta
    for mu in mus[1:]:
        np.testing.assert_allclose(dpo_optimum(bt, ref, mu, 2.0), first, atol=1e-10)
    # TRANSITIVE_EXAMPLE: logit .7 + logit .6 != logit .8, so not Bradley-Terry
    P = TRANSITIVE_EXAMPLE
    assert not dpo_is_sampling_invariant(P)
    ref3 = np.full(3, 1 / 3)
    a = dpo_optimum(P, ref3, np.array([0.6, 0.2, 0.2]), 2.0)
    b = dpo_optimum(P, ref3, np.array([0.2, 0.2, 0.6]), 2.0)
    assert np.max(np.abs(a - b)) > 1e-3


def test_rpo_optimum_matches_gradient_descent_and_reduces_to_dpo():
    P = random_preference_matrix(RNG, 4)
    ref, mu, beta, eta = RNG.dirichlet(np.ones(4)), RNG.dirichlet(np.ones(4)), 1.0, 0.7
    base = chosen_distribution(P, mu)
    assert base.sum() == pytest.approx(1.0)
    theta = np.log(ref)
    for _ in range(30000):
        pi = softmax(theta)
        # d/dtheta of eta*beta*E_base[-log softmax(theta)] = eta*beta*(pi - base)
        theta -= 1.0 * (dpo_gradient(theta - np.log(ref), P, mu, beta) + eta * beta * (pi - base))
    np.testing.assert_allclose(rpo_optimum(P, ref, mu, beta, eta), softmax(theta), atol=1e-7)
    np.testing.assert_array_equal(rpo_optimum(P, ref, mu, beta, 0.0), dpo_optimum(P, ref, mu, beta))


def test_rpo_keeps_a_finite_optimum_under_deterministic_preferences():
    P = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 0.7], [0.0, 0.3, 0.5]])
    ref, mu = np.full(3, 1 / 3), np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="0 < P_ij < 1"):
        dpo_optimum(P, ref, mu, 1.0)
    pi = rpo_optimum(P, ref, mu, 1.0, 1.0)
    assert np.all(pi > 0) and pi[0] > pi[1] > pi[2]
    # off the sampler's support the optimum sits at pi_base
    base = np.array([0.2, 0.3, 0.5])
    pi = rpo_optimum(random_preference_matrix(RNG, 3), ref, np.array([0.5, 0.5, 0.0]), 1.0, 0.5, base)
    assert pi[2] == pytest.approx(0.5) and pi[:2].sum() == pytest.approx(0.5)


def test_pm_at_beta_one_has_zero_pm_divergence_and_kl_does_not():
    P = bradley_terry_matrix(R)
    assert pm_divergence(P, pm_rlhf_optimum(R, 1.0)) < 1e-14
    assert pm_divergence(P, pm_rlhf_optimum(R, 1.0), weights=RNG.dirichlet(np.ones(5))) < 1e-14
    assert pm_divergence(P, kl_rlhf_optimum(R, REF, 1.0)) > 1e-3
    assert pm_divergence(P, kl_rlhf_optimum(R, np.full(5, 0.2), 0.1)) > 1e-2


def test_preference_collapse_numbers():
    nums = collapse_reference_numbers(0.51)
    assert logit(0.51) == pytest.approx(0.040, abs=5e-4)
    assert nums["pm_majority"] == pytest.approx(0.51, abs=1e-12)
    assert nums["kl_uniform_beta_0.01_majority"] == pytest.approx(0.982, abs=5e-4)
    assert nums["kl_uniform_beta_0.01_majority"] == pytest.approx(expit(100 * logit(0.51)), abs=1e-12)
    assert nums["kl_beta_1_ref_0.9_majority"] == pytest.approx(0.904, abs=5e-4)
    rows = preference_collapse_table(0.51)
    uniform = sorted((r["beta"], r["kl_rlhf_minority"]) for r in rows if r["ref_majority"] == 0.5)
    minority = [m for _, m in uniform]
    assert minority == sorted(minority)  # collapse: the minority's mass shrinks as beta -> 0
    assert minority[0] < 1e-8
    assert all(r["pm_minority"] == pytest.approx(0.49) for r in rows)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="pi_ref must sum to 1"):
        kl_rlhf_optimum(R, np.ones(5), 1.0)
    with pytest.raises(ValueError, match="beta must be a positive"):
        pm_rlhf_optimum(R, 0.0)
    with pytest.raises(ValueError, match="P_ij \\+ P_ji = 1"):
        ipo_optimum(np.full((3, 3), 0.7), np.full(3, 1 / 3), np.full(3, 1 / 3), 1.0)
    with pytest.raises(ValueError, match="same responses"):
        kl_rlhf_optimum(R, np.full(4, 0.25), 1.0)
