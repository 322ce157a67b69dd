"""Hand-computed values of the policy metrics."""

import numpy as np
import pytest

from pluralign.lab import entropy, kl, minority_mass, pm_divergence, policy_preferences, total_variation


def test_kl_tv_entropy_by_hand():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    assert kl(p, q) == pytest.approx(np.log(2))
    assert kl(q, p) == np.inf
    assert total_variation(p, q) == pytest.approx(0.5)
    assert entropy(np.full(4, 0.25)) == pytest.approx(np.log(4))
    assert entropy(np.array([1.0, 0.0])) == 0.0
    np.testing.assert_allclose(entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), [np.log(2), 0.0])


def test_minority_mass_accepts_masks_and_indices():
    pi = np.array([0.6, 0.3, 0.1])
    assert minority_mass(pi, [1, 2]) == pytest.approx(0.4)
    assert minority_mass(pi, np.array([False, True, False])) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="minority_set indices"):
        minority_mass(pi, [3])


def test_pm_divergence_by_hand_and_weights():
    P = np.array([[0.5, 0.8, 0.6], [0.2, 0.5, 0.3], [0.4, 0.7, 0.5]])
    pi = np.array([0.5, 0.25, 0.25])
    implied = policy_preferences(pi)
    assert implied[0, 1] == pytest.approx(2 / 3) and implied[1, 2] == pytest.approx(0.5)

    def bern(p, q):
        return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))

    pairs = [bern(0.8, 2 / 3), bern(0.6, 2 / 3), bern(0.3, 0.5)]
    assert pm_divergence(P, pi) == pytest.approx(np.mean(pairs))
    mu = np.array([0.2, 0.3, 0.5])
    w = [mu[0] * mu[1], mu[0] * mu[2], mu[1] * mu[2]]
    assert pm_divergence(P, pi, weights=mu) == pytest.approx(np.dot(w, pairs) / np.sum(w))
    only_first = np.zeros((3, 3))
    only_first[0, 1] = 5.0
    assert pm_divergence(P, pi, weights=only_first) == pytest.approx(pairs[0])
    with pytest.raises(ValueError, match="positive mass"):
        pm_divergence(P, pi, weights=np.zeros((3, 3)))


def test_pm_divergence_softmax_reading():
    from pluralign.lab import bradley_terry_matrix, kl, pm_divergence_softmax
    from pluralign.lab.optima import softmax

    r = np.array([1.0, -0.5, 0.3])
    pi = np.array([0.2, 0.5, 0.3])
    P = bradley_terry_matrix(r)
    for beta in (1.0, 0.5):
        expected = kl(softmax(r / beta), pi)
        assert pm_divergence(P, pi, kind="softmax", beta=beta) == pytest.approx(expected, rel=1e-12)
        assert pm_divergence_softmax(r, pi, beta) == pytest.approx(expected, rel=1e-12)
    assert pm_divergence(P, softmax(r), kind="softmax") == pytest.approx(0.0, abs=1e-15)
    assert pm_divergence(P, softmax(r)) == pytest.approx(0.0, abs=1e-15)  # both readings agree at the PM policy
    cyclic = np.array([[0.5, 0.8, 0.2], [0.2, 0.5, 0.8], [0.8, 0.2, 0.5]])
    with pytest.raises(ValueError, match="Bradley-Terry"):
        pm_divergence(cyclic, pi, kind="softmax")
    with pytest.raises(ValueError, match="kind"):
        pm_divergence(P, pi, kind="tv")
