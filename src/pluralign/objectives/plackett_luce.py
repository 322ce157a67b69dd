"""Listwise DPO under the Plackett-Luce model (Rafailov et al. 2023, App. A; EM-DPO, Chidambaram et
al. 2510.15716, for rankings of 3+ responses).

With implicit rewards r_k = beta * (log pi(y_k|x) - log pi_ref(y_k|x)) (summed log-probs) and a
ranking tau (best first) of which the first m entries are observed,

    l = - sum_{j=1}^{m'} [ r_tau(j) - log sum_{l in S_j} exp(r_l) ],   S_j = responses not in tau(1..j-1),

where unranked responses stay in every S_j (they are tied below the ranked ones) and
m' = min(m, K - 1) (the last factor of a full ranking is 1). With K = 2 this is DPO exactly.
"""

from __future__ import annotations

import torch


def plackett_luce_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    ranking: torch.Tensor,
    num_ranked: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-example PL-DPO loss. Shapes: logps [B, K]; ranking [B, K] long (best first, -1 padded);
    num_ranked [B]; response_mask [B, K] bool (False for padding responses). Returns [B]."""
    B, K = policy_logps.shape
    rewards = beta * (policy_logps - ref_logps)
    neg_inf = torch.finfo(rewards.dtype).min
    rewards = rewards.masked_fill(~response_mask, neg_inf)
    safe_rank = ranking.clamp_min(0)
    picked = rewards.gather(1, safe_rank)  # [B, K] reward of the j-th ranked response
    # removed[b, j, k]: response k was ranked strictly before position j
    onehot = torch.zeros(B, K, K, dtype=torch.bool, device=rewards.device)
    onehot.scatter_(2, safe_rank[:, :, None], (ranking >= 0)[:, :, None])
    removed = torch.cumsum(onehot.long(), dim=1) - onehot.long()
    remaining = response_mask[:, None, :] & (removed == 0)
    denom = torch.logsumexp(rewards[:, None, :].expand(B, K, K).masked_fill(~remaining, neg_inf), dim=-1)
    num_valid = response_mask.sum(1)
    positions = torch.arange(K, device=rewards.device)[None, :]
    active = (positions < num_ranked[:, None]) & (positions < (num_valid - 1)[:, None])
    terms = (picked - denom).masked_fill(~active, 0.0)
    return -terms.sum(1)
