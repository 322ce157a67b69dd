"""EM-DPO on the authors' contextual bandit: Cluster-DPO is EM's iteration 0 on k-means clusters."""

import numpy as np
import pytest

from pluralign.lab.bandit import (AUTHORS_BANDIT, authors_bandit, bandit_experiment, fit_bandit, pair_features,
                                  simulate_bandit_pairs)
from pluralign.lab.plackett_luce import fit_ranked_pl, fit_ranked_pl_mixture


def test_the_preset_is_the_authors_configuration():
    assert AUTHORS_BANDIT == {"n_arms": 3, "n_groups": 3, "n_users": 100, "pairs_per_user": 100, "context_dim": 3,
                              "beta": 5.0, "em_steps": 20}
    bandit = authors_bandit(np.random.default_rng(0))
    assert bandit.theta.shape == (3, 3, 3) and bandit.beta == 5.0
    np.testing.assert_allclose(bandit.policies(np.zeros((2, 3))), 1.0 / 3.0)  # uniform reference at x = 0


def test_preset_run_recovers_groups_and_their_policies():
    r = bandit_experiment(0)
    assert r["n_users"] == 100 and r["pairs_per_user"] == 100 and r["beta"] == 5.0
    assert r["ari_cluster"] == pytest.approx(1.0) and r["ari_em"] == pytest.approx(1.0)
    assert np.max(r["tv_em_dpo"]) < 0.03          # each group's own policy, about 0.004-0.009 here
    assert np.min(r["tv_dpo"]) > 3 * np.max(r["tv_em_dpo"])  # one policy for all groups misses each


def test_cluster_dpo_is_dpo_on_each_kmeans_cluster_and_one_group_is_plain_dpo():
    rng = np.random.default_rng(4)
    bandit = authors_bandit(rng)
    data = simulate_bandit_pairs(bandit, rng, n_users=30, pairs_per_user=15)
    fitted = fit_bandit(data, 3, 3, rng, em_steps=5)
    phi = pair_features(data, 3)
    labels = fitted.fit.initial_labels
    for k in range(3):
        own = labels[data.annotator] == k
        theta_k = fit_ranked_pl(phi[own], np.ones(own.sum()), np.zeros(9), 1e-6)
        np.testing.assert_allclose(fitted.cluster_theta[k].ravel(), theta_k, rtol=1e-6, atol=1e-8)
    one = fit_ranked_pl_mixture(phi, np.arange(len(phi)), data.annotator, 1, rng, max_iter=3, ridge=1e-6, init="kmeans")
    np.testing.assert_allclose(one.theta[0], fitted.dpo_theta.ravel(), rtol=1e-6, atol=1e-8)
