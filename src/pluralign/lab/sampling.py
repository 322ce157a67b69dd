"""Samplers for one-shot IPO and what they do to its optimum (paper 4, PAPERS.md §5.1-5.2).

The IPO optimum under sampler mu is ``pi* ∝ pi_ref exp(beta P mu)``, so the ranking of pi* is
the ranking of ``log pi_ref + beta P mu``. Which response ends on top therefore depends on mu.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from ._checks import as_distribution, as_positive, as_preference_matrix
from .optima import ipo_optimum, safe_log, softmax
from .tournament import condorcet_winner, copeland_ranking, is_strongly_transitive, smith_set


def uniform_sampler(K: int) -> np.ndarray:
    """``mu = 1/K`` on every response."""
    if int(K) < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")
    return np.full(int(K), 1.0 / int(K))


def on_policy_sampler(P, pi_ref, beta: float, *, tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:
    """The on-policy sampler: the fixed point ``mu = pi*(mu) = softmax(log pi_ref + beta P mu)``.

    This is the fixed point of MRS-IPO with alpha = 0, lambda = 1. It exists and is unique for
    every beta: writing ``P = 11^T/2 + A`` (A skew-symmetric), a fixed point is exactly a
    symmetric saddle point of the strictly convex-concave game
    ``max_x min_y x^T A y - KL(x||pi_ref)/beta + KL(y||pi_ref)/beta``, whose saddle point is
    unique. Solved by damped Newton on ``z - log pi_ref - beta A softmax(z) = 0`` (logits z modulo
    constants), from the IPO optimum under mu = pi_ref.
    """
    P = as_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"on_policy_sampler takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    pi_ref = as_distribution(pi_ref, "pi_ref", size=K)
    beta = as_positive(beta, "beta")
    keep = pi_ref > 0
    A = (P - 0.5)[np.ix_(keep, keep)]
    log_ref = np.log(pi_ref[keep])

    def residual(z):
        F = z - log_ref - beta * A @ softmax(z)
        return F - F.mean()

    z = log_ref + beta * A @ pi_ref[keep]
    F = residual(z)
    n = z.size
    for _ in range(max_iter):
        if np.max(np.abs(F)) <= tol:
            break
        pi = softmax(z)
        J = np.eye(n) - beta * A @ (np.diag(pi) - np.outer(pi, pi))
        J = J - J.mean(axis=0, keepdims=True)  # residual is centred
        step = np.linalg.lstsq(np.vstack([J, np.ones((1, n))]), np.concatenate([-F, [0.0]]), rcond=None)[0]
        t, norm0 = 1.0, np.linalg.norm(F)
        while t > 1e-10:
            F_new = residual(z + t * step)
            if np.linalg.norm(F_new) < (1 - 1e-4 * t) * norm0:
                break
            t *= 0.5
        else:
            # Newton stalled: fall back to a small damped fixed-point step, which is locally
            # contracting for damping d < 2 / (1 + beta^2 ||A||^2).
            d = 1.0 / (1.0 + (beta * np.linalg.norm(A, 2)) ** 2)
            step, t = d * (log_ref + beta * A @ softmax(z) - z), 1.0
            F_new = residual(z + step)
        z = z + t * step
        F = F_new
    if np.max(np.abs(F)) > 1e3 * tol:
        raise RuntimeError(f"on_policy_sampler did not converge (residual {np.max(np.abs(F)):.2e})")
    mu = np.zeros(K)
    mu[keep] = softmax(z)
    return mu


@dataclass(frozen=True)
class SamplerChoice:
    """Result of :func:`instance_dependent_sampler`.

    ``target``: indices that should lead (the Condorcet winner, else the Smith set);
    ``margin``: ``min over target s, other o of log pi*(s) - log pi*(o)`` under ``mu``;
    ``achieved``: margin > 0 (every target strictly above every other response).
    """

    mu: np.ndarray
    target: np.ndarray
    margin: float
    achieved: bool


def max_margin_sampler(P, pi_ref, beta: float, target) -> tuple[np.ndarray, float]:
    """Sampler maximising the worst log-probability gap between ``target`` and the rest under IPO.

    Linear program over (mu, t): maximise t subject to
    ``log pi_ref(s) - log pi_ref(o) + beta ((P mu)_s - (P mu)_o) >= t`` for every s in target and
    o outside it with ``pi_ref(o) > 0``, ``mu`` in the simplex. Returns ``(mu, t)``; the target can
    be put strictly on top of the IPO optimum by some sampler iff ``t > 0``.
    """
    P = as_preference_matrix(P)
    K = P.shape[0]
    pi_ref = as_distribution(pi_ref, "pi_ref", size=K)
    beta = as_positive(beta, "beta")
    in_target = np.zeros(K, dtype=bool)
    in_target[np.asarray(target, dtype=int)] = True
    others = np.flatnonzero(~in_target & (pi_ref > 0))
    if others.size == 0:
        return np.full(K, 1.0 / K), float("inf")
    if np.any(pi_ref[in_target] == 0):
        return np.full(K, 1.0 / K), float("-inf")
    log_ref = np.log(pi_ref, where=pi_ref > 0, out=np.full(K, -np.inf))
    rows, rhs = [], []
    for s in np.flatnonzero(in_target):
        for o in others:
            rows.append(np.concatenate([-beta * (P[s] - P[o]), [1.0]]))  # t - beta (P_s - P_o) mu <= log ratio
            rhs.append(log_ref[s] - log_ref[o])
    res = linprog(c=np.concatenate([np.zeros(K), [-1.0]]), A_ub=np.array(rows), b_ub=np.array(rhs),
                  A_eq=np.concatenate([np.ones(K), [0.0]])[None, :], b_eq=[1.0],
                  bounds=[(0, None)] * K + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"max_margin_sampler LP failed: {res.message}")
    mu = np.clip(res.x[:K], 0.0, None)
    return mu / mu.sum(), float(-res.fun)


def instance_dependent_sampler(P, pi_ref, beta: float) -> SamplerChoice:
    """A sampler, chosen knowing P, that puts the Condorcet winner / Smith set on top of IPO.

    Construction: the target is the Condorcet winner c if there is one, else the Smith set S;
    mu is the max-margin sampler of :func:`max_margin_sampler` (a linear program), so the target
    leads whenever any sampler can make it lead (``achieved`` reports it).

    Why it works. For a Condorcet winner, ``mu = delta_c`` gives ``(P mu)_c = P_cc = 1/2`` and
    ``(P mu)_i = P_ic < 1/2`` for i != c, so c has the top win-rate with gap
    ``1/2 - max_i P_ic > 0``. For a Smith set S, a sampler with ``(P mu)_s > (P mu)_o`` for all
    s in S, o outside always exists: otherwise, by LP duality, distributions rho on S and sigma
    outside would satisfy ``P^T rho <= P^T sigma`` entrywise, and averaging over columns drawn
    from sigma gives ``rho^T P sigma <= sigma^T P sigma = 1/2``, contradicting that every member
    of S beats every non-member (``rho^T P sigma > 1/2``).

    Reference-strength condition: the reference adds ``log pi_ref(s)/pi_ref(o)`` to each gap, so
    with a uniform reference any beta > 0 works; otherwise the target leads iff the LP margin is
    positive, and ``mu = delta_c`` suffices when
    ``beta (1/2 - P_ic) > log(pi_ref(i)/pi_ref(c))`` for every i != c.
    """
    P = as_preference_matrix(P)
    winner = condorcet_winner(P)
    target = np.array([winner]) if winner is not None else smith_set(P)
    mu, margin = max_margin_sampler(P, pi_ref, beta, target)
    return SamplerChoice(mu=mu, target=target, margin=margin, achieved=bool(margin > 0))


def ipo_logit_gaps(P, pi_ref, mu, beta: float, order=None) -> np.ndarray:
    """Consecutive gaps ``log pi*(o_k) - log pi*(o_{k+1})`` of the IPO optimum along ``order``.

    ``order`` defaults to the Copeland ranking (best first). Larger gaps = sharper optimum.
    """
    pi = ipo_optimum(P, pi_ref, mu, beta)
    order = copeland_ranking(P) if order is None else np.asarray(order, dtype=int)
    logp = safe_log(pi[order])
    return logp[:-1] - logp[1:]


def first_order_dominates(mu_new, mu_old, order) -> bool:
    """True iff ``mu_new`` puts at least as much mass as ``mu_old`` on every top-k prefix of ``order``."""
    mu_new = as_distribution(mu_new, "mu_new")
    mu_old = as_distribution(mu_old, "mu_old", size=mu_new.shape[-1])
    order = np.asarray(order, dtype=int)
    return bool(np.all(np.cumsum(mu_new[order]) >= np.cumsum(mu_old[order]) - 1e-12))


def row_advantage_pairs(P, order=None, atol: float = 1e-12) -> np.ndarray:
    """Row-advantage condition per consecutive pair of ``order`` (default: Copeland ranking).

    For the pair (i above j) let ``D_k = P_ik - P_jk`` with opponents k listed along ``order``.
    The pair satisfies the condition when D is non-increasing along the order: i's edge over j is
    at least as large against stronger opponents. Then every shift of mu toward higher-ranked
    responses (first-order dominance) weakly widens this pair's IPO logit gap, because the gap
    changes by ``beta sum_k D_k dmu_k = beta sum_k C_k (D_k - D_{k+1})`` with ``C_k >= 0`` the mass
    moved into the top-k prefix (Abel summation); and without it some such shift narrows the gap.
    For Bradley-Terry P the top pair always qualifies (sigmoid is concave on the positive axis);
    lower pairs generally do not, as stronger opponents compress both rows toward 0.
    Returns a boolean array of length K-1.
    """
    P = as_preference_matrix(P)
    order = copeland_ranking(P) if order is None else np.asarray(order, dtype=int)
    rows = P[np.ix_(order, order)]
    adv = rows[:-1] - rows[1:]
    return np.all(adv[:, :-1] >= adv[:, 1:] - atol, axis=1)


def has_row_advantage(P, order=None, atol: float = 1e-12) -> bool:
    """True iff every consecutive pair satisfies :func:`row_advantage_pairs` (a strong condition:
    for three responses it forces ``P_13 = P_12 + P_23 - 1/2``, where gaps do not depend on mu)."""
    return bool(np.all(row_advantage_pairs(P, order, atol)))


def shift_sharpens(P, pi_ref, mu, mu_shifted, beta: float, atol: float = 1e-12) -> dict:
    """Check that moving the sampler toward higher-ranked responses sharpens the IPO optimum.

    Returns, along the Copeland order, the consecutive logit gaps before and after; the
    conditions ``strongly_transitive``, ``dominates`` (mu_shifted first-order dominates mu) and
    per pair ``row_advantage`` (:func:`row_advantage_pairs`); ``guaranteed_pairs`` (all three hold
    for that pair, so its gap cannot shrink) and ``sharpened_pairs`` (its gap did not shrink,
    beyond ``atol``); ``guaranteed``/``sharpened`` are the same over all pairs. Paper 4 claims
    sharpening only under such conditions, not for every pair or every P.
    """
    order = copeland_ranking(P)
    before = ipo_logit_gaps(P, pi_ref, mu, beta, order)
    after = ipo_logit_gaps(P, pi_ref, mu_shifted, beta, order)
    transitive = is_strongly_transitive(P)
    dominates = first_order_dominates(mu_shifted, mu, order)
    pairs = row_advantage_pairs(P, order)
    guaranteed = pairs & transitive & dominates
    sharpened = after >= before - atol
    return {
        "order": order,
        "gaps_before": before,
        "gaps_after": after,
        "strongly_transitive": transitive,
        "dominates": dominates,
        "row_advantage": pairs,
        "guaranteed_pairs": guaranteed,
        "sharpened_pairs": sharpened,
        "guaranteed": bool(np.all(guaranteed)),
        "sharpened": bool(np.all(sharpened)),
    }
