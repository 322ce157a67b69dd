"""The TRL contender: ``trl.DPOTrainer`` at its fastest settings for this work on CPU.

Settings: reference log-probs precomputed (``precompute_ref_log_probs=True``), sigmoid loss,
beta 0.1, fp32 or bf16 autocast (``bf16=True``) as the run asks, gradient checkpointing off, no evaluation, no logging or saving,
no truncation (``max_length=None``: the workload's texts are already capped), sequential sampling
over a dataset stored in the shared batch plan's order (so TRL sees the same batches as the other
contenders), the fused AdamW that transformers picks by default, constant learning rate.
``padding_free`` is not used: TRL 1.16 disables it (it warns and falls back to padding) and it
needs FlashAttention, which does not run on CPU.

The trainer is subclassed only to observe it: the reference precompute is timed, and each step's
loss and token counts are recorded; step boundaries come from a ``TrainerCallback``.
"""

from __future__ import annotations

import tempfile
import time

from _common import Baton, RunResult, RunSpec, causal_attention_pairs, fold_step_times, pin_threads, tokenized_pairs
from _workloads import pair_view


def run(spec: RunSpec, baton: Baton) -> RunResult:
    pin_threads(spec.threads)
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    pairs, plan, _origin = pair_view(spec.workload)
    tokenizer, expected_ids = tokenized_pairs(spec, pairs)
    batch_size = len(plan[0])
    if any(batch != list(range(b * batch_size, (b + 1) * batch_size)) for b, batch in enumerate(plan)):
        raise RuntimeError("TRL needs equal-sized consecutive batches to follow the plan sequentially")
    dataset = Dataset.from_list(pairs)

    result = RunResult(
        contender="trl",
        version=f"trl {trl.__version__} (transformers {transformers.__version__})",
        workload=spec.workload["name"],
        comparisons_per_step=batch_size,
        timed_steps=spec.timed_steps,
    )
    step_seconds: list[float] = []
    resumed = [0.0]

    class StepClock(TrainerCallback):
        # A step runs from the end of the previous turn (data fetch and collation included) to its end.
        def on_train_begin(self, args, state, control, **kwargs):
            result.setup_seconds = baton.since_start()
            resumed[0] = baton.handoff()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.perf_counter() - resumed[0])
            resumed[0] = baton.handoff()

    class ObservedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            result.precompute_seconds += time.perf_counter() - start
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            step_losses.append(loss.detach())
            mask = inputs["attention_mask"]
            step_tokens.append((mask.sum(dim=-1), mask.numel()))  # counted after training, untimed
            return loss

    step_losses: list = []
    step_tokens: list = []
    output_dir = tempfile.mkdtemp(prefix="trl-", dir=spec.work_dir)
    config = DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=spec.passes * (spec.warmup_steps + spec.timed_steps),  # sequential: pass = epoch
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=spec.max_grad_norm,
        beta=spec.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        max_length=None,
        padding_free=False,
        bf16=spec.precision == "bf16",
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=spec.seed,
    )
    trainer = ObservedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                  callbacks=[StepClock()])
    if getattr(trainer.model, "is_gradient_checkpointing", False):
        raise RuntimeError("gradient checkpointing must be off for this comparison")
    result.notes.append(f"optimizer {getattr(config.optim, 'value', config.optim)}; {spec.precision}"
                        + (" (bf16=True: autocast)" if spec.precision == "bf16" else ""))

    # TRL must see exactly the tokens pluralign sees (prompt, response + EOS; a BOS only where the
    # workload's prompt text starts with it).
    prepared = trainer.train_dataset
    same = len(prepared) == len(pairs) and all(
        (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == ids
        for row, ids in zip(prepared, expected_ids)
    )
    if not same:
        raise RuntimeError("TRL tokenized the pairs differently from pluralign; the comparison would be unfair")
    result.notes.append("TRL token ids identical to pluralign's (checked per pair)")
    result.ref_logps = [list(x) for x in zip(prepared["ref_chosen_logps"], prepared["ref_rejected_logps"])]

    trainer.train()
    total = spec.passes * (spec.warmup_steps + spec.timed_steps)
    if len(step_losses) != total:
        raise RuntimeError(f"expected {total} losses, saw {len(step_losses)}")
    fold_step_times(result, step_seconds, spec.warmup_steps, spec.timed_steps)
    for row_lengths, padded in step_tokens[spec.warmup_steps : spec.warmup_steps + spec.timed_steps]:
        result.tokens_timed += int(row_lengths.sum())
        result.logit_tokens_timed += int(row_lengths.sum())
        result.padded_tokens_timed += int(padded)
        result.attention_pairs_timed += causal_attention_pairs(row_lengths)
    result.losses = [float(x) for x in step_losses]
    return result
