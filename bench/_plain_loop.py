"""The plain PyTorch contender: TRL's concatenated DPO forward written out by hand, no framework.

Per step: chosen rows (prompt + chosen + EOS) and rejected rows (prompt + rejected + EOS) are
right-padded together into one [2B, L] batch; one forward gives the full [2B, L, V] logits;
log_softmax, gather the next tokens, mask to the completion tokens, sum per row; sigmoid DPO
against reference sums precomputed once (same forward under ``no_grad``); mean over the batch;
backward, gradient clipping, AdamW.

Rankings train the same objective as pluralign, listwise Plackett-Luce DPO: one row per
(prompt, response) of each ranking, the same forward, then the PL loss written out by hand
(``-sum_j [r_tau(j) - log sum_{l >= j} exp r_tau(l)]``, r = beta * (log pi - log pi_ref)), mean over
rankings. (TRL has no listwise loss; its rankings row trains DPO on the implied pairs.)
"""

from __future__ import annotations

import time

from _common import (Baton, RunResult, RunSpec, autocast, causal_attention_pairs, fold_step_times, optimizer_step,
                     pin_threads, tokenized_examples, tokenized_pairs)
from _workloads import pair_view, records_from_json


def _collate(pairs_ids, pad_id):
    """(input_ids, attention_mask, completion_mask), chosen rows first, then rejected rows."""
    return _collate_rows([(p, c) for p, c, _ in pairs_ids] + [(p, r) for p, _, r in pairs_ids], pad_id)


def _collate_rows(rows, pad_id):
    import torch

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


def _collate_lists(examples, pad_id):
    """(input_ids, attention_mask, completion_mask) with one row per (prompt, response), example by
    example, responses in their stored order."""
    return _collate_rows([(list(ex.prompt_ids), list(r)) for ex in examples for r in ex.response_ids], pad_id)


def _plackett_luce(rewards, rankings):
    """Mean over rankings of -sum_j [r_tau(j) - logsumexp_{l >= j} r_tau(l)] (full rankings)."""
    import torch

    losses = []
    for r, tau in zip(rewards, rankings):
        ordered = r[list(tau)]
        tail = torch.logcumsumexp(ordered.flip(0), 0).flip(0)  # logsumexp over positions l >= j
        losses.append(-(ordered[:-1] - tail[:-1]).sum())
    return torch.stack(losses).mean()


def _sequence_logps(model, input_ids, attention, completion):
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits.float()  # log_softmax in fp32 under autocast
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion[:, 1:]).sum(1)


def run(spec: RunSpec, baton: Baton) -> RunResult:
    pin_threads(spec.threads)
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if any(len(r["responses"]) > 2 for r in spec.workload["records"]):
        return _run_listwise(spec, baton, model)
    pairs, plan, _origin = pair_view(spec.workload)
    tokenizer, pairs_ids = tokenized_pairs(spec, pairs)
    result = RunResult(
        contender="plain",
        version=f"torch {torch.__version__}",
        workload=spec.workload["name"],
        comparisons_per_step=len(plan[0]),
        timed_steps=spec.timed_steps,
    )
    result.notes.append("chosen and rejected rows padded together, full logits, log_softmax, gather, mask; "
                        f"optimizer adamw fused; {spec.precision}" + (" autocast" if spec.precision != "fp32" else ""))

    start = time.perf_counter()
    reference = torch.zeros(len(pairs), 2)
    model.eval()
    with torch.no_grad(), autocast(spec.precision):
        for indices in plan:
            sums = _sequence_logps(model, *_collate([pairs_ids[i] for i in indices], tokenizer.pad_token_id))
            reference[indices] = torch.stack(sums.chunk(2), dim=1)
    model.train()
    result.precompute_seconds = time.perf_counter() - start
    result.ref_logps = reference.tolist()

    def step_loss(indices):
        input_ids, attention, completion = _collate([pairs_ids[i] for i in indices], tokenizer.pad_token_id)
        with autocast(spec.precision):
            policy_chosen, policy_rejected = _sequence_logps(model, input_ids, attention, completion).chunk(2)
        ref = reference[indices]
        margin = (policy_chosen - ref[:, 0]) - (policy_rejected - ref[:, 1])
        return -F.logsigmoid(spec.beta * margin).mean(), attention

    return _train(spec, baton, model, result, plan, step_loss)


def _train(spec: RunSpec, baton: Baton, model, result: RunResult, plan, step_loss) -> RunResult:
    """The timed loop: ``step_loss(indices) -> (loss, attention mask)`` per planned batch, then
    backward, clipping and a fused AdamW step; token counts from the first pass's timed batches."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=0.0, fused=True)
    result.setup_seconds = baton.since_start()
    losses, step_seconds = [], []
    resumed = baton.handoff()
    for pass_index in range(spec.passes):
        for position, indices in enumerate(plan):
            loss, attention = step_loss(indices)
            optimizer_step(model, optimizer, loss, spec.max_grad_norm)
            losses.append(loss.detach())
            step_seconds.append(time.perf_counter() - resumed)
            if pass_index == 0 and position >= spec.warmup_steps:
                result.tokens_timed += int(attention.sum())
                result.logit_tokens_timed += int(attention.sum())
                result.padded_tokens_timed += attention.numel()
                result.attention_pairs_timed += causal_attention_pairs(attention.sum(dim=-1))
            resumed = baton.handoff()
    fold_step_times(result, step_seconds, spec.warmup_steps, spec.timed_steps)
    result.losses = [float(x) for x in losses]
    return result


def _run_listwise(spec: RunSpec, baton: Baton, model) -> RunResult:
    """Plackett-Luce DPO on full rankings, batches of rankings in the shared plan."""
    import torch

    records = records_from_json(spec.workload["records"])
    tokenizer, examples = tokenized_examples(spec, records)
    plan = spec.workload["plan"]
    per = spec.workload["comparisons_per_record"]
    result = RunResult(contender="plain", version=f"torch {torch.__version__}", workload=spec.workload["name"],
                       comparisons_per_step=per * len(plan[0]), timed_steps=spec.timed_steps)
    result.notes.append("objective plackett_luce (listwise, written out); one row per response, full logits; "
                        f"optimizer adamw fused; {spec.precision}")

    def logps(indices):
        sums = _sequence_logps(model, *_collate_lists([examples[i] for i in indices], tokenizer.pad_token_id))
        return sums.view(len(indices), -1)

    start = time.perf_counter()
    kmax = max(len(ex.response_ids) for ex in examples)
    reference = torch.zeros(len(examples), kmax)
    model.eval()
    with torch.no_grad(), autocast(spec.precision):
        for indices in plan:
            reference[indices] = logps(indices).float()
    model.train()
    result.precompute_seconds = time.perf_counter() - start
    result.ref_logps = reference.tolist()

    def step_loss(indices):
        rows = [examples[i] for i in indices]
        input_ids, attention, completion = _collate_lists(rows, tokenizer.pad_token_id)
        with autocast(spec.precision):
            policy = _sequence_logps(model, input_ids, attention, completion).view(len(indices), -1)
        return _plackett_luce(spec.beta * (policy - reference[indices]), [records[i].ranking for i in indices]), attention

    return _train(spec, baton, model, result, plan, step_loss)
