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


def mixed_entropy_argmax(b, c) -> tuple[np.ndarray, float]:
    """Maximiser and value of ``sum_a pi_a (b_a - c_a log pi_a)`` over the simplex (``c_a > 0``).

    This is the per-choice problem of conditional PM with separate coefficients: ``b_a`` holds the
    reward (plus ``beta_kl log pi_ref(a)`` on the KL branch) and ``c_a`` the coefficient of
    ``-log pi_a`` (``beta_pm`` or ``beta_kl``). Stationarity with a multiplier lambda for
    ``sum pi = 1`` gives ``log pi_a = (b_a - lambda)/c_a - 1``; lambda is the unique root of
    ``f(lambda) = logsumexp_a((b_a - lambda)/c_a - 1) = 0`` (f is convex and strictly decreasing),
    found by Newton from the left, where Newton on a convex decreasing function cannot overshoot.
    The value is ``lambda + sum_a pi_a c_a``. Equal coefficients give the closed form
    ``pi = softmax(b/c)``, value ``c logsumexp(b/c)``. Entries with ``b_a = -inf`` get ``pi_a = 0``.
    The objective is strictly concave, so this is the unique maximiser.
    """
    b = np.asarray(b, dtype=float)
    c = np.broadcast_to(np.asarray(c, dtype=float), b.shape)
    if b.ndim != 1 or b.size == 0 or np.any(c <= 0) or not np.all(np.isfinite(c)):
        raise ValueError("mixed_entropy_argmax needs a non-empty 1-D b and positive finite coefficients c")
    live = np.isfinite(b)
    if not live.any():
        raise ValueError("mixed_entropy_argmax needs at least one finite b_a")
    if np.all(c[live] == c[live][0]):
        beta = c[live][0]
        pi = softmax(np.where(live, b / beta, -np.inf))
        top = np.max(b[live] / beta)
        return pi, float(beta * (top + np.log(np.sum(np.exp(b[live] / beta - top)))))
    bl, cl = b[live], c[live]
    # f(lam) >= (b_a - lam)/c_a - 1 for every a, so starting below every root of those lines
    # (lam0 = min_a b_a - c_a) gives f(lam0) >= 0: the left side of the root.
    lam = float(np.min(bl - cl))
    for _ in range(200):
        g = (bl - lam) / cl - 1.0
        top = g.max()
        w = np.exp(g - top)
        f = top + np.log(w.sum())
        p = w / w.sum()
        slope = -float(np.sum(p / cl))
        step = -f / slope
        lam += step
        if abs(step) <= 1e-15 * (1.0 + abs(lam)) or abs(f) <= 1e-15:
            break
    log_pi = (bl - lam) / cl - 1.0
    log_pi -= np.logaddexp.reduce(log_pi)  # absorb the last rounding of lambda
    pi = np.zeros(b.shape)
    pi[live] = np.exp(log_pi)
    value = float(np.sum(pi[live] * (bl - cl * log_pi)))
    return pi, value


def conditional_pm_optimum(r, pi_ref, beta: float, support, *, beta_kl: float | None = None) -> np.ndarray:
    """Optimum of sequence-level conditional PM-RLHF (paper 1, PAPERS.md §2.2, §2.6).

    Objective (S = ``support``, the "meaningful" responses, e.g. :func:`reference_support`)::

        max_pi  sum_y pi(y) [ r(y) - beta    * log pi(y)                  if y in S
                                   - beta_kl * (log pi(y) - log pi_ref(y))  otherwise ]

    ``beta`` is the PM coefficient and ``beta_kl`` the KL one (default ``beta``: the released
    code uses one coefficient for both branches). With equal coefficients stationarity gives

        pi*(y) ∝ exp(r(y)/beta) * (1 if y in S else pi_ref(y)),

    so preferences are matched inside S (``pi_i/(pi_i+pi_j) = sigmoid((r_i - r_j)/beta)``) while
    responses outside S stay KL-tied to the reference. With different coefficients
    ``log pi(y) = (r(y) + [y not in S] beta_kl log pi_ref(y) - lambda)/c_y - 1`` with a scalar
    lambda fixed by normalisation (:func:`mixed_entropy_argmax`). The objective is strictly
    concave, so the optimum is unique. An empty support is KL-RLHF, a full one PM-RLHF.

    Reading: this conditions on the whole response (``y in S``); the authors' code conditions
    token by token on ``pi_ref(a_t|s_t) > alpha`` (see :mod:`pluralign.lab.token_tree` for that
    reading on a token tree). ``support`` is a boolean mask of shape (K,) or a list of indices;
    it is shared by the batch.
    """
    r = as_vector(r, "r")
    pi_ref = as_distribution(pi_ref, "pi_ref")
    same_last_axis("r", r, "pi_ref", pi_ref)
    beta = as_positive(beta, "beta")
    beta_kl = beta if beta_kl is None else as_positive(beta_kl, "beta_kl")
    in_support = as_mask(support, "support", r.shape[-1])
    if beta_kl == beta:
        log_weight = np.where(in_support, 0.0, safe_log(pi_ref))
        return softmax(r / beta + log_weight)
    coef = np.where(in_support, beta, beta_kl)
    r_b, ref_b = np.broadcast_arrays(r, pi_ref)
    out = np.empty(r_b.shape)
    for idx in np.ndindex(*r_b.shape[:-1]):
        b = r_b[idx] + np.where(in_support, 0.0, beta_kl * safe_log(ref_b[idx]))
        out[idx] = mixed_entropy_argmax(b, coef)[0]
    return out


def reference_support(pi_ref, alpha: float) -> np.ndarray:
    """Support of conditional PM: responses with ``pi_ref(y) > alpha``, and none when ``alpha = 0``.

    The authors' code applies the PM branch only under ``if alpha > 0`` (PAPERS.md §2.2): alpha = 0
    means plain KL-RLHF everywhere, so the support is empty, not every response.
    """
    pi_ref = as_distribution(pi_ref, "pi_ref")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
    if alpha == 0:
        return np.zeros(pi_ref.shape, dtype=bool)
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
