"""Identifiability of annotator types (paper 3, Lemma 4.1 vs Theorem 4.2) and its building blocks."""

import itertools

import numpy as np
import pytest

from pluralign.lab import adjusted_rand_index, identifiability_experiment, pl_log_likelihood, plus_minus_population
from pluralign.lab.identify import (mixture_ranking_distance_from_indifference, pair_probability_mixture,
                                    parameter_error)
from pluralign.lab.plackett_luce import fit_weighted_pl


def test_adjusted_rand_index_hand_values():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 5, 5]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="equal length"):
        adjusted_rand_index([0, 1], [0, 1, 1])


def test_plackett_luce_is_a_distribution_and_reduces_to_bradley_terry():
    u = np.array([0.3, -1.0, 2.0, 0.5])
    perms = np.array(list(itertools.permutations(range(4))))
    assert np.exp(pl_log_likelihood(u, perms)).sum() == pytest.approx(1.0)
    pair = pl_log_likelihood(u, np.array([[2, 1]]))[0]
    assert pair == pytest.approx(-np.log1p(np.exp(-(u[2] - u[1]))))


def test_weighted_pl_fit_recovers_utilities():
    u = np.array([1.0, 0.0, -0.5, 0.8])
    perms = np.array(list(itertools.permutations(range(4), 3)))
    # expected counts of the top-3 partial rankings: the MLE equals the truth (up to a shift)
    probs = np.exp(pl_log_likelihood(u, perms)) / len(list(itertools.combinations(range(4), 3)))
    theta = fit_weighted_pl(np.eye(4), perms, probs, np.zeros(4), ridge=0.0)
    np.testing.assert_allclose(theta - theta.mean(), u - u.mean(), atol=1e-7)


def test_plus_minus_mixture_is_indifferent_on_pairs_but_not_on_rankings():
    pop = plus_minus_population(np.array([2.0, -1.0]), 6, np.random.default_rng(1))
    np.testing.assert_allclose(pair_probability_mixture(pop), 0.5, atol=1e-15)
    assert mixture_ranking_distance_from_indifference(pop, 2) < 1e-15
    assert mixture_ranking_distance_from_indifference(pop, 3) > 0.1


def test_em_recovers_types_from_rankings_but_not_from_single_binary_comparisons():
    result = identifiability_experiment(n_annotators=600, seed=0, n_restarts=1,
                                        designs=(("binary", 2, 1), ("ranking3", 3, 1)))
    binary, ranking = result["designs"]["binary"], result["designs"]["ranking3"]
    assert binary["ari"] == pytest.approx(0.0, abs=1e-12)  # nobody can be assigned a type
    assert binary["decisive_fraction"] == 0.0
    assert abs(binary["gain_over_indifference"]) < 5.0  # binary data look like indifference
    assert binary["parameter_error"] > 4.0  # |theta| = 5: the fit sits near theta = 0
    assert ranking["ari"] > 0.8
    assert ranking["parameter_error"] < 1.0
    assert ranking["gain_over_indifference"] > 100.0


def test_parameter_error_uses_the_best_type_matching():
    theta = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert parameter_error(theta[::-1], theta) == 0.0
