"""Reward-model losses: Bradley-Terry on pairs, Plackett-Luce on rankings, reward centring.

Pure functions of scalar rewards r(x, y) produced by a reward model; they return per-example
losses [B] (before example weights), and the loop reduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pluralign.objectives.plackett_luce import plackett_luce_loss
from pluralign.objectives.registry import PreferenceLogps, preference_stats


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    preference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood (Ouyang et al. 2022; TRL's RewardTrainer):

        d = r(x, y_w) - r(x, y_l) - m,      l = -p log sigma(d) - (1 - p) log sigma(-d),

    with margin m (Llama-2's margin loss; 0 when absent) and p = P(y_w > y_l) the soft label
    (``preference``; 1 when absent, the hard-label loss -log sigma(d)). Shapes [B]. At
    r_w == r_l, m = 0, the loss is ln 2 for any p.
    """
    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    if preference is None:
        return -F.logsigmoid(d)
    return -preference * F.logsigmoid(d) - (1.0 - preference) * F.logsigmoid(-d)


def plackett_luce_reward_loss(rewards, ranking, num_ranked, response_mask) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of a (possibly top-k) ranking under rewards r_k:

        l = -sum_j [ r_tau(j) - log sum_{l in S_j} exp(r_l) ],   S_j = responses not ranked before j,

    the listwise loss of :func:`pluralign.objectives.plackett_luce.plackett_luce_loss` with the
    implicit reward replaced by the model's score (beta = 1, no reference). K = 2 is
    :func:`bradley_terry_loss`. Shapes: rewards [B, K], ranking [B, K], num_ranked [B]."""
    return plackett_luce_loss(rewards, torch.zeros_like(rewards), ranking, num_ranked, response_mask, beta=1.0)


def reward_centering(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(sum_k r_k)^2 per example, [B]: TRL's ``center_rewards_coefficient`` term (Eisenstein et
    al. 2023), which for pairs is (r_w + r_l)^2; it pins the free offset of the rewards near 0.
    The loop adds coefficient * this to the loss."""
    return (rewards * response_mask.to(rewards.dtype)).sum(-1) ** 2


def reward_stats(rewards, ranking, num_ranked, response_mask) -> dict[str, torch.Tensor]:
    """Per-example detached statistics of reward-model scores, with the preference objectives'
    names: ``rewards/chosen`` (top-ranked response), ``rewards/rejected`` (mean of the others),
    ``rewards/margins``, ``rewards/accuracies`` (the top response beats every other) and
    ``rewards/ranking_accuracy`` (fraction of the ranking's implied pairs ordered correctly)."""
    inputs = PreferenceLogps(rewards, torch.zeros_like(rewards), torch.ones_like(rewards), ranking, num_ranked,
                             response_mask)
    stats = preference_stats(inputs, beta=1.0)
    return {k: v for k, v in stats.items() if k.startswith("rewards/")}


def reward_model_loss(rewards, ranking, num_ranked, response_mask, preference=None, margin=None,
                      center_coefficient: float = 0.0) -> torch.Tensor:
    """Per-example reward-model loss [B]: Bradley-Terry on pairs when a soft label ``preference``
    or a ``margin`` is given (those are pair quantities), Plackett-Luce otherwise (which is
    Bradley-Terry for K = 2); plus ``center_coefficient * reward_centering``."""
    if preference is not None or margin is not None:
        if rewards.shape[1] != 2 or not bool((num_ranked == 2).all()):
            raise ValueError("reward model: soft labels and margins are defined for pairs (K = 2) only")
        chosen, rejected = ranking[:, 0:1], ranking[:, 1:2]
        loss = bradley_terry_loss(rewards.gather(1, chosen).squeeze(1), rewards.gather(1, rejected).squeeze(1),
                                  margin=margin, preference=preference)
    else:
        loss = plackett_luce_reward_loss(rewards, ranking, num_ranked, response_mask)
    if center_coefficient:
        loss = loss + center_coefficient * reward_centering(rewards, response_mask)
    return loss
