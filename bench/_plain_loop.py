"""The plain PyTorch contender: TRL's concatenated DPO forward written out by hand, no framework.

Per step: chosen rows (prompt + chosen + EOS) and rejected rows (prompt + rejected + EOS) are
right-padded together into one [2B, L] batch; one forward gives the full [2B, L, V] logits;
log_softmax, gather the next tokens, mask to the completion tokens, sum per row; sigmoid DPO
against reference sums precomputed once (same forward under ``no_grad``); mean over the batch;
backward, gradient clipping, AdamW. Rankings enter as their implied pairs.
"""

from __future__ import annotations

import time

from _common import Baton, RunResult, RunSpec, fold_step_times, pin_threads
from _workloads import pair_view


def _collate(pairs_ids, pad_id):
    """(input_ids, attention_mask, completion_mask), chosen rows first, then rejected rows."""
    import torch

    rows = [(p, c) for p, c, _ in pairs_ids] + [(p, r) for p, _, r in pairs_ids]
    length = max(len(p) + len(resp) for p, resp in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    completion = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        input_ids[i, :n] = torch.tensor(prompt + response)
        attention[i, :n] = 1
        completion[i, len(prompt):n] = 1
    return input_ids, attention, completion


def _sequence_logps(model, input_ids, attention, completion):
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion[:, 1:]).sum(1)


def run(spec: RunSpec, baton: Baton) -> RunResult:
    pin_threads(spec.threads)
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from pluralign.models import load_tokenizer

    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer("byte")
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    pairs, plan, _origin = pair_view(spec.workload)
    eos = tokenizer.eos_token_id

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    pairs_ids = [(encode(p["prompt"]), encode(p["chosen"]) + [eos], encode(p["rejected"]) + [eos]) for p in pairs]
    result = RunResult(
        contender="plain",
        version=f"torch {torch.__version__}",
        workload=spec.workload["name"],
        comparisons_per_step=len(plan[0]),
        timed_steps=spec.timed_steps,
    )
    result.notes.append("chosen and rejected rows padded together, full logits, log_softmax, gather, mask; "
                        "optimizer adamw fused")

    start = time.perf_counter()
    reference = torch.zeros(len(pairs), 2)
    model.eval()
    with torch.no_grad():
        for indices in plan:
            sums = _sequence_logps(model, *_collate([pairs_ids[i] for i in indices], tokenizer.pad_token_id))
            reference[indices] = torch.stack(sums.chunk(2), dim=1)
    model.train()
    result.precompute_seconds = time.perf_counter() - start
    result.ref_logps = reference.tolist()

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=0.0, fused=True)
    result.setup_seconds = baton.since_start()
    losses, step_seconds = [], []
    resumed = baton.handoff()
    for pass_index in range(spec.passes):
        for position, indices in enumerate(plan):
            input_ids, attention, completion = _collate([pairs_ids[i] for i in indices], tokenizer.pad_token_id)
            policy_chosen, policy_rejected = _sequence_logps(model, input_ids, attention, completion).chunk(2)
            ref = reference[indices]
            margin = (policy_chosen - ref[:, 0]) - (policy_rejected - ref[:, 1])
            loss = -F.logsigmoid(spec.beta * margin).mean()
            loss.backward()
            if spec.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step_seconds.append(time.perf_counter() - resumed)
            if pass_index == 0 and position >= spec.warmup_steps:
                result.tokens_timed += int(attention.sum())
                result.padded_tokens_timed += attention.numel()
            resumed = baton.handoff()
    fold_step_times(result, step_seconds, spec.warmup_steps, spec.timed_steps)
    result.losses = [float(x) for x in losses]
    return result
