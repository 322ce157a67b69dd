"""PM divergence on sampled completions (Xiao et al. 2405.16455; PAPERS.md section 2.4).

For a pair (y_1, y_2) of completions of one prompt, the policy-implied preference and the reward
model's preference are

    p_pi = pi(y_1|x) / (pi(y_1|x) + pi(y_2|x)) = sigma(log pi(y_1|x) - log pi(y_2|x)),
    p_r  = sigma(r(x, y_1) - r(x, y_2)),

and the PM divergence of the pair is the Bernoulli KL(p_r || p_pi) (0 when the policy matches
the reward model's preference; :func:`pluralign.lab.pm_divergence` is the same on a finite set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_pm_divergence(logp_a, logp_b, r_a, r_b):
    """(KL_Bern(p_r || p_pi) [P], p_pi [P], p_r [P]) for P pairs; ``logp_*`` are summed sequence
    log-probs, ``r_*`` rewards. Computed in log space (finite for any log-prob gap)."""
    d_pi, d_r = logp_a - logp_b, r_a - r_b
    p_r = torch.sigmoid(d_r)
    kl = (p_r * (F.logsigmoid(d_r) - F.logsigmoid(d_pi)) + (1 - p_r) * (F.logsigmoid(-d_r) - F.logsigmoid(-d_pi)))
    return kl, torch.sigmoid(d_pi), p_r


def rollout_pm_divergence(seq_logp: torch.Tensor, rewards: torch.Tensor):
    """Pairs (0, 1), (2, 3), ... of each prompt's k completions ([B, k] inputs, k >= 2): the
    per-pair divergences, policy and reward preferences, flattened."""
    k = seq_logp.shape[1] - seq_logp.shape[1] % 2
    pairs = pairwise_pm_divergence(seq_logp[:, 0:k:2], seq_logp[:, 1:k:2], rewards[:, 0:k:2], rewards[:, 1:k:2])
    return tuple(t.reshape(-1) for t in pairs)
