"""Tabular EM-DPO: a mixture of per-type policies learned from unlabeled annotators (paper 3, §4.3-4.4).

A tabular world has X prompts with K responses each and T latent annotator types with rewards
``r_t[x, y]`` (Bradley-Terry scale). Each annotator has one type and labels pairs or ranks
triples of responses by Plackett-Luce. With tabular policies the implicit reward
``r̂_k = beta log(pi_k / pi_ref)`` is a free table, so the gamma-weighted DPO (pairs) or PL-DPO
(rankings) M-step is a gamma-weighted Plackett-Luce maximum-likelihood fit of ``r̂_k``, solved to
convergence by L-BFGS; the policy is then ``pi_k ∝ pi_ref exp(r̂_k / beta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_distribution, as_positive
from .identify import adjusted_rand_index
from .optima import kl_rlhf_optimum
from .plackett_luce import PLMixtureFit, fit_pl_mixture


@dataclass(frozen=True)
class TabularWorld:
    """``rewards`` [T, X, K] per type, ``type_weights`` [T], reference ``pi_ref`` [X, K] and
    ``beta`` (KL weight: type t's optimal policy is ``pi_ref exp(r_t / beta)`` normalised)."""

    rewards: np.ndarray
    type_weights: np.ndarray
    pi_ref: np.ndarray
    beta: float

    def type_policies(self) -> np.ndarray:
        """KL-optimal policy of every type, [T, X, K] (PAPERS.md §1.2)."""
        return kl_rlhf_optimum(self.rewards, self.pi_ref[None], self.beta)


def random_world(rng: np.random.Generator, *, n_types: int = 3, n_prompts: int = 4, n_responses: int = 4,
                 reward_scale: float = 2.0, beta: float = 1.0, type_weights=None) -> TabularWorld:
    """Types with independent N(0, reward_scale^2) rewards, uniform reference, equal weights by default."""
    if min(n_types, n_prompts) < 1 or n_responses < 3:
        raise ValueError("need n_types >= 1, n_prompts >= 1 and n_responses >= 3 (for rankings of 3)")
    weights = np.full(n_types, 1.0 / n_types) if type_weights is None else as_distribution(type_weights, "type_weights")
    rewards = reward_scale * rng.standard_normal((n_types, n_prompts, n_responses))
    pi_ref = np.full((n_prompts, n_responses), 1.0 / n_responses)
    return TabularWorld(rewards, weights, pi_ref, as_positive(beta, "beta"))


def simulate_annotators(world: TabularWorld, n_annotators: int, n_per_annotator: int, set_size: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each annotator labels ``n_per_annotator`` random response sets of size ``set_size`` (2 = pairs).

    A prompt is drawn uniformly, then ``set_size`` distinct responses uniformly, and the annotator
    ranks them by Plackett-Luce on its type's reward (Gumbel trick). Items are indexed
    ``x * K + y``. Returns ``(orders [n_obs, set_size] best first, annotator [n_obs], types)``.
    """
    T, X, K = world.rewards.shape
    if not 2 <= set_size <= K:
        raise ValueError(f"set_size must lie in [2, {K}], got {set_size}")
    types = rng.choice(T, size=n_annotators, p=world.type_weights)
    n_obs = n_annotators * n_per_annotator
    annotator = np.repeat(np.arange(n_annotators), n_per_annotator)
    prompts = rng.integers(X, size=n_obs)
    shown = np.argsort(rng.random((n_obs, K)), axis=1)[:, :set_size]
    utility = world.rewards[types[annotator][:, None], prompts[:, None], shown] + rng.gumbel(size=shown.shape)
    ranked = np.take_along_axis(shown, np.argsort(-utility, axis=1), axis=1)
    return prompts[:, None] * K + ranked, annotator, types


@dataclass
class EMDPOResult:
    """Fitted implicit rewards ``rewards`` [T, X, K] (centred per prompt), policies [T, X, K],
    the underlying mixture fit and, when true types are given, the ARI of the MAP labels.

    ``cluster_policies`` [T, X, K]: the first M-step's policies, DPO on each initial cluster (the
    Cluster-DPO baseline when initialised by k-means; ``cluster_ari`` scores those clusters)."""

    rewards: np.ndarray
    policies: np.ndarray
    fit: PLMixtureFit
    ari: float | None = None
    cluster_policies: np.ndarray | None = None
    cluster_ari: float | None = None


def em_dpo_tabular(orders, annotator, pi_ref, beta: float, n_types: int, rng: np.random.Generator, *,
                   max_iter: int = 100, n_restarts: int = 3, ridge: float = 1e-4, true_types=None,
                   init: str = "kmeans", init_gamma=None) -> EMDPOResult:
    """EM-DPO with tabular policies (paper 3, PAPERS.md §4.4).

    E-step: ``gamma[i, k] ∝ eta_k prod_{o in D_i} l_k(o)`` in log space, with ``l_k`` the DPO pair
    likelihood ``sigmoid(r̂_k(y_w) - r̂_k(y_l))`` or the PL-DPO ranking likelihood of §1.4, and
    ``eta`` floored at 1e-6. M-step: per type, gamma-weighted (PL-)DPO over the table
    ``r̂_k = beta log(pi_k/pi_ref)``, i.e. weighted PL maximum likelihood with a small ridge
    ``(ridge/2)||r̂_k||^2`` (it only picks the per-prompt constant and keeps unseen responses
    finite), solved by Newton. ``orders`` index items ``x * K + y``.
    Initialisation ``init="kmeans"`` (default, the authors' choice): one-hot gamma from k-means on
    each annotator's own tabular fit, so the first M-step gives the Cluster-DPO policies;
    ``init="dirichlet"``: random soft assignments, best of ``n_restarts``; an explicit
    ``init_gamma`` [n_annotators, n_types] (e.g. one-hot clusters of annotator features) overrides both.
    """
    pi_ref = as_distribution(pi_ref, "pi_ref")
    if pi_ref.ndim != 2:
        raise ValueError(f"pi_ref must be [X, K], got shape {pi_ref.shape}")
    beta = as_positive(beta, "beta")
    X, K = pi_ref.shape
    fit = fit_pl_mixture(orders, annotator, np.eye(X * K), n_types, rng, max_iter=max_iter,
                         n_restarts=n_restarts, ridge=ridge, init=init, init_gamma=init_gamma)

    def policies_of(theta):
        rewards = theta.reshape(n_types, X, K)
        rewards = rewards - rewards.mean(axis=2, keepdims=True)
        return rewards, kl_rlhf_optimum(rewards, pi_ref[None], beta)

    rewards, policies = policies_of(fit.theta)
    _, cluster_policies = policies_of(fit.initial_theta)
    ari = None if true_types is None else adjusted_rand_index(true_types, fit.labels)
    cluster_ari = None
    if true_types is not None and fit.initial_labels is not None:
        cluster_ari = adjusted_rand_index(true_types, fit.initial_labels)
    return EMDPOResult(rewards=rewards, policies=policies, fit=fit, ari=ari, cluster_policies=cluster_policies,
                       cluster_ari=cluster_ari)
