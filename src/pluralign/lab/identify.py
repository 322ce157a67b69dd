"""Identifiability of latent annotator types: binary comparisons versus rankings (paper 3, §4.2).

Annotators belong to latent types under a random-coefficient logit: an annotator of type k has
coefficients ``theta_k + coef_noise * eps`` and ranks the shown items by Plackett-Luce with
utilities ``features @ theta``. With ONE binary comparison per annotator the type distribution is
not identifiable (Lemma 4.1: a 50/50 mixture of +theta and -theta gives probability 1/2 on every
pair, exactly like indifference); rankings of 3 identify it (Theorem 4.2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .plackett_luce import fit_pl_mixture, pl_log_likelihood


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert and Arabie 1985) between two labelings of the same items.

    ``ARI = (sum_ij C(n_ij,2) - E) / ((sum_i C(a_i,2) + sum_j C(b_j,2))/2 - E)`` with
    ``E = sum_i C(a_i,2) sum_j C(b_j,2) / C(n,2)``, n_ij the contingency table and a, b its margins.
    1 for identical partitions (up to relabelling), about 0 for independent ones. Returns 1.0 when
    both labelings put everything in one cluster (or each item alone).
    """
    a = np.asarray(labels_true)
    b = np.asarray(labels_pred)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labelings must be 1-D and of equal length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return 1.0
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1)
    comb2 = lambda x: x * (x - 1) / 2.0  # noqa: E731
    index = comb2(table).sum()
    rows, cols = comb2(table.sum(axis=1)).sum(), comb2(table.sum(axis=0)).sum()
    expected = rows * cols / comb2(float(a.size))
    maximum = 0.5 * (rows + cols)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


MIN_ANNOTATORS_FOR_ARI = 50  # below this an ARI says little, whatever its value


def ari_chance_level(labels_true, labels_pred, rng: np.random.Generator, n_permutations: int = 200,
                     quantile: float = 0.95) -> float:
    """The ``quantile`` of the ARI between ``labels_true`` and random permutations of ``labels_pred``.

    What a labeling with the same cluster sizes but no information scores by chance; an observed
    ARI below it is indistinguishable from noise. Large for few annotators, about 0 for many.
    """
    pred = np.asarray(labels_pred)
    null = [adjusted_rand_index(labels_true, rng.permutation(pred)) for _ in range(n_permutations)]
    return float(np.quantile(null, quantile))


def ari_warning(what: str, n_annotators: int, chance: float) -> str | None:
    """A warning when an ARI over ``n_annotators`` cannot support a conclusion, else None."""
    if n_annotators < MIN_ANNOTATORS_FOR_ARI or chance > 0.1:
        return (f"{what}: ARI over {n_annotators} annotators is not reliable (random labels reach "
                f"{chance:.2f} at the 95th percentile); use at least {MIN_ANNOTATORS_FOR_ARI} annotators")
    return None


@dataclass(frozen=True)
class LatentTypePopulation:
    """Types' coefficients ``theta`` [T, d], type weights ``eta`` [T], item ``features`` [n_items, d]
    and the random-coefficient noise scale ``coef_noise`` (0: every annotator uses theta_k exactly)."""

    theta: np.ndarray
    eta: np.ndarray
    features: np.ndarray
    coef_noise: float = 0.0


def plus_minus_population(theta, n_items: int, rng: np.random.Generator,
                          coef_noise: float = 0.0) -> LatentTypePopulation:
    """The Lemma 4.1 population: types ``+theta`` and ``-theta``, 50/50, items with N(0, I) features."""
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 1 or not np.any(theta):
        raise ValueError("theta must be a non-zero 1-D coefficient vector")
    features = rng.standard_normal((n_items, theta.size))
    return LatentTypePopulation(np.stack([theta, -theta]), np.array([0.5, 0.5]), features, coef_noise)


