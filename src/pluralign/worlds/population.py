"""A world's population data sets, and the exact optimum of each objective trained on them.

``population_pairs`` holds every distinct candidate pair {i, j} of every prompt once, as a soft-
labelled pair (preference = P_ij, the population's probability that i beats j) with weight
proportional to the sampler's mu_i mu_j. Its weighted mean loss is the expectation of the loss
over what ``World.sample_pairs`` draws (prompt uniform, i != j with probability ∝ mu_i mu_j, label
from P), because every pairwise objective's soft-label loss is the expectation over the label
(``pluralign.objectives.pairwise``). Training on it therefore minimises the population objective
itself, and ``population_optimum`` gives that minimiser exactly, with the solvers of
``pluralign.lab`` where they apply.

``population_rankings`` does the same for rankings: every distinct (top-k) ranking of every prompt
once, weighted by its population probability sum_g w_g PL_g(ranking).

Draws with y1 = y2 never reach the data (they carry no comparison): the objectives here are the
population objectives conditioned on distinct pairs. That changes nothing for DPO and IPO (such
draws have zero gradient) but changes RPO's NLL term, whose optimum is mapped below onto
``lab.rpo_optimum`` with the matching pi_base and eta.
"""

from __future__ import annotations

from itertools import permutations
from typing import Callable, Sequence

import numpy as np
from scipy.special import logsumexp

from pluralign import lab
from pluralign.data.records import PreferenceRecord
from pluralign.worlds.world import World


def _samplers(world: World, sampler) -> list[np.ndarray]:
    mus = world._check_sampler(sampler)
    if mus is None:
        return [np.full(world.n_candidates(x), 1.0 / world.n_candidates(x)) for x in range(world.n_prompts)]
    return mus


def _scale_to_mean_one(weights: list[float]) -> list[float]:
    total = float(np.sum(weights))
    return [w * len(weights) / total for w in weights]


def population_pairs(world: World, sampler: str | Sequence[np.ndarray] = "uniform") -> list[PreferenceRecord]:
    """Every distinct candidate pair of every prompt once, soft-labelled with the population's P_ij.

    For prompt x and candidates i < j the record is (chosen, rejected) = (i, j) if P_ij >= 1/2,
    else (j, i), with ``preference`` = P(chosen beats rejected) and weight

        w_xij = c * mu_x,i mu_x,j / Z_x,     Z_x = sum_{i<j} mu_x,i mu_x,j,

    so each prompt carries the same total weight (prompts are uniform, as in ``sample_pairs``), and
    c makes the weights average 1. Pairs with mu_i mu_j = 0 are left out (and counted by their
    absence: the set has sum_x #{i < j : mu_i mu_j > 0} records). ``sampler`` as in ``sample_pairs``.
    """
    rows: list[tuple[int, int, int, float, float]] = []
    for x, mu in enumerate(_samplers(world, sampler)):
        P = world.preference_matrix(x)
        K = world.n_candidates(x)
        pair_mass = [(i, j, mu[i] * mu[j]) for i in range(K) for j in range(i + 1, K) if mu[i] * mu[j] > 0]
        z = sum(m for _, _, m in pair_mass)
        for i, j, m in pair_mass:
            win, lose = (i, j) if P[i, j] >= 0.5 else (j, i)
            rows.append((x, win, lose, m / z, float(P[win, lose])))
    weights = _scale_to_mean_one([r[3] for r in rows])
    return [PreferenceRecord.from_pair(world.prompts[x], world.candidates[x][w], world.candidates[x][l],
                                       weight=weight, preference=p)
            for (x, w, l, _, p), weight in zip(rows, weights)]


def ranking_probability(world: World, x: int, prefix: Sequence[int]) -> float:
    """sum_g w_g PL_g(prefix): the population probability that the ranking starts with ``prefix``
    (candidate indices, best first), under each group's Plackett-Luce model with its rewards."""
    total = 0.0
    for g, w in enumerate(world.group_weights):
        u = world.rewards[x][g]
        left = np.ones(u.size, dtype=bool)
        logp = 0.0
        for c in prefix:
            logp += u[c] - logsumexp(u[left])
            left[c] = False
        total += w * np.exp(logp)
    return float(total)


def _prefixes(K: int, k: int | None) -> list[tuple[int, ...]]:
    length = K if k is None or k >= K - 1 else k  # a top-(K-1) ranking is a full one
    return list(permutations(range(K), length))


