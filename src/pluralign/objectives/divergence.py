"""KL between the policy and the reference, estimated from preference data (``kl/reference``)."""

from __future__ import annotations

import torch


def reference_kl(policy: torch.Tensor, reference: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-example KL(pi_S || pi_ref_S) in nats over the example's own responses S:

        pi_S(y_k) = exp(log pi(y_k|x)) / sum_{j in S} exp(log pi(y_j|x))    (pi_ref_S likewise),
        kl_b = sum_{k in S} pi_S(y_k) [log pi_S(y_k) - log pi_ref_S(y_k)].

    Inputs: summed sequence log-probs [B, K] of the policy and the reference, response_mask [B, K]
    (False for padding). Returns [B]; the logged ``kl/reference`` is its mean over examples.

    Convention: this is the KL of the two models' distributions conditioned on the answer being one
    of the example's responses, a function of the implicit rewards only (for a pair,
    KL(Bernoulli(sigmoid(a)) || Bernoulli(sigmoid(b))) with a, b the policy's and reference's
    chosen-minus-rejected log-prob gaps). On a world whose responses are its candidates it equals
    the exact ``kl_to_reference`` of ``pluralign.worlds.evaluate_policy``. It is not the KL over all
    sequences, which offline data (responses not drawn from pi) cannot estimate; 0 iff the two
    models order and weigh the example's responses alike.
    """
    neg_inf = torch.finfo(policy.dtype).min
    log_pi = torch.log_softmax(policy.masked_fill(~response_mask, neg_inf), dim=-1)
    log_ref = torch.log_softmax(reference.masked_fill(~response_mask, neg_inf), dim=-1)
    terms = torch.where(response_mask, log_pi.exp() * (log_pi - log_ref), torch.zeros_like(log_pi))
    return terms.sum(-1)
