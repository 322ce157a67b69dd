"""Per-sequence reference computation for log-prob tests: one sequence at a time through the
model's own forward and its own logits, nothing batched, nothing masked."""

import torch


def per_sequence(model, examples, weights, params=None):
    """(summed response log-probs [B, K], gradient of sum(weights * log-probs) w.r.t. ``params``
    (default: every parameter that gets one), flattened)."""
    model.zero_grad()
    sums = torch.zeros(weights.shape)
    for b, ex in enumerate(examples):
        for k, resp in enumerate(ex.response_ids):
            ids = torch.tensor([ex.prompt_ids + resp])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            P = len(ex.prompt_ids)
            value = logp[P - 1 : P - 1 + len(resp)].gather(-1, torch.tensor(resp)[:, None]).sum()
            (weights[b, k] * value).backward()
            sums[b, k] = value.detach()
    return sums, flat_grads(model, params)


def flat_grads(model, params=None):
    params = params if params is not None else [p for p in model.parameters() if p.grad is not None]
    return torch.cat([p.grad.flatten() for p in params])
