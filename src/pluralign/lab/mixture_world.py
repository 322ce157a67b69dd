"""Exact answers on a mixture of annotator types: pooled (PL-)DPO, each type's own optimum,
the true types' regrets and the exact min-max-regret mixture (paper 3, PAPERS.md §4.3-4.5).

The world is a :class:`~pluralign.lab.em_dpo.TabularWorld` (type rewards ``r_t[x, y]``, shares
``eta_t``, reference ``pi_ref``, KL weight ``beta``). An observation shows a uniform prompt, a
uniform subset of ``set_size`` of its K responses (2 = a pair), and an annotator of type t ~ eta
ranks it by Plackett-Luce on ``r_t``.

* Pooled (PL-)DPO ignores the annotators: with tabular policies its population optimum is the
  PL maximum-likelihood fit ``u`` of the pooled ranking law, ``pi ∝ pi_ref exp(u / beta)``
  (for pairs this is ``lab.dpo_optimum`` with the mixture's P and a uniform sampler).
* Type t's own optimum is ``pi*_t ∝ pi_ref exp(r_t / beta)``; its regret for a policy pi is the
  authors' reward-only regret with the true reward, in units of ``r / beta`` (log-ratios):

      Regret_t(pi) = mean_x (E_{pi*_t} - E_pi) [log pi*_t(y|x) / pi_ref(y|x)]
                   = mean_x (E_{pi*_t} - E_pi) [r_t(x, y)] / beta,

  linear in pi, so a mixture's regret is the weighted sum of its components' regrets.
"""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np

from .em_dpo import TabularWorld
from .identify import adjusted_rand_index
from .mmra import mmra_lp, payoff_matrix, regret_matrix
from .optima import kl_rlhf_optimum
from .plackett_luce import _posterior, fit_weighted_pl, pl_log_likelihood


def _all_rankings(K: int, set_size: int) -> np.ndarray:
    """Every ordering of every ``set_size``-subset of K responses, [n, set_size] best first."""
    if not 2 <= set_size <= K:
        raise ValueError(f"set_size must lie in [2, {K}], got {set_size}")
    return np.array([p for s in combinations(range(K), set_size) for p in permutations(s)])


def pooled_ranking_law(world: TabularWorld, x: int, set_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(orders, probs)``: every ranking of a shown ``set_size``-subset of prompt x's responses and
    its pooled probability ``sum_t eta_t PL_t(order)`` given that subset (subsets uniform, so each
    subset's rankings carry total probability 1 / #subsets)."""
    K = world.rewards.shape[2]
    orders = _all_rankings(K, set_size)
    n_subsets = len(orders) // len(list(permutations(range(set_size))))
    per_type = np.exp(pl_log_likelihood(world.rewards[:, x, :], orders))  # [n, T]
    return orders, per_type @ world.type_weights / n_subsets


def pooled_optimum(world: TabularWorld, set_size: int) -> np.ndarray:
    """Population optimum [X, K] of pooled (PL-)DPO, annotator types ignored (module doc)."""
    T, X, K = world.rewards.shape
    out = np.empty((X, K))
    for x in range(X):
        orders, probs = pooled_ranking_law(world, x, set_size)
        u = fit_weighted_pl(np.eye(K), orders, probs, np.zeros(K), gtol=1e-12, max_iter=200)
        out[x] = kl_rlhf_optimum(u - u.mean(), world.pi_ref[x], world.beta)
    return out


def group_regrets(world: TabularWorld, policy) -> np.ndarray:
    """``Regret_t(policy)`` [T] for every true type t (module doc); ``policy`` [X, K], positive."""
    policy = np.asarray(policy, dtype=float)
    T = world.rewards.shape[0]
    if policy.shape != world.pi_ref.shape:
        raise ValueError(f"policy must have shape {world.pi_ref.shape} (prompts, responses), got {policy.shape}")
    stacked = np.concatenate([world.type_policies(), policy[None]], axis=0)
    return regret_matrix(stacked, world.pi_ref)[:T, T]


def mixture(policies, weights) -> np.ndarray:
    """``sum_j w_j pi_j``: the candidate distribution of a policy that draws type j ~ w per prompt."""
    policies, weights = np.asarray(policies, dtype=float), np.asarray(weights, dtype=float)
    if weights.shape != (policies.shape[0],) or np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-9:
        raise ValueError(f"weights must be a distribution over the {policies.shape[0]} policies, got {weights}")
    return np.einsum("j,jxy->xy", weights, policies)


def mmra_of(policies, pi_ref, importance=None) -> dict:
    """MMRA over ``policies`` [J, X, K] by their own implicit rewards (``lab.mmra``, exact LP):
    ``{"regret": [J, J], "weights": [J], "worst_regret": t, "policy": [X, K]}``."""
    regret = regret_matrix(policies, pi_ref)
    weights, worst = mmra_lp(payoff_matrix(regret, importance))
    return {"regret": regret, "weights": weights, "worst_regret": worst, "policy": mixture(policies, weights)}


def true_type_posterior(world: TabularWorld, orders, annotator, n_annotators: int | None = None) -> np.ndarray:
    """Posterior [n_annotators, T] of each annotator's type with the TRUE rewards and shares known.

    ``orders`` index items ``x * K + y`` (as :func:`~pluralign.lab.em_dpo.simulate_annotators`).
    Its MAP labels bound what any type discovery can reach from the same votes."""
    annotator = np.asarray(annotator, dtype=int)
    T = world.rewards.shape[0]
    ll = pl_log_likelihood(world.rewards.reshape(T, -1), orders)  # [n_obs, T]
    n = int(annotator.max()) + 1 if n_annotators is None else n_annotators
    gamma, _ = _posterior(ll, world.type_weights, annotator, n)
    return gamma


def oracle_ari(world: TabularWorld, orders, annotator, true_types) -> float:
    """ARI of the MAP labels of :func:`true_type_posterior` against the true types."""
    gamma = true_type_posterior(world, orders, annotator, len(true_types))
    return adjusted_rand_index(true_types, gamma.argmax(axis=1))
