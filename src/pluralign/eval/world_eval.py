"""Exact evaluation of a causal LM on a world: renormalise its candidate log-probs per prompt.

For prompt x with candidates y_1..y_K the LM's policy on the world is

    pi(y_k | x) = exp(log p_LM(y_k | x)) / sum_j exp(log p_LM(y_j | x)),

with log p_LM summed over the candidate's tokens (EOS included). Any DPO-style log-ratio
difference is unchanged by the renormalisation, so the lab's exact optima on the same finite
problem are directly comparable. A :class:`pluralign.mixture.MixturePolicy` is evaluated the same
way, type by type: its candidate distribution is sum_j w_j pi_j(y_k | x, C), the w-mixture of its
types' renormalised distributions (``MixturePolicy.candidate_distribution``).
"""

from __future__ import annotations

import numpy as np

from pluralign.logprobs import score_candidates
from pluralign.worlds import evaluate_policy, renormalise


def candidate_logprobs(model, tokenizer, world) -> list[np.ndarray]:
    """Summed log p_LM(y_k | x) of every candidate of every prompt (EOS included). A
    :class:`pluralign.mixture.MixturePolicy` gives its full-text mixture's, log sum_j w_j pi_j(y_k | x)."""
    if hasattr(model, "candidate_logprobs"):
        return [model.candidate_logprobs(p, c) for p, c in zip(world.prompts, world.candidates)]
    return [score_candidates(model, tokenizer, p, c).double().numpy() for p, c in zip(world.prompts, world.candidates)]


def candidate_distributions(model, tokenizer, world) -> list[np.ndarray]:
    """The LM's distribution over each prompt's candidates (``renormalise`` of their log-probs); a
    mixture's is the w-mixture of its types' (module doc)."""
    if hasattr(model, "candidate_distribution"):
        return [model.candidate_distribution(p, c) for p, c in zip(world.prompts, world.candidates)]
    return [renormalise(lp) for lp in candidate_logprobs(model, tokenizer, world)]


def candidate_mass(model, tokenizer, world) -> list[float]:
    """sum_k p_LM(y_k | x) per prompt: how much of the LM's mass lies on the candidate set (<= 1).
    Objectives with an NLL term (RPO, SFT) see these absolute probabilities."""
    return [float(np.exp(lp).sum()) for lp in candidate_logprobs(model, tokenizer, world)]


def evaluate_lm(model, tokenizer, world, reference_probs=None) -> dict:
    """``pluralign.worlds.evaluate_policy`` on the LM's renormalised candidate distributions."""
    return evaluate_policy(world, candidate_distributions(model, tokenizer, world), reference_probs)
