"""The round's reference, a geometric mixture of two frozen snapshots (paper 4, PAPERS.md §5.3):

    pi_ref^(t)(y|x) ∝ pi_t(y|x)^alpha pi_ref(y|x)^(1 - alpha)
    log pi_ref^(t)(y|x) = alpha log pi_t(y|x) + (1 - alpha) log pi_ref(y|x) - log Z_t(x)

Every pairwise or listwise loss reads the reference only through differences of responses to the
same prompt, so the per-prompt normaliser ``log Z_t(x)`` cancels and the unnormalised sum of the
stored sequence log-probs is an exact stand-in. alpha = 0 keeps the fixed reference; alpha = 1 is
fully self-referential (the previous round's policy).
"""

from __future__ import annotations

import torch


def geometric_reference(logp_current: torch.Tensor, logp_reference: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha log pi_t + (1 - alpha) log pi_ref`` (unnormalised; see the module docstring).

    A weight of exactly 0 drops its term, so a snapshot log-prob of -inf (a candidate the model
    cannot produce) cannot turn into 0 * inf = nan.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if logp_current.shape != logp_reference.shape:
        raise ValueError(f"snapshot shapes differ: {tuple(logp_current.shape)} vs {tuple(logp_reference.shape)}")
    if alpha == 0.0:
        return logp_reference.clone()
    if alpha == 1.0:
        return logp_current.clone()
    return alpha * logp_current + (1.0 - alpha) * logp_reference