def population_rankings(world: World, k: int | None = None) -> list[PreferenceRecord]:
    """Every distinct full (``k=None``) or top-k ranking of every prompt's candidates once.

    Weight ∝ ranking_probability(x, ranking) / n_prompts (prompts uniform), scaled to average 1;
    a top-k ranking leaves the other candidates tied below (PreferenceRecord's convention), which
    is the marginal of the full PL ranking that PL-DPO's top-k likelihood models.
    """
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k: expected a positive integer (top-k prefix) or None, got {k!r}")
    rows = []
    for x in range(world.n_prompts):
        for prefix in _prefixes(world.n_candidates(x), k):
            rows.append((x, prefix, ranking_probability(world, x, prefix)))
    weights = _scale_to_mean_one([p for _, _, p in rows])
    return [PreferenceRecord(world.prompts[x], tuple(world.candidates[x]), prefix, weight=weight)
            for (x, prefix, _), weight in zip(rows, weights)]


def distinct_pair_chosen(P: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Distribution of the winner of a pair i != j drawn ∝ mu_i mu_j and labelled by P:

        a_i = sum_{j != i} mu_i mu_j P_ij / Z,   Z = sum_{i != j} mu_i mu_j P_ij = (1 - sum mu^2) / 2.

    (``lab.chosen_distribution`` also counts the draws y1 = y2.)"""
    a = mu * (P @ mu - 0.5 * mu)
    return a / a.sum()


def pl_prefix_optimum(K: int, prefixes: Sequence[Sequence[int]], probs: Sequence[float], *,
                      gtol: float = 1e-12) -> np.ndarray:
    """Maximiser u (centred) of sum_n p_n log PL(prefix_n | u), top-k prefixes included:

        log PL(o_1..o_m | u) = sum_{t <= min(m, K-1)} [u_{o_t} - log sum_{l not in o_1..o_{t-1}} exp(u_l)].

    Convex; solved by damped Newton (analytic Hessian) to max |grad| <= gtol."""
    orders = np.asarray(prefixes, dtype=int)
    p = np.asarray(probs, dtype=float) / np.sum(probs)
    m = min(orders.shape[1], K - 1)
    # remaining[n, t, l]: candidate l is still unranked before position t
    placed = np.zeros((orders.shape[0], m, K), dtype=bool)
    for t in range(1, m):
        placed[:, t] = placed[:, t - 1]
        placed[np.arange(orders.shape[0]), t, orders[:, t - 1]] = True
    remaining = ~placed
    picked = np.zeros((orders.shape[0], m, K))
    picked[np.arange(orders.shape[0])[:, None], np.arange(m)[None, :], orders[:, :m]] = 1.0

    def derivatives(u):
        logits = np.where(remaining, u[None, None, :], -np.inf)
        lse = logsumexp(logits, axis=2)
        soft = np.exp(logits - lse[..., None])
        value = -np.sum(p[:, None] * (np.sum(picked * u, axis=2) - lse))
        grad = -np.einsum("n,ntk->k", p, picked - soft)
        hess = np.einsum("n,ntk->k", p, soft) * np.eye(K) - np.einsum("n,ntk,ntl->kl", p, soft, soft)
        return value, grad, hess

    # Damped Newton; the Hessian is singular along constant shifts, fixed by the gauge sum u = 0.
    u = np.zeros(K)
    value, grad, hess = derivatives(u)
    for _ in range(200):
        if np.max(np.abs(grad)) <= gtol:
            return u - u.mean()
        A = np.vstack([hess, np.ones((1, K))])
        step = np.linalg.lstsq(A, np.concatenate([-grad, [0.0]]), rcond=None)[0]
        t = 1.0
        while t > 1e-12:
            new = derivatives(u + t * step)
            if new[0] <= value + 1e-4 * t * float(grad @ step) or np.linalg.norm(new[1]) < np.linalg.norm(grad):
                break
            t *= 0.5
        u, (value, grad, hess) = u + t * step, new
    raise RuntimeError(f"pl_prefix_optimum: Newton did not converge (max |grad| {np.max(np.abs(grad)):.2e}); "
                       "the optimum may be infinite (a candidate never or always ranked first)")


# ---------------------------------------------------------------- exact optima per objective
def _label_smoothed(P: np.ndarray, eps: float) -> np.ndarray:
    return (1.0 - 2.0 * eps) * P + eps


def _equal_lengths(num_tokens, K: int, objective: str) -> float:
    lengths = np.full(K, 1.0) if num_tokens is None else np.asarray(num_tokens, dtype=float)
    if lengths.shape != (K,) or np.ptp(lengths) != 0:
        raise ValueError(f"{objective}: the exact optimum on candidates needs equal token counts, got {lengths}")
    return float(lengths[0])


def _dpo(w, x, ref, mu, beta, label_smoothing=0.0, **_):
    return lab.dpo_optimum(_label_smoothed(w.preference_matrix(x), label_smoothing), ref, mu, beta)


def _ipo(w, x, ref, mu, beta, **_):
    return lab.ipo_optimum(w.preference_matrix(x), ref, mu, 1.0 / beta)


def _ipo_trl(w, x, ref, mu, beta, num_tokens=None, **_):
    # per-token means with L tokens each: (h/L - 1/(2 tau))^2 = (h - L/(2 tau))^2 / L^2, i.e. tau' = tau / L
    length = _equal_lengths(num_tokens, len(ref), "ipo_trl")
    return lab.ipo_optimum(w.preference_matrix(x), ref, mu, length / beta)


def _rpo(w, x, ref, mu, beta, eta, label_smoothing=0.0, **_):
    # distinct pairs: F ∝ S + eta beta T (module doc), lab: 2 S + eta' beta E_{pi_base}[NLL] with
    # pi_base = winner of a distinct pair and E = T / Z, Z = (1 - sum mu^2) / 2 -> eta' = 2 Z eta.
    P = w.preference_matrix(x)
    eta_lab = eta * (1.0 - float(mu @ mu))
    return lab.rpo_optimum(_label_smoothed(P, label_smoothing), ref, mu, beta, eta_lab,
                           pi_base=distinct_pair_chosen(P, mu))


def _sft(w, x, ref, mu, beta, num_tokens=None, **_):
    # minimise -sum_i a_i log pi_i / L_i over the candidates: pi ∝ a / L
    a = distinct_pair_chosen(w.preference_matrix(x), mu)
    lengths = np.ones(len(ref)) if num_tokens is None else np.asarray(num_tokens, dtype=float)
    return a / lengths / np.sum(a / lengths)


def _plackett_luce(w, x, ref, mu, beta, k=None, **_):
    prefixes = _prefixes(w.n_candidates(x), k)
    u = pl_prefix_optimum(w.n_candidates(x), prefixes, [ranking_probability(w, x, o) for o in prefixes])
    return lab.kl_rlhf_optimum(u, ref, beta)


EXACT_OPTIMA: dict[str, Callable[..., np.ndarray]] = {
    "dpo": _dpo,  # population_pairs; label_smoothing eps -> P' = (1 - 2 eps) P + eps
    "ipo": _ipo,  # population_pairs; lab beta = 1 / tau
    "ipo_trl": _ipo_trl,  # population_pairs, equal token counts L; lab beta = L / tau
    "rpo": _rpo,  # population_pairs; exact for the LM's candidate distribution when its mass is on the candidates
    "sft": _sft,  # population_pairs; token-mean NLL of the winner
    "plackett_luce": _plackett_luce,  # population_rankings(k)
}


def population_optimum(world: World, x: int, objective: str, pi_ref, beta: float, *,
                       sampler: str | Sequence[np.ndarray] = "uniform", num_tokens=None, k: int | None = None,
                       args: dict | None = None) -> np.ndarray:
    """Exact minimiser, over distributions on prompt x's candidates, of ``objective`` (a registry
    name, beta its KL weight, ``args`` its arguments) trained on the population data set:
    ``population_pairs(world, sampler)`` for the pairwise objectives and SFT,
    ``population_rankings(world, k)`` for ``plackett_luce``. ``pi_ref`` is the reference's
    distribution over the candidates (an LM's: renormalised candidate probabilities);
    ``num_tokens`` the candidates' token counts (``ipo_trl`` needs them equal; ``sft`` weights by
    them). The log-ratio objectives see only ratios within the candidate set, so an LM converges
    to this distribution after renormalisation; RPO and SFT see absolute probabilities, which
    the answer matches when the LM's mass is on the candidates.
    """
    if objective not in EXACT_OPTIMA:
        raise ValueError(f"population_optimum: no exact solver for {objective!r}; expected one of {sorted(EXACT_OPTIMA)}")
    mu = _samplers(world, sampler)[world._check_prompt(x)]
    ref = np.asarray(pi_ref, dtype=float)
    return EXACT_OPTIMA[objective](world, x, ref, mu, beta, num_tokens=num_tokens, k=k, **(args or {}))
