"""Pairwise preference losses as pure functions of summed sequence log-probs.

Every function takes per-example tensors of shape [B] and returns per-example losses [B]; the
training loop reduces. ``log pi(y|x)`` is the sum of response-token log-probs unless a docstring
says otherwise. ``logratio`` below is the DPO log-ratio difference

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023), sigmoid form with optional label smoothing (cDPO):

        l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    beta is the KL weight (TRL's ``beta``); log-probs are summed over response tokens. At
    policy == reference, h = 0 and l = ln 2 for any eps.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036): l = (h - 1/(2 tau))^2.

    tau is the KL weight (what TRL and OpenRLHF call ``beta`` for IPO). The sampling paper (Chen et
    al. 2602.12180) writes the preference strength beta_paper4 = 1/tau. Pass summed log-probs for
    the paper's convention, or per-token means for TRL's length-normalised convention (the
    registry's ``ipo`` and ``ipo_trl`` do exactly that).
    """
    if tau <= 0:
        raise ValueError(f"IPO tau must be positive, got {tau}")
    h = logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (h - 1.0 / (2.0 * tau)) ** 2


def rpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    eta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """RPO, cumulative form (Liu et al. 2405.16436, eq. for L_RPO; alignment-handbook code):

        l = DPO(beta) + eta * beta * ( -log pi(y_w|x) ),   log pi summed over the chosen tokens.

    eta = 0 is DPO exactly. TRL's ``rpo_alpha`` adds rpo_alpha * (token-mean NLL of the chosen
    tokens of the batch), so rpo_alpha ~= eta * beta * (mean chosen length in tokens) matches this
    form (eta*beta = 5e-5 with 300-token answers gives rpo_alpha ~= 0.015).
    """
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    return dpo - eta * beta * policy_chosen


def rpo_mean_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_num_tokens: torch.Tensor,
    beta: float,
    nll_coef: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """RPO, token-averaged form (Liu et al., Appendix F; OpenRLHF ``nll_loss_coef``):

        l = DPO(beta) + nll_coef * ( -log pi(y_w|x) / |y_w| )

    with log pi summed and |y_w| the chosen response's token count. TRL's ``rpo_alpha`` is the same
    coefficient, except that TRL averages the NLL over all chosen tokens of the batch instead of
    per sequence (equal when chosen lengths are equal).
    """
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    return dpo - nll_coef * policy_chosen / chosen_num_tokens.clamp_min(1)
