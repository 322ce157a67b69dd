"""Distances and summaries of policies on a finite response set.

Natural logarithms throughout (entropies and divergences in nats). The response axis is the
last one; leading axes are batch axes.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from ._checks import as_distribution, as_mask, as_positive, as_preference_matrix, as_vector, same_last_axis
from .optima import bradley_terry_scores, is_bradley_terry, softmax


def kl(p, q) -> np.ndarray:
    """``KL(p || q) = sum_y p(y) log(p(y)/q(y))`` with 0 log 0 = 0; ``inf`` if q(y)=0 < p(y)."""
    p = as_distribution(p, "p")
    q = as_distribution(q, "q")
    same_last_axis("p", p, "q", q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, xlogy(p, p) - xlogy(p, q), 0.0)
    return terms.sum(axis=-1)


def total_variation(p, q) -> np.ndarray:
    """``TV(p, q) = (1/2) sum_y |p(y) - q(y)|``."""
    p = as_distribution(p, "p")
    q = as_distribution(q, "q")
    same_last_axis("p", p, "q", q)
    return 0.5 * np.abs(p - q).sum(axis=-1)


def entropy(pi) -> np.ndarray:
    """Shannon entropy ``H(pi) = -sum_y pi(y) log pi(y)`` in nats (0 log 0 = 0)."""
    pi = as_distribution(pi, "pi")
    return -xlogy(pi, pi).sum(axis=-1)


def minority_mass(pi, minority_set) -> np.ndarray:
    """Probability that ``pi`` puts on ``minority_set`` (boolean mask or indices of responses)."""
    pi = as_distribution(pi, "pi")
    mask = as_mask(minority_set, "minority_set", pi.shape[-1])
    return pi[..., mask].sum(axis=-1)


def bernoulli_kl(p, q) -> np.ndarray:
    """``p log(p/q) + (1-p) log((1-p)/(1-q))`` elementwise (0 log 0 = 0, inf where unsupported)."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, xlogy(p, p) - xlogy(p, q), 0.0)
        b = np.where(p < 1, xlogy(1 - p, 1 - p) - xlogy(1 - p, 1 - q), 0.0)
    return a + b


def policy_preferences(pi) -> np.ndarray:
    """Policy-implied preferences ``pi_i / (pi_i + pi_j)`` (paper 1, PAPERS.md §2.4).

    A pair the policy gives no mass at all (``pi_i = pi_j = 0``) counts as indifferent (1/2).
    """
    pi = as_distribution(pi, "pi")
    num = pi[..., :, None]
    den = pi[..., :, None] + pi[..., None, :]
    with np.errstate(invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.5)


PM_DIVERGENCE_KINDS = ("pairwise", "softmax")


def pm_divergence(P, pi, weights=None, *, kind: str = "pairwise", beta: float = 1.0) -> np.ndarray:
    """PM divergence between a preference model and a policy (paper 1, PAPERS.md §2.4).

    PAPERS.md marks the definition as an interpretation (the paper's formula is not available; the
    authors' notebook histograms ``p_r = sigmoid(r_1 - r_2)`` against ``p_pi = pi_1/(pi_1 + pi_2)``).
    Two readings are offered:

    * ``kind="pairwise"`` (default, the reading PAPERS.md recommends): weighted mean over pairs
      i<j of the Bernoulli KL ``KL_Bern(P_ij || pi_i/(pi_i+pi_j))``. ``weights``: None (uniform
      over the K(K-1)/2 pairs), a distribution ``mu`` of shape [..., K] (pair weight
      ``mu_i mu_j``) or a non-negative [..., K, K] matrix (entries i<j used); normalised to sum
      to 1 over pairs. Works for any P, Bradley-Terry or not.
    * ``kind="softmax"`` (the alternative reading): ``KL(softmax(s/beta) || pi)`` over the K
      candidates, with s the Bradley-Terry scores of P (:func:`pm_divergence_softmax` takes
      rewards directly). Needs a Bradley-Terry P (else ValueError) and no ``weights``.

    Both are 0 iff the policy matches the preferences (at ``beta = 1``, the PM policy
    ``softmax(r)``); lower is better. For rewards r pass ``P = bradley_terry_matrix(r)``.
    """
    if kind not in PM_DIVERGENCE_KINDS:
        raise ValueError(f"kind must be one of {PM_DIVERGENCE_KINDS}, got {kind!r}")
    P = as_preference_matrix(P)
    pi = as_distribution(pi, "pi", size=P.shape[-1])
    K = P.shape[-1]
    if K < 2:
        raise ValueError("pm_divergence needs at least two responses")
    if kind == "softmax":
        return _softmax_pm_divergence_of_matrix(P, pi, weights, beta)
    upper = np.triu(np.ones((K, K), dtype=bool), k=1)
    if weights is None:
        w = upper.astype(float)
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape[-1:] == (K,) and (w.ndim == 1 or w.shape[-2] != K):
            w = w[..., :, None] * w[..., None, :]
        if w.shape[-2:] != (K, K):
            raise ValueError(f"weights must have shape [..., {K}] or [..., {K}, {K}], got {w.shape}")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and non-negative")
        w = w * upper
    total = w.sum(axis=(-2, -1))
    if np.any(total <= 0):
        raise ValueError("weights must put positive mass on at least one pair i<j")
    div = bernoulli_kl(P, policy_preferences(pi))
    with np.errstate(invalid="ignore"):
        weighted = np.where(w > 0, w * div, 0.0)
    return weighted.sum(axis=(-2, -1)) / total


def _softmax_pm_divergence_of_matrix(P: np.ndarray, pi: np.ndarray, weights, beta: float) -> np.ndarray:
    if weights is not None:
        raise ValueError("pm_divergence(kind='softmax') is over the whole candidate set and takes no weights")
    batch = P.reshape((-1,) + P.shape[-2:])
    if not all(is_bradley_terry(Pm, atol=1e-7) for Pm in batch):
        raise ValueError("pm_divergence(kind='softmax') needs a Bradley-Terry P (P_ij = sigmoid(s_i - s_j)); "
                         "pass rewards to pm_divergence_softmax for any reward model")
    return pm_divergence_softmax(bradley_terry_scores(P), pi, beta)


def pm_divergence_softmax(r, pi, beta: float = 1.0) -> np.ndarray:
    """``KL(softmax(r/beta) || pi)`` over the candidate set: the softmax reading of PM divergence.

    ``softmax(r/beta)`` is the PM-RLHF optimum (PAPERS.md §1.3, §2.2), so this is 0 exactly there;
    it is the alternative to the default pairwise Bernoulli-KL reading of :func:`pm_divergence`.
    """
    r = as_vector(r, "r")
    return kl(softmax(r / as_positive(beta, "beta")), pi)
