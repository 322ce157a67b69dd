"""Preference collapse under KL-regularised RLHF versus preference matching (paper 1, §2.2).

Two responses, the majority preferring y1 with probability ``p`` (``r1 - r2 = logit(p)``). The
minority response y2 should keep mass ``1 - p`` under preference matching; KL-RLHF instead gives
``pi(y2) = pi_ref(y2) e^{r2/beta} / Z``, which vanishes as beta -> 0 (collapse) and is biased
toward whatever the reference favours.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logit

from .metrics import minority_mass
from .optima import kl_rlhf_optimum, pm_rlhf_optimum

DEFAULT_BETAS = (2.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.001)
DEFAULT_REFERENCE_MAJORITY_MASSES = (0.5, 0.7, 0.9, 0.99)


def two_response_rewards(p_majority: float) -> np.ndarray:
    """Bradley-Terry rewards ``[logit(p), 0]`` so that ``P(y1 beats y2) = p``."""
    if not 0 < p_majority < 1:
        raise ValueError(f"p_majority must lie strictly between 0 and 1, got {p_majority!r}")
    return np.array([logit(p_majority), 0.0])


def preference_collapse_table(p_majority: float = 0.51, betas=DEFAULT_BETAS,
                              reference_majority_masses=DEFAULT_REFERENCE_MAJORITY_MASSES) -> list[dict]:
    """Minority mass under KL-RLHF and PM for each (beta, pi_ref(y1)) (paper 1, PAPERS.md §2.2).

    Each row holds ``beta``, ``ref_majority`` = pi_ref(y1), and the minority's mass pi(y2) under
    ``kl_rlhf`` (pi_ref e^{r/beta}), ``pm_rlhf`` (softmax(r/beta), the PM-RLHF optimum at that
    beta, which is reference-free) and ``pm`` (softmax(r), the preference-matching target
    ``1 - p``). KL-RLHF reaches the target only at beta = 1 with a uniform reference.
    """
    rewards = two_response_rewards(p_majority)
    rows = []
    pm_target = float(minority_mass(pm_rlhf_optimum(rewards, 1.0), [1]))
    for beta in betas:
        pm_beta = float(minority_mass(pm_rlhf_optimum(rewards, beta), [1]))
        for ref_major in reference_majority_masses:
            if not 0 < ref_major < 1:
                raise ValueError(f"reference majority masses must lie in (0, 1), got {ref_major!r}")
            pi_kl = kl_rlhf_optimum(rewards, np.array([ref_major, 1.0 - ref_major]), beta)
            rows.append({
                "beta": float(beta),
                "ref_majority": float(ref_major),
                "kl_rlhf_minority": float(pi_kl[1]),
                "pm_rlhf_minority": pm_beta,
                "pm_minority": pm_target,
            })
    return rows


def collapse_reference_numbers(p_majority: float = 0.51) -> dict:
    """The three §2.2 / §8.1 numbers: PM pi(y1); KL uniform ref beta=0.01; KL beta=1, pi_ref(y1)=0.9.

    Expected for p = 0.51: 0.51, ~0.982 (= sigmoid(100 logit 0.51) ≈ sigmoid(4.0)) and ~0.904.
    """
    rewards = two_response_rewards(p_majority)
    return {
        "pm_majority": float(pm_rlhf_optimum(rewards, 1.0)[0]),
        "kl_uniform_beta_0.01_majority": float(kl_rlhf_optimum(rewards, [0.5, 0.5], 0.01)[0]),
        "kl_beta_1_ref_0.9_majority": float(kl_rlhf_optimum(rewards, [0.9, 0.1], 1.0)[0]),
    }
