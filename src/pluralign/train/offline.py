"""Offline preference optimization on accelerate: one script for one CPU, one GPU, or
``accelerate launch`` / ``torchrun`` (DDP, FSDP, DeepSpeed).

    result = train(load_config("recipes/dpo_tiny.yaml"))

The loop is objective-agnostic: it computes policy (and reference) sequence log-probs for a batch,
hands them to the registered objective by name, and reduces the per-example losses

    loss = sum_i w_i * l_i / (batch_size * grad_accum)        (per process; DDP averages processes)

so a step is the weighted mean over its global batch, whatever the split into processes and
micro-batches (example weights are not renormalised: EM responsibilities scale the gradient).

It is a short script over the pieces every loop shares (a reward-model or RL loop uses the same):

=========================================  ===================================================
:mod:`pluralign.train.setup`               accelerator + seed + CPU float mode; the run folder
                                           (refuses one holding another run); the policy model
:mod:`pluralign.train.optim`               AdamW and the LR schedule (stepped once per step)
:mod:`pluralign.train.checkpoint`          Checkpointer: atomic save, prune, resume
:mod:`pluralign.train.resume`              which config changes forbid a resume
:mod:`pluralign.train.step`                StepDriver: accumulation, autocast, clipping, the
                                           non-finite guard, optimizer and schedule
:mod:`pluralign.train.metrics`             per-step statistics; metrics.jsonl / TensorBoard / W&B
:mod:`pluralign.train.progress`            tqdm on a terminal, log lines elsewhere
:mod:`pluralign.train.shard`               read-only passes split across processes
:mod:`pluralign.train.reference`           reference log-probs: cached (sharded) or live
:mod:`pluralign.train.checks`              objective-against-data check at start-up
=========================================  ===================================================
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from pluralign.data.tokenize import TokenizedDataset
from pluralign.logprobs import SequenceLogprobs
from pluralign.objectives import PreferenceLogps, compute_objective
from pluralign.train.checks import check_objective_fits_data
from pluralign.train.config import ConfigError, RunConfig
from pluralign.train.data import batch_order, choose_layout, epoch_plan, load_run_data, micro_batches, run_collator
from pluralign.train.metrics import StepStats
from pluralign.train.reference import build_reference, precompute_reference
from pluralign.train.setup import build_policy
from pluralign.train.wiring import evaluate_held_out, start_run, wire_training

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None
    tokenizer: object = None
    layout: str = "shared"


def _steps(cfg: RunConfig, num_examples: int, world: int) -> tuple[int, int]:
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * world
    per_epoch = num_examples // global_batch
    if per_epoch == 0:
        raise ConfigError(f"{num_examples} training examples do not fill one global batch of {global_batch} "
                          f"(train.batch_size {cfg.train.batch_size} x train.grad_accum {cfg.train.grad_accum} x "
                          f"{world} processes)")
    total = cfg.train.max_steps if cfg.train.max_steps is not None else max(1, int(cfg.train.epochs * per_epoch))
    return per_epoch, total


def objective_losses(cfg: RunConfig, policy, reference, batch):
    """(per-example losses [B], per-example stats) of the configured objective on one batch."""
    pol, counts = policy(batch)
    ref = reference(batch)[0] if reference is not None else torch.zeros_like(pol)
    inputs = PreferenceLogps(pol, ref, counts, batch.ranking, batch.num_ranked, batch.response_mask, batch.preference)
    return compute_objective(cfg.objective.name, inputs, cfg.objective.beta, cfg.objective.args)


def train(cfg: RunConfig, *, model=None, tokenizer=None, records=None, eval_records=None, on_log=None,
          order=batch_order, on_losses=None) -> TrainResult:
    """Run preference optimization as configured; returns the trained (unwrapped) model and history.

    ``model``/``tokenizer``/``records`` replace what the config would load. ``on_log(step, model)``
    is called on the main process at every logged step (and before the first, with step 0) and may
    return extra metrics for the row, e.g. an exact evaluation on a world. ``order(data,
    global_batch, seed, group_by_length)`` returns each epoch's permutation of example indices
    (default :func:`pluralign.train.data.batch_order`); it must depend only on its arguments, or
    resume would land on other batches. ``on_losses(epoch, indices, losses)`` receives every
    micro-batch's per-example losses (detached) with their example indices.
    """
    config, accelerator, out = start_run(cfg)
    is_main, device = accelerator.is_main_process, accelerator.device

    tokenizer, data, eval_data = load_run_data(
        cfg, out, is_main, tokenizer=tokenizer, records=records, eval_records=eval_records,
        check=partial(check_objective_fits_data, cfg.objective.name, cfg.objective.beta, cfg.objective.args))
    per_epoch, total_steps = _steps(cfg, len(data), accelerator.num_processes)

    model = build_policy(cfg.model, tokenizer, model)
    policy = SequenceLogprobs(model, chunk_tokens=cfg.train.chunk_tokens, prefix_attention=cfg.model.prefix_attention,
                              compile=cfg.model.compile)
    layout = choose_layout(cfg.data.layout, policy.to(device), data, tokenizer.pad_token_id, cfg.train.batch_size, device,
                           shared=run_collator(cfg.data, tokenizer.pad_token_id, "shared"))
    collator = run_collator(cfg.data, tokenizer.pad_token_id, layout)
    bs, accum, world = cfg.train.batch_size, cfg.train.grad_accum, accelerator.num_processes
    # The reference is computed in the first epoch's own micro-batches: the same shapes give the same
    # numbers, so under bf16 autocast the first step's policy and reference log-probs agree exactly.
    epoch_order, order_epoch = order(data, bs * accum * world, cfg.train.seed, cfg.data.group_by_length), 0
    first_epoch = epoch_plan(epoch_order, min(per_epoch, total_steps), bs, accum, world)
    # precompute_reference is looked up here, at call time, so a caller may wrap it (timing it, say).
    reference, eval_reference = build_reference(cfg, accelerator, model, tokenizer, [data, eval_data], collator, out,
                                                precompute=precompute_reference, plans=[first_epoch, None])

    run = wire_training(accelerator, cfg, policy, out, total_steps, config, cfg.objective.name,
                        export=lambda m: m.model, prefix="model.")
    policy, checkpointer, driver, start_step = run.module, run.checkpointer, run.driver, run.start_step
    logger, progress = run.logger, run.progress
    groups = _group_names(data)
    history = []
    rank = accelerator.process_index
    policy.train()
    if on_log is not None and start_step == 0 and is_main:
        extra = on_log(0, accelerator.unwrap_model(policy).model) or {}
        history.append({"step": 0, **extra})
        logger.log({"step": 0, **extra})
    for step in range(start_step, total_steps):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:  # the order depends only on (seed, epoch): resume lands on the same batches
            epoch_order = order(data, bs * accum * world, cfg.train.seed + epoch, cfg.data.group_by_length)
            order_epoch = epoch
        stats = StepStats(groups, device)
        step_batches = micro_batches(epoch_order, in_epoch, bs, accum, world, rank)

        def micro_loss(idx):
            batch = collator([data[i] for i in idx], idx).to(device)
            losses, ex_stats = objective_losses(cfg, policy, reference, batch)
            if on_losses is not None:
                on_losses(epoch, idx, losses.detach())
            stats.add(losses.detach(), batch.weights, ex_stats, batch.groups, batch.num_tokens, batch.padding_fraction)
            return (batch.weights * losses).sum() / bs

        t0 = time.perf_counter()
        outcome = driver.step(step + 1, step_batches, micro_loss)
        done = step + 1
        row = stats.reduce(accelerator, time.perf_counter() - t0)
        row.update(step=done, epoch=done / per_epoch, learning_rate=outcome.learning_rate, num_processes=world,
                   grad_norm=outcome.grad_norm, skipped_steps=driver.guard.skipped_steps)
        if eval_data is not None and cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == total_steps):
            row.update(evaluate(cfg, policy, eval_reference, eval_data, collator, accelerator))
        logged = done % cfg.train.log_every == 0 or done == total_steps
        if logged and on_log is not None and is_main:
            row.update(on_log(done, accelerator.unwrap_model(policy).model) or {})
        history.append(row)
        if logged:
            logger.log(row)
        progress.update(done, row)
        if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == total_steps:
            checkpointer.save(done, {"step": done, "epoch": done / per_epoch, "layout": layout, "num_processes": world,
                                     "skipped_steps": driver.guard.skipped_steps}, tokenizer)
    progress.close()
    logger.close()
    scorer = accelerator.unwrap_model(policy)
    _log_run_summary(history, layout, scorer)
    accelerator.wait_for_everyone()
    return TrainResult(out, total_steps, history, scorer.model, tokenizer, layout)


def _log_run_summary(history, layout, scorer) -> None:
    padding = [row["padding_fraction"] for row in history if "padding_fraction" in row]
    if padding:
        log.info("padding: %.1f%% of input tokens over the run (layout %s)", 100 * sum(padding) / len(padding), layout)
    if layout == "shared":
        log.info("attention: prefix kernel on %d, dense 4-D mask on %d shared-layout policy forwards (%s)",
                 scorer.kernel_batches, scorer.dense_batches, scorer.attention_path)


def _group_names(data: TokenizedDataset) -> list[str]:
    """Annotator groups for per-group metrics: ids of the form GROUP/ANNOTATOR are grouped by GROUP."""
    return [a.split("/", 1)[0] for a in data.annotators]


def evaluate(cfg, policy, reference, data, collator, accelerator) -> dict:
    """Held-out metrics (TRL's ``eval_`` prefix) of the configured objective over the whole
    evaluation set, split across processes and summed, under the training autocast."""
    return evaluate_held_out(lambda batch: objective_losses(cfg, policy, reference, batch), policy, data,
                             _group_names(data), collator, accelerator, cfg.train.batch_size)


def total_training_steps(cfg: RunConfig, num_examples: int, world: int = 1) -> int:
    return _steps(cfg, num_examples, world)[1]


__all__ = ["TrainResult", "evaluate", "objective_losses", "total_training_steps", "train"]
