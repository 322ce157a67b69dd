"""Pairwise preference losses as pure functions of summed sequence log-probs.

Every function takes per-example tensors of shape [B] and returns per-example losses [B]; the
training loop reduces. ``log pi(y|x)`` is the sum of response-token log-probs unless a docstring
says otherwise. ``logratio`` below is the DPO log-ratio difference

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)].

Soft labels. ``preference`` p in [0, 1] (per example, [B]; None means 1) is P(y_w > y_l): the
pair's label is "y_w wins" with probability p and "y_l wins" with probability 1 - p (annotator
vote fractions, rating differences, a world's exact P_ij). Each loss below is the expectation of
its hard-label form over that label, up to a constant that does not depend on the policy, so a
data set of every pair once with p = P_ij has the population objective as its expected loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def _soft_label(preference, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if preference is None else preference.to(like.dtype)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    preference: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023), sigmoid form, with a per-example soft label p (see module doc)
    and optional label smoothing eps (cDPO, a label flipped with probability eps):

        l = -q log sigma(beta h) - (1 - q) log sigma(-beta h),   q = (1 - eps) p + eps (1 - p).

    p = 1 is plain (c)DPO. The per-pair optimum is beta h = logit(q). beta is the KL weight
    (TRL's ``beta``); log-probs are summed over response tokens. At policy == reference, h = 0 and
    l = ln 2 for any eps and p.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    p = _soft_label(preference, z)
    q = (1.0 - label_smoothing) * p + label_smoothing * (1.0 - p)
    return -q * F.logsigmoid(z) - (1.0 - q) * F.logsigmoid(-z)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    tau: float,
    preference: torch.Tensor | None = None,
) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036) with a soft label p:

        l = (h - (2p - 1) / (2 tau))^2          (p = 1: the paper's (h - 1/(2 tau))^2).

    Derivation: the expected hard-label loss p (h - 1/(2 tau))^2 + (1 - p) (-h - 1/(2 tau))^2
    equals this l plus p (1 - p) / tau^2, a constant, so gradients and optimum agree. On every
    pair {i, j} once, weighted mu_i mu_j with p = P_ij, stationarity gives
    h_i - sum_j mu_j h_j = ((P mu)_i - 1/2) / tau, i.e. pi ∝ pi_ref exp((P mu)_i / tau): the
    lab's ``ipo_optimum`` with its beta = 1/tau.

    tau is the KL weight (what TRL and OpenRLHF call ``beta`` for IPO). The sampling paper (Chen et
    al. 2602.12180) writes the preference strength beta_paper4 = 1/tau. Pass summed log-probs for
    the paper's convention, or per-token means for TRL's length-normalised convention (the
    registry's ``ipo`` and ``ipo_trl`` do exactly that).
    """
    if tau <= 0:
        raise ValueError(f"IPO tau must be positive, got {tau}")
    h = logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    p = _soft_label(preference, h)
    return (h - (2.0 * p - 1.0) / (2.0 * tau)) ** 2


def rpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    eta: float,
    label_smoothing: float = 0.0,
    preference: torch.Tensor | None = None,
) -> torch.Tensor:
    """RPO, cumulative form (Liu et al. 2405.16436, eq. for L_RPO; alignment-handbook code):

        l = DPO(beta, p) + eta * beta * ( -p log pi(y_w|x) - (1 - p) log pi(y_l|x) ),

    log pi summed over the response tokens. With a soft label p both parts are the expectation
    over which response won (p = 1: the paper's NLL of the chosen response). eta = 0 is DPO
    exactly. The NLL term sees absolute sequence probabilities, so on a finite candidate set the
    lab's ``rpo_optimum`` (a distribution over the candidates) describes an LM only when the LM's
    mass sits on the candidates. TRL's ``rpo_alpha`` adds rpo_alpha * (token-mean NLL of the chosen
    tokens of the batch), so rpo_alpha ~= eta * beta * (mean chosen length in tokens) matches this
    form (eta*beta = 5e-5 with 300-token answers gives rpo_alpha ~= 0.015).
    """
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing, preference)
    return dpo - eta * beta * winner_mix(policy_chosen, policy_rejected, preference)


def winner_mix(chosen: torch.Tensor, rejected: torch.Tensor, preference: torch.Tensor | None) -> torch.Tensor:
    """p * chosen + (1 - p) * rejected: the expectation of a per-response quantity of the winner."""
    if preference is None:
        return chosen
    p = preference.to(chosen.dtype)
    return p * chosen + (1.0 - p) * rejected


def rpo_mean_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_num_tokens: torch.Tensor,
    beta: float,
    nll_coef: float,
    label_smoothing: float = 0.0,
    preference: torch.Tensor | None = None,
    rejected_num_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """RPO, token-averaged form (Liu et al., Appendix F; OpenRLHF ``nll_loss_coef``):

        l = DPO(beta, p) + nll_coef * ( -p log pi(y_w|x) / |y_w| - (1 - p) log pi(y_l|x) / |y_l| )

    with log pi summed and |y| a response's token count (p = 1: the chosen response only; a soft
    label p needs ``rejected_num_tokens``). TRL's ``rpo_alpha`` is the same
    coefficient, except that TRL averages the NLL over all chosen tokens of the batch instead of
    per sequence (equal when chosen lengths are equal).
    """
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing, preference)
    chosen = policy_chosen / chosen_num_tokens.clamp_min(1)
    rejected = chosen if preference is None else policy_rejected / rejected_num_tokens.clamp_min(1)
    return dpo - nll_coef * winner_mix(chosen, rejected, preference)
