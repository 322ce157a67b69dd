"""Exact evaluation of a policy on a world's finite candidate sets.

A policy enters as one distribution per prompt over that prompt's candidates; for a language
model this is ``renormalise(log pi(y_k | x) for each candidate k)``, i.e. its sequence
probabilities conditioned on the answer being one of the candidates.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pluralign.lab import entropy, kl, minority_mass, pm_divergence, total_variation
from pluralign.worlds.world import World

PROB_TOLERANCE = 1e-6


def renormalise(logprobs: Sequence[float] | np.ndarray) -> np.ndarray:
    """softmax over candidate log-probs: p_k = exp(l_k - max l) / sum_j exp(l_j - max l).

    Turns an LM's sequence log-probs log pi(y_k | x) (summed over tokens) into its distribution
    over the candidate set. Entries of -inf get probability 0; at least one must be finite.
    """
    values = np.asarray(logprobs, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"renormalise: expected a non-empty 1-D array of log-probs, got shape {values.shape}"
        )
    if np.any(np.isnan(values)) or np.any(values == np.inf):
        raise ValueError(
            f"renormalise: expected log-probs that are finite or -inf, got {values.tolist()}"
        )
    top = values.max()
    if not np.isfinite(top):
        raise ValueError("renormalise: every log-prob is -inf, so there is no distribution")
    weights = np.exp(values - top)
    return weights / weights.sum()


def _check_distributions(world: World, probs: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if len(probs) != world.n_prompts:
        raise ValueError(
            f"{name}: expected one distribution per prompt ({world.n_prompts}), got {len(probs)}"
        )
    checked = []
    for x, p in enumerate(probs):
        p = np.asarray(p, dtype=float)
        k = world.n_candidates(x)
        if p.shape != (k,):
            raise ValueError(
                f"{name}[{x}]: expected shape ({k},) (one entry per candidate), got {p.shape}"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > PROB_TOLERANCE:
            raise ValueError(
                f"{name}[{x}]: expected non-negative probabilities summing to 1, got {p.tolist()}"
            )
        checked.append(p / p.sum())
    return checked


def evaluate_prompt(
    world: World, x: int, pi: np.ndarray, reference: np.ndarray | None = None
) -> dict[str, Any]:
    """Metrics of one distribution ``pi`` over prompt x's candidates (see ``evaluate_policy``)."""
    k = world.n_candidates(x)
    base = reference if reference is not None else np.full(k, 1.0 / k)
    rewards = world.rewards[x]
    names = world.group_names
    win_rate = {name: float(pi @ world.group_preference_matrix(g, x) @ base) for g, name in enumerate(names)}
    expected = rewards @ pi
    metrics: dict[str, Any] = {
        "minority_mass": float(minority_mass(pi, world.minority_responses(x))),
        "pm_divergence": float(pm_divergence(world.preference_matrix(x), pi)),
        "tv_to_target": float(total_variation(pi, world.population_target(x))),
        "entropy": float(entropy(pi)),
        "win_rate": win_rate,
        "population_win_rate": float(sum(w * win_rate[name] for w, name in zip(world.group_weights, names))),
        "expected_reward": {name: float(expected[g]) for g, name in enumerate(names)},
        "regret": {name: float(rewards[g].max() - expected[g]) for g, name in enumerate(names)},
    }
    if reference is not None:
        metrics["kl_to_reference"] = float(kl(pi, reference))
    return metrics


def evaluate_policy(
    world: World,
    policy_probs: Sequence[np.ndarray],
    reference_probs: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Score a policy against the world's population; exact, no sampling.

    ``policy_probs[x]`` is the policy's distribution pi over prompt x's candidates (for an LM,
    ``renormalise`` of its candidate log-probs); ``reference_probs`` likewise for pi_ref.
    Per prompt x (pi = policy_probs[x], base = pi_ref if given, else uniform):

    * ``minority_mass``: sum of pi over ``world.minority_responses(x)``;
    * ``pm_divergence``: ``pluralign.lab.pm_divergence(P, pi)`` with P the population preference
      matrix, the mean over pairs i < j of Bernoulli KL(P_ij || pi_i / (pi_i + pi_j))
      (Xiao et al. 2405.16455, PAPERS.md §2.4);
    * ``tv_to_target``: total variation 1/2 sum_k |pi_k - target_k| to ``world.population_target(x)``;
    * ``entropy``: -sum_k pi_k log pi_k (nats);
    * ``win_rate[g]``: sum_{i,j} pi_i base_j P_g[i, j], group g's probability of preferring a
      response of pi to one of base (1/2 when pi == base);
      ``population_win_rate`` = sum_g w_g win_rate[g];
    * ``expected_reward[g]``: sum_k pi_k r_g(x, k) (Bradley-Terry scale, so only differences
      between policies are meaningful); ``regret[g]`` = max_k r_g(x, k) - expected_reward[g] >= 0;
    * ``kl_to_reference`` (only with a reference): KL(pi || pi_ref) = sum_k pi_k log(pi_k / pi_ref_k).

    Returns ``{"per_prompt": [metrics per prompt], "mean": metrics averaged uniformly over
    prompts, "group_names": [...]}``; group-indexed metrics are dicts keyed by group name.
    """
    policy = _check_distributions(world, policy_probs, "policy_probs")
    reference = None
    if reference_probs is not None:
        reference = _check_distributions(world, reference_probs, "reference_probs")
    per_prompt = [
        evaluate_prompt(world, x, policy[x], None if reference is None else reference[x])
        for x in range(world.n_prompts)
    ]
    mean: dict[str, Any] = {}
    for key, value in per_prompt[0].items():
        if isinstance(value, dict):
            mean[key] = {name: float(np.mean([m[key][name] for m in per_prompt])) for name in value}
        else:
            mean[key] = float(np.mean([m[key] for m in per_prompt]))
    return {"per_prompt": per_prompt, "mean": mean, "group_names": list(world.group_names)}


def lab_problem(world: World, x: int) -> dict[str, Any]:
    """The finite problem of prompt x as plain arrays, for the exact solvers in ``pluralign.lab``.

    Keys: ``P`` [K, K] population preference matrix; ``group_P`` [G, K, K] per-group BT matrices;
    ``rewards`` [G, K]; ``weights`` [G] population shares; ``minority_set`` (indices of
    ``world.minority_responses(x)``); ``target`` [K] population top-choice distribution;
    ``prompt`` and ``candidates`` (strings); ``group_names``.
    """
    return {
        "P": world.preference_matrix(x),
        "group_P": np.stack([world.group_preference_matrix(g, x) for g in range(world.n_groups)]),
        "rewards": world.rewards[x].copy(),
        "weights": world.group_weights.copy(),
        "minority_set": world.minority_responses(x),
        "target": world.population_target(x),
        "prompt": world.prompts[x],
        "candidates": list(world.candidates[x]),
        "group_names": list(world.group_names),
    }
