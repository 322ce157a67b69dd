"""Preference objectives: pure functions of sequence log-probs, and a name registry."""

from pluralign.objectives.pairwise import dpo_loss, ipo_loss, logratio, rpo_loss, rpo_mean_loss
from pluralign.objectives.plackett_luce import plackett_luce_loss
from pluralign.objectives.registry import (
    OBJECTIVES,
    REFERENCE_FREE,
    PreferenceLogps,
    check_objective_args,
    compute_objective,
    get_objective,
    preference_stats,
)

__all__ = [
    "OBJECTIVES",
    "REFERENCE_FREE",
    "PreferenceLogps",
    "check_objective_args",
    "compute_objective",
    "dpo_loss",
    "get_objective",
    "ipo_loss",
    "logratio",
    "plackett_luce_loss",
    "preference_stats",
    "rpo_loss",
    "rpo_mean_loss",
]
from pluralign.objectives.penalties import PENALTIES, compute_penalty, conditional_pm_penalty, kl_penalty, pm_penalty  # noqa: E402
from pluralign.objectives.reward import bradley_terry_loss, plackett_luce_reward_loss, reward_centering  # noqa: E402
