"""Advantage estimators and policy losses of on-policy RLHF, as pure functions of tensors.

Shapes: ``rewards`` [B, k] are sequence rewards of k completions per prompt (k >= 2 where the
estimator needs it); per-token tensors are [N, T] with ``mask`` [N, T] marking response tokens.
The loop reduces; nothing here averages over a batch unless the docstring says so.
"""

from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, TRL's RLOOTrainer):

        A_i = r_i - 1/(k-1) sum_{j != i} r_j = k/(k-1) (r_i - mean_j r_j),   over one prompt's k samples.

    An unbiased baseline: it does not depend on sample i. ``rewards`` [B, k], k >= 2.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 completions per prompt, got k = {k}")
    total = rewards.sum(-1, keepdim=True)
    return rewards - (total - rewards) / (k - 1)


def group_normalized_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (GRPO, Shao et al. 2024; TRL's GRPOTrainer):

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps),   std with Bessel's correction (torch.std),

    per prompt over its k samples; ``scale=False`` keeps only the centring (Dr. GRPO).
    """
    if rewards.shape[-1] < 2:
        raise ValueError(f"group-normalised advantages need k >= 2 completions per prompt, got {rewards.shape[-1]}")
    centred = rewards - rewards.mean(-1, keepdim=True)
    return centred / (rewards.std(-1, keepdim=True) + eps) if scale else centred


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Score-function (REINFORCE) loss per sequence: l_i = -sum_t A_it log pi(a_t|s_t), [N].

    ``advantages`` are detached: [N] sequence advantages A_i on every token (e.g. RLOO on rewards
    that already carry a k1 KL or PM penalty; the gradient estimates -grad E[A log pi(y|x)]), or
    [N, T] per token (a sequence advantage minus a penalty's direct term,
    :func:`pluralign.objectives.penalties.direct_weight`).
    """
    adv = advantages.detach()
    if adv.dim() == 1:
        return -adv * (logp * mask).sum(-1)
    return -(adv * logp * mask).sum(-1)


def with_direct_term(advantages: torch.Tensor, weight: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per-token advantages A_t - w_t (0 outside ``mask``): the direct term of a penalty whose
    coefficient depends on the action (:mod:`pluralign.objectives.penalties`, "The direct term"),
    applied at its own token only. ``advantages`` [N] (broadcast to every token) or [N, T];
    ``weight`` None leaves them as they are."""
    if weight is None:
        return advantages
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    return (adv - weight) * mask.to(weight.dtype)


def token_rewards(score: torch.Tensor, penalty: torch.Tensor, mask: torch.Tensor, clip: float | None = 5.0) -> torch.Tensor:
    """Per-token rewards of PPO-RLHF (Xiao et al. 2405.16455, authors' ``compute_rewards``):

        reward_t = -c_t,   plus clip(score, -clip, clip) at the last response token,

    with c_t a per-token penalty from :mod:`pluralign.objectives.penalties`. ``score`` [N],
    ``penalty`` and ``mask`` [N, T]; 0 outside the mask. ``clip=None`` keeps the score as is.
    """
    maskf = mask.to(penalty.dtype)
    out = -penalty * maskf
    s = score if clip is None else score.clamp(-clip, clip)
    last = last_token_index(mask)
    has = mask.any(-1)
    rows = torch.arange(mask.shape[0], device=mask.device)[has]
    return out.index_put((rows, last[has]), s[has].to(out.dtype), accumulate=True)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True of each row of ``mask`` [N, T] (0 for an empty row)."""
    t = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), t, torch.zeros_like(t)).amax(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over the response tokens:

        delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   returns_t = A_t + V_t,

    with V and A zero after the last response token. The first seed paper's authors use
    gamma = 1, lam = 0.95. Inputs [N, T] (responses left-aligned); returns (advantages, returns).
    """
    maskf = mask.to(values.dtype)
    values = values * maskf
    adv = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * maskf[:, t]
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, (adv + values) * maskf


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float = 0.2) -> torch.Tensor:
    """PPO clipped surrogate (Schulman et al. 2017), mean over each sequence's response tokens:

        l = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),   rho_t = exp(logp_t - old_logp_t).

    Returns [N]. ``advantages`` [N, T] (or [N], broadcast to every token) are detached.
    """
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logp)
    ratio = torch.exp(logp - old_logp.detach())
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip))
    maskf = mask.to(logp.dtype)
    return (per_token * maskf).sum(-1) / maskf.sum(-1).clamp_min(1)


def ppo_value_loss(values, old_values, returns, mask, clip: float = 0.2) -> torch.Tensor:
    """Clipped value loss (authors' ``critic_loss_fn``): mean_t 0.5 max((V - R)^2, (V_clip - R)^2),
    V_clip = old_V + clip(V - old_V, -eps, eps). Returns [N]."""
    old = old_values.detach()
    clipped = old + (values - old).clamp(-clip, clip)
    ret = returns.detach()
    per_token = 0.5 * torch.maximum((values - ret) ** 2, (clipped - ret) ** 2)
    maskf = mask.to(values.dtype)
    return (per_token * maskf).sum(-1) / maskf.sum(-1).clamp_min(1)


def ppo_statistics(logp, old_logp, advantages, values, old_values, returns, mask, clip: float = 0.2,
                   clip_value: float = 0.2) -> dict:
    """Detached diagnostics of a PPO minibatch, means over its response tokens (TRL's PPO names):

        policy/clipfrac_avg   share of tokens where the clipped surrogate is the one taken,
        policy/approxkl_avg   0.5 (log pi - log pi_old)^2 (an estimate of KL(pi_old || pi)),
        val/clipfrac_avg      share of tokens where the clipped value error is the larger.
    """
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logp)
    logp, values = logp.detach(), values.detach()
    ratio = torch.exp(logp - old_logp)
    maskf = mask.to(logp.dtype)
    n = maskf.sum().clamp_min(1)
    pg_clipped = (-adv * ratio.clamp(1.0 - clip, 1.0 + clip)) > (-adv * ratio)
    v_clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    vf_clipped = (v_clipped - returns) ** 2 > (values - returns) ** 2
    return {
        "policy/clipfrac_avg": (pg_clipped.to(maskf.dtype) * maskf).sum() / n,
        "policy/approxkl_avg": (0.5 * (logp - old_logp) ** 2 * maskf).sum() / n,
        "val/clipfrac_avg": (vf_clipped.to(maskf.dtype) * maskf).sum() / n,
    }


# Name -> function(rewards [B, k]) -> advantages [B, k]: the sequence-level estimators.
ADVANTAGES = {
    "rloo": rloo_advantages,
    "group_normalized": group_normalized_advantages,
}


def get_advantage_estimator(name: str):
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]
