"""The EM-DPO authors' synthetic contextual bandit, with DPO, Cluster-DPO and EM-DPO (paper 3).

Configuration (PAPERS.md §4.4 "Synthetic bandit version", §8.3): 3 arms, 3 user groups, 100
users x 100 pairs each, 3-dimensional contexts, linear rewards ``r_g(x, a) = theta_g[a] . x``,
pairs drawn from the uniform reference with Bradley-Terry labels, beta = 5, 20 EM steps. Not
stated there, so chosen here: contexts ``x ~ N(0, I_3)`` per pair, the two arms of a pair
distinct and uniform, ``theta_g[a] ~ N(0, reward_scale^2 I)`` with ``reward_scale = 2``, equal
group sizes in expectation.

Policies are linear softmax policies over arms (the authors' ``PolicyNet``: context -> softmax),
``pi(a|x) = softmax_a(w_a . x)``. With the uniform reference the DPO implicit reward is
``beta log(pi/pi_ref) = beta w_a . x + const(x)``, so gamma-weighted DPO on pairs is
gamma-weighted Bradley-Terry maximum likelihood of ``theta = beta w`` with context-arm features
``e_a (x) x``; the M-step solves it exactly (Newton) where the authors run SGD (lr 0.01, up to
1000 epochs, tolerance 1e-6) to the same optimum. Each group's KL-optimal policy is
``softmax(r_g(x, .)/beta)``, which this class contains, so the fits can be checked exactly.

Baselines as in the authors' code: plain DPO is one group (``num_groups = 1``); Cluster-DPO is
EM's iteration 0, DPO on each k-means cluster of the users (clustered on each user's own
ridge-penalised fit, our choice of annotator features); EM-DPO refines those clusters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ._checks import as_positive
from .identify import adjusted_rand_index, ari_chance_level
from .optima import softmax
from .plackett_luce import PLMixtureFit, fit_ranked_pl, fit_ranked_pl_mixture

AUTHORS_BANDIT = {"n_arms": 3, "n_groups": 3, "n_users": 100, "pairs_per_user": 100, "context_dim": 3,
                  "beta": 5.0, "em_steps": 20}


@dataclass(frozen=True)
class ContextualBandit:
    """``theta`` [G, A, d]: group g's reward ``r_g(x, a) = theta[g, a] . x``; ``group_weights`` [G];
    ``beta``: the KL weight (group g's optimal policy is ``softmax(r_g(x, .) / beta)``)."""

    theta: np.ndarray
    group_weights: np.ndarray
    beta: float

    def policies(self, contexts) -> np.ndarray:
        """Every group's KL-optimal policy at each context, [G, n, A]."""
        return linear_policies(self.theta, contexts, self.beta)


def linear_policies(theta, contexts, beta: float) -> np.ndarray:
    """``softmax_a(theta[..., a, :] . x / beta)`` for contexts [n, d]: shape [..., n, A]."""
    logits = np.einsum("...ad,nd->...na", np.asarray(theta, float), np.asarray(contexts, float))
    return softmax(logits / beta)


def authors_bandit(rng: np.random.Generator, *, n_arms: int = 3, n_groups: int = 3, context_dim: int = 3,
                   beta: float = 5.0, reward_scale: float = 2.0) -> ContextualBandit:
    """The authors' bandit (module doc) with random group reward coefficients."""
    if min(n_arms, n_groups, context_dim) < 1 or n_arms < 2:
        raise ValueError("need n_arms >= 2, n_groups >= 1 and context_dim >= 1")
    theta = as_positive(reward_scale, "reward_scale") * rng.standard_normal((n_groups, n_arms, context_dim))
    return ContextualBandit(theta, np.full(n_groups, 1.0 / n_groups), as_positive(beta, "beta"))


@dataclass(frozen=True)
class BanditPairs:
    """Preference pairs: ``contexts`` [n, d], ``chosen``/``rejected`` arms [n], ``annotator`` [n]
    (user ids) and each user's true group ``groups`` [n_users]."""

    contexts: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    annotator: np.ndarray
    groups: np.ndarray


def simulate_bandit_pairs(bandit: ContextualBandit, rng: np.random.Generator, *, n_users: int = 100,
                          pairs_per_user: int = 100) -> BanditPairs:
    """Each user (group drawn from ``group_weights``) labels ``pairs_per_user`` pairs by Bradley-Terry."""
    if n_users < 1 or pairs_per_user < 1:
        raise ValueError(f"need n_users >= 1 and pairs_per_user >= 1, got {n_users}, {pairs_per_user}")
    G, A, d = bandit.theta.shape
    groups = rng.choice(G, size=n_users, p=bandit.group_weights)
    n = n_users * pairs_per_user
    annotator = np.repeat(np.arange(n_users), pairs_per_user)
    contexts = rng.standard_normal((n, d))
    arms = np.argsort(rng.random((n, A)), axis=1)[:, :2]  # two distinct arms, uniformly
    rewards = np.einsum("nad,nd->na", bandit.theta[groups[annotator]], contexts)
    r_pair = np.take_along_axis(rewards, arms, axis=1)
    first_wins = rng.random(n) < 1.0 / (1.0 + np.exp(r_pair[:, 1] - r_pair[:, 0]))
    chosen = np.where(first_wins, arms[:, 0], arms[:, 1])
    rejected = np.where(first_wins, arms[:, 1], arms[:, 0])
    return BanditPairs(contexts, chosen, rejected, annotator, groups)


def pair_features(data: BanditPairs, n_arms: int) -> np.ndarray:
    """Ranked context-arm features ``phi[n] = [e_chosen (x) x_n, e_rejected (x) x_n]``, [n, 2, A d]."""
    n, d = data.contexts.shape
    phi = np.zeros((n, 2, n_arms, d))
    rows = np.arange(n)
    phi[rows, 0, data.chosen] = data.contexts
    phi[rows, 1, data.rejected] = data.contexts
    return phi.reshape(n, 2, n_arms * d)


@dataclass
class BanditFit:
    """Reward coefficients ``theta`` [K, A, d] of EM-DPO, ``cluster_theta`` of Cluster-DPO (EM
    iteration 0 on the k-means clusters), ``dpo_theta`` [A, d] of plain DPO, and the mixture fit."""

    theta: np.ndarray
    cluster_theta: np.ndarray
    dpo_theta: np.ndarray
    fit: PLMixtureFit


def fit_bandit(data: BanditPairs, n_arms: int, n_types: int, rng: np.random.Generator, *, em_steps: int = 20,
               ridge: float = 1e-6, init: str = "kmeans") -> BanditFit:
    """Plain DPO, Cluster-DPO and EM-DPO (``em_steps`` EM iterations at most) on bandit pairs.

    Coefficients are implicit rewards ``theta = beta w`` (module doc); a policy is
    :func:`linear_policies`. ``ridge`` only fixes the flat direction (the same shift of every arm).
    """
    phi = pair_features(data, n_arms)
    d = data.contexts.shape[1]
    dpo = fit_ranked_pl(phi, np.ones(phi.shape[0]), np.zeros(phi.shape[2]), ridge)
    fit = fit_ranked_pl_mixture(phi, np.arange(phi.shape[0]), data.annotator, n_types, rng, max_iter=em_steps,
                                tol=1e-10, ridge=ridge, init=init)
    shape = (n_types, n_arms, d)
    return BanditFit(fit.theta.reshape(shape), fit.initial_theta.reshape(shape), dpo.reshape(n_arms, d), fit)


def matched_tv(policies: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per true group, mean TV over contexts to the fitted policy under the best one-to-one matching.

    ``policies`` [K, n, A], ``truth`` [G, n, A] with K = G; returns [G].
    """
    tv = 0.5 * np.abs(truth[:, None] - policies[None]).sum(axis=-1).mean(axis=-1)  # [G, K]
    best = min(itertools.permutations(range(policies.shape[0])), key=lambda p: tv[np.arange(len(p)), p].sum())
    return tv[np.arange(len(best)), best]


def bandit_experiment(seed: int = 0, *, n_users: int = 100, pairs_per_user: int = 100, n_groups: int = 3,
                      n_arms: int = 3, context_dim: int = 3, beta: float = 5.0, em_steps: int = 20,
                      reward_scale: float = 2.0, n_test: int = 2000) -> dict:
    """DPO vs Cluster-DPO vs EM-DPO on the authors' bandit: recovery of groups and of their policies.

    Reports the ARI of the k-means clusters and of EM's MAP labels against the true groups (with
    the chance level of :func:`pluralign.lab.identify.ari_chance_level`), and
    per group the mean TV (over ``n_test`` fresh contexts) between its KL-optimal policy and the
    single DPO policy, the matched Cluster-DPO policy and the matched EM-DPO policy.
    """
    rng = np.random.default_rng(seed)
    bandit = authors_bandit(rng, n_arms=n_arms, n_groups=n_groups, context_dim=context_dim, beta=beta,
                            reward_scale=reward_scale)
    data = simulate_bandit_pairs(bandit, rng, n_users=n_users, pairs_per_user=pairs_per_user)
    fitted = fit_bandit(data, n_arms, n_groups, rng, em_steps=em_steps)
    test = rng.standard_normal((n_test, context_dim))
    truth = bandit.policies(test)
    dpo = linear_policies(fitted.dpo_theta, test, beta)
    return {
        "seed": seed, "n_users": n_users, "pairs_per_user": pairs_per_user, "n_groups": n_groups, "n_arms": n_arms,
        "context_dim": context_dim, "beta": beta, "reward_scale": reward_scale, "em_steps_max": em_steps,
        "em_iterations": fitted.fit.n_iter, "group_sizes": np.bincount(data.groups, minlength=n_groups),
        "ari_cluster": adjusted_rand_index(data.groups, fitted.fit.initial_labels),
        "ari_em": adjusted_rand_index(data.groups, fitted.fit.labels),
        "ari_chance_95": ari_chance_level(data.groups, fitted.fit.labels, np.random.default_rng([seed, 1])),
        "eta_hat": fitted.fit.eta,
        "tv_dpo": 0.5 * np.abs(truth - dpo[None]).sum(axis=-1).mean(axis=-1),
        "tv_cluster_dpo": matched_tv(linear_policies(fitted.cluster_theta, test, beta), truth),
        "tv_em_dpo": matched_tv(linear_policies(fitted.theta, test, beta), truth),
    }