def simulate_rankings(pop: LatentTypePopulation, n_annotators: int, set_size: int, rng: np.random.Generator,
                      n_per_annotator: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each annotator ranks ``n_per_annotator`` random item sets of size ``set_size`` (2 = a pair).

    Rankings are exact Plackett-Luce draws (sort utilities plus Gumbel noise). Returns
    ``(orders [n_obs, set_size] best first, annotator [n_obs], types [n_annotators])``.
    """
    n_items = pop.features.shape[0]
    if not 2 <= set_size <= n_items:
        raise ValueError(f"set_size must lie in [2, {n_items}], got {set_size}")
    types = rng.choice(pop.theta.shape[0], size=n_annotators, p=pop.eta)
    coef = pop.theta[types] + pop.coef_noise * rng.standard_normal((n_annotators, pop.theta.shape[1]))
    n_obs = n_annotators * n_per_annotator
    annotator = np.repeat(np.arange(n_annotators), n_per_annotator)
    shown = np.argsort(rng.random((n_obs, n_items)), axis=1)[:, :set_size]
    utility = np.einsum("nmd,nd->nm", pop.features[shown], coef[annotator])
    noisy = utility + rng.gumbel(size=utility.shape)
    orders = np.take_along_axis(shown, np.argsort(-noisy, axis=1), axis=1)
    return orders, annotator, types


def mixture_ranking_distance_from_indifference(pop: LatentTypePopulation, set_size: int) -> float:
    """Max over item sets of size ``set_size`` of TV(mixture ranking law, uniform law).

    0 means the observations cannot tell the mixture from indifference. For a +theta/-theta
    mixture it is exactly 0 for pairs (``sigmoid(x)/2 + sigmoid(-x)/2 = 1/2``) and positive for
    rankings of 3. Assumes ``coef_noise = 0``.
    """
    utilities = pop.theta @ pop.features.T  # [T, n_items]
    worst = 0.0
    for subset in itertools.combinations(range(pop.features.shape[0]), set_size):
        perms = np.array(list(itertools.permutations(subset)))
        law = np.exp(pl_log_likelihood(utilities, perms)) @ pop.eta
        worst = max(worst, 0.5 * np.abs(law - 1.0 / len(perms)).sum())
    return float(worst)


def pair_probability_mixture(pop: LatentTypePopulation) -> np.ndarray:
    """``P_mix(i beats j) = sum_k eta_k sigmoid(u_ki - u_kj)`` over items (coef_noise = 0)."""
    u = pop.theta @ pop.features.T
    return np.einsum("k,kij->ij", pop.eta, expit(u[:, :, None] - u[:, None, :]))


def parameter_error(theta_hat, theta) -> float:
    """Mean Euclidean error ``||theta_hat_{s(k)} - theta_k||`` under the best matching s of types."""
    theta_hat, theta = np.asarray(theta_hat, float), np.asarray(theta, float)
    if theta_hat.shape != theta.shape:
        raise ValueError(f"shapes differ: {theta_hat.shape} vs {theta.shape}")
    return float(min(np.mean(np.linalg.norm(theta_hat[list(p)] - theta, axis=1))
                     for p in itertools.permutations(range(theta.shape[0]))))


def identifiability_experiment(theta=(5.0, 0.0), *, n_items: int = 8, n_annotators: int = 1000, seed: int = 0,
                               designs=(("binary", 2, 1), ("ranking3", 3, 1), ("binary_x10", 2, 10)),
                               max_iter: int = 100, n_restarts: int = 2, min_confidence: float = 0.8) -> dict:
    """Fit a 2-type PL mixture by EM to data from the +theta/-theta population under each design.

    ``designs``: (name, set_size, comparisons per annotator). Reports per design the adjusted Rand
    index against the true types of the decisive EM labels (an annotator is assigned a type only
    when its posterior reaches ``min_confidence``; undecided annotators form one extra cluster,
    so a fit that cannot tell anyone apart scores 0) and of the plain MAP labels (``ari_map``:
    with a flat posterior these follow the direction of fitted noise and can agree with the truth
    by chance), the parameter error, the fitted and the indifference (theta = 0)
    log-likelihoods, the exact population distance from indifference, and ``ari_chance_95``
    (:func:`ari_chance_level` of the decisive labels). Expected: binary ->
    ARI 0 and a log-likelihood gain over indifference of order 1 nat (noise); ranking3 -> ARI
    high; many binary comparisons per annotator (Lemma 4.3) -> ARI high.
    """
    rng = np.random.default_rng(seed)
    pop = plus_minus_population(np.asarray(theta, float), n_items, rng)
    chance_rng = np.random.default_rng([seed, 1])  # its own stream: the fits do not depend on it
    results = {}
    for name, set_size, per_annotator in designs:
        orders, annotator, types = simulate_rankings(pop, n_annotators, set_size, rng, per_annotator)
        fit = fit_pl_mixture(orders, annotator, pop.features, 2, rng, max_iter=max_iter, n_restarts=n_restarts)
        indifferent_ll = float(pl_log_likelihood(np.zeros(n_items), orders).sum())
        results[name] = {
            "set_size": set_size,
            "comparisons_per_annotator": per_annotator,
            "ari": adjusted_rand_index(types, fit.decisive_labels(min_confidence)),
            "ari_map": adjusted_rand_index(types, fit.labels),
            "decisive_fraction": float(np.mean(fit.gamma.max(axis=1) >= min_confidence)),
            "parameter_error": parameter_error(fit.theta, pop.theta),
            "theta_hat": fit.theta.tolist(),
            "eta_hat": fit.eta.tolist(),
            "log_likelihood": fit.log_likelihood,
            "indifference_log_likelihood": indifferent_ll,
            "gain_over_indifference": fit.log_likelihood - indifferent_ll,
            "population_distance_from_indifference": mixture_ranking_distance_from_indifference(pop, set_size),
            "em_iterations": fit.n_iter,
            "ari_chance_95": ari_chance_level(types, fit.decisive_labels(min_confidence), chance_rng),
        }
    return {"theta": pop.theta.tolist(), "n_items": n_items, "n_annotators": n_annotators, "seed": seed,
            "designs": results}
