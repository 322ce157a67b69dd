"""Closed-form optima of regularised alignment objectives on a finite response set.

All functions work on one prompt (1-D arrays over the K responses) and broadcast over leading
batch axes: the response axis is always the last one. Rewards are on the Bradley-Terry scale
(``P(i beats j) = sigmoid(r_i - r_j)``). Preference matrices use ``P_ij = Pr(i beats j)`` with
``P_ij + P_ji = 1`` and ``P_ii = 1/2`` and need not be Bradley-Terry.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_distribution, as_mask, as_positive, as_preference_matrix, as_vector, same_last_axis


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; entries equal to -inf get probability 0."""
    z = np.asarray(logits, dtype=float)
    shift = np.max(z, axis=axis, keepdims=True)
    if np.any(~np.isfinite(shift)):
        raise ValueError("softmax needs at least one finite logit per distribution")
    e = np.exp(z - shift)
    return e / e.sum(axis=axis, keepdims=True)


def safe_log(p) -> np.ndarray:
    """log p with log 0 = -inf and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(p, dtype=float))


def kl_rlhf_optimum(r, pi_ref, beta: float) -> np.ndarray:
    """Optimum of KL-regularised RLHF (PAPERS.md §1.2, paper 1 §2.2).

    ``argmax_pi sum_y pi(y) [r(y) - beta * log(pi(y) / pi_ref(y))]`` over the simplex is
    ``pi*(y) = pi_ref(y) exp(r(y)/beta) / Z`` with ``Z = sum_y pi_ref(y) exp(r(y)/beta)``.
    Responses with ``pi_ref(y) = 0`` get probability 0. ``beta`` is the KL weight (beta > 0).
    """
    r = as_vector(r, "r")
    pi_ref = as_distribution(pi_ref, "pi_ref")
    same_last_axis("r", r, "pi_ref", pi_ref)
    beta = as_positive(beta, "beta")
    return softmax(safe_log(pi_ref) + r / beta)


def pm_rlhf_optimum(r, beta: float = 1.0) -> np.ndarray:
    """Optimum of preference-matching RLHF (paper 1, PAPERS.md §1.3, §2.2).

    ``argmax_pi sum_y pi(y) [r(y) - beta * log pi(y)]`` (reward plus beta times entropy) is
    ``softmax(r / beta)``. At ``beta = 1`` this is the PM policy ``pi_PM = softmax(r)`` whose
    pairwise preferences ``pi_i / (pi_i + pi_j)`` equal ``sigmoid(r_i - r_j)``.
    """
    r = as_vector(r, "r")
    beta = as_positive(beta, "beta")
    return softmax(r / beta)


def conditional_pm_optimum(r, pi_ref, beta: float, support) -> np.ndarray:
    """Optimum of sequence-level conditional PM-RLHF (paper 1, PAPERS.md §2.2).

    Objective (S = ``support``, the "meaningful" responses, e.g. ``pi_ref > alpha``)::

        max_pi  sum_y pi(y) [ r(y) - beta * ( log pi(y)                if y in S
                                              log pi(y) - log pi_ref(y)  otherwise ) ]

    Stationarity with a multiplier for sum_y pi(y) = 1 gives
    ``r(y) - beta log pi(y) - beta + beta [y not in S] log pi_ref(y) = const``, so

        pi*(y) ∝ exp(r(y)/beta) * (1 if y in S else pi_ref(y)).

    The objective is strictly concave (entropy plus linear terms), so this is the unique optimum:
    preferences are matched inside S (``pi_i/(pi_i+pi_j) = sigmoid((r_i - r_j)/beta)``) while
    responses outside S stay KL-tied to the reference and are down-weighted by ``pi_ref(y)``.
    ``support`` is a boolean mask of shape (K,) or a list of indices; it is shared by the batch.
    """
    r = as_vector(r, "r")
    pi_ref = as_distribution(pi_ref, "pi_ref")
    same_last_axis("r", r, "pi_ref", pi_ref)
    beta = as_positive(beta, "beta")
    in_support = as_mask(support, "support", r.shape[-1])
    log_weight = np.where(in_support, 0.0, safe_log(pi_ref))
    return softmax(r / beta + log_weight)


def reference_support(pi_ref, alpha: float) -> np.ndarray:
    """Support of conditional PM: responses with ``pi_ref(y) > alpha`` (paper 1 code's threshold)."""
    pi_ref = as_distribution(pi_ref, "pi_ref")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
    return pi_ref > alpha


def win_rates(P, mu) -> np.ndarray:
    """``(P mu)_i = sum_j P_ij mu_j``: each response's win-rate against a draw from ``mu``."""
    return np.einsum("...ij,...j->...i", P, mu)


def ipo_optimum(P, pi_ref, mu, beta: float) -> np.ndarray:
    """Population optimum of IPO under sampler ``mu`` (Azar et al.; paper 4, PAPERS.md §1.5, §5.1).

    ``pi*(y) ∝ pi_ref(y) exp(beta (P mu)_y)`` with ``(P mu)_y = sum_y' P(y beats y') mu(y')``.
    It maximises ``beta * E_{y~pi, y'~mu} P(y beats y') - KL(pi || pi_ref)``.

    Convention: ``beta = 1 / tau`` where tau is the KL weight of the IPO objective, which is the
    ``beta`` of TRL/OpenRLHF's IPO loss ``(h - 1/(2 beta_TRL))**2``; so ``beta = 1 / beta_TRL``.
    ``P`` has shape [..., K, K]; ``pi_ref`` and ``mu`` shape [..., K].
    """
    P = as_preference_matrix(P)
    pi_ref = as_distribution(pi_ref, "pi_ref", size=P.shape[-1])
    mu = as_distribution(mu, "mu", size=P.shape[-1])
    beta = as_positive(beta, "beta")
    return softmax(safe_log(pi_ref) + beta * win_rates(P, mu))


def bradley_terry_matrix(r) -> np.ndarray:
    """``P_ij = sigmoid(r_i - r_j)`` (PAPERS.md §1.1); shape [..., K, K] for rewards [..., K]."""
    r = as_vector(r, "r")
    diff = r[..., :, None] - r[..., None, :]
    return 0.5 * (1.0 + np.tanh(0.5 * diff))  # sigmoid, exact 1/2 on the diagonal


def bradley_terry_scores(P) -> np.ndarray:
    """Least-squares Bradley-Terry scores of ``P``: ``s_i = mean_j logit(P_ij)`` (sum s = 0).

    Exact when ``P`` is Bradley-Terry; needs ``0 < P_ij < 1``.
    """
    P = as_preference_matrix(P)
    if np.any(P <= 0) or np.any(P >= 1):
        raise ValueError("Bradley-Terry scores need 0 < P_ij < 1 for every pair")
    return np.mean(np.log(P) - np.log1p(-P), axis=-1)


def is_bradley_terry(P, atol: float = 1e-9) -> bool:
    """True iff ``P_ij = sigmoid(s_i - s_j)`` for some scores s (logits additive: L_ij = s_i - s_j).

    Checked on the logit scale with absolute tolerance ``atol``; P with a 0 or 1 entry off the
    diagonal is not representable with finite scores and returns False.
    """
    P = as_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P must be a single K x K matrix, got shape {P.shape}")
    if np.any(P <= 0) or np.any(P >= 1):
        return False
    s = bradley_terry_scores(P)
    logits = np.log(P) - np.log1p(-P)
    return bool(np.max(np.abs(logits - (s[:, None] - s[None, :]))) <= atol)
