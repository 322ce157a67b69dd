"""Reward-model training (``pluralign rm RECIPE.yaml``): a short script over the shared loop pieces.

    result = train_reward_model(load_config("recipes/rm_tiny.yaml", cls=RMRunConfig))

Pairs train a Bradley-Terry model, rankings (K >= 3, full or top-k) a Plackett-Luce model
(:func:`pluralign.objectives.reward.reward_model_loss`), from the same data layer as offline
training (annotator ids, example weights). The step loss is sum_i w_i l_i / batch_size per
micro-batch, as in :mod:`pluralign.train.offline`. Metrics: ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (the top response scores highest),
``rewards/ranking_accuracy`` and ``rewards/accuracies/<group>`` for annotator ids ``group/annotator``,
and the same with ``eval_`` on held-out data. ``checkpoints/step-N/model`` is the reward model's
``save_pretrained`` folder (:func:`pluralign.reward_model.load_reward_model`).
"""

from __future__ import annotations

import logging
import time

import torch

from pluralign.objectives.reward import reward_model_loss, reward_stats
from pluralign.reward_model import build_reward_model
from pluralign.rl.config import RMRunConfig
from pluralign.train.data import batch_order, load_run_data, micro_batches, run_collator
from pluralign.train.offline import TrainResult, _group_names, total_training_steps
from pluralign.train.metrics import StepStats
from pluralign.train.wiring import evaluate_held_out, start_run, wire_training

log = logging.getLogger(__name__)


def rm_losses(cfg: RMRunConfig, model, batch):
    """(per-example losses [B], per-example stats) of the reward model on one batch."""
    rewards = model(batch)
    margin = cfg.reward_model.margin
    losses = reward_model_loss(rewards, batch.ranking, batch.num_ranked, batch.response_mask,
                               preference=getattr(batch, "preference", None),
                               margin=None if margin is None else torch.full_like(rewards[:, 0], margin),
                               center_coefficient=cfg.reward_model.center_coefficient)
    return losses, reward_stats(rewards.detach(), batch.ranking, batch.num_ranked, batch.response_mask)


def train_reward_model(cfg: RMRunConfig, *, tokenizer=None, records=None, eval_records=None) -> TrainResult:
    """Train a reward model as configured; returns the unwrapped :class:`RewardModel` and the history."""
    config, accelerator, out = start_run(cfg)
    device, world = accelerator.device, accelerator.num_processes
    tokenizer, data, eval_data = load_run_data(cfg, out, accelerator.is_main_process, tokenizer=tokenizer,
                                               records=records, eval_records=eval_records)
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    total_steps = total_training_steps(cfg, len(data), world)
    per_epoch = len(data) // (bs * accum * world)

    model = build_reward_model(cfg.model.name, tokenizer, cfg.reward_model.head, dtype=cfg.model.dtype,
                               seed=cfg.model.seed, attn_implementation=cfg.model.attn_implementation).to(device)
    # Every response scores only what it attends to, so the shared layout is exact for any backbone.
    collator = run_collator(cfg.data, tokenizer.pad_token_id, "plain" if cfg.data.layout == "plain" else "shared")
    run = wire_training(accelerator, cfg, model, out, total_steps, config, "reward model", export=lambda m: m.source,
                        prefix="source.")
    model, groups, rank = run.module, _group_names(data), accelerator.process_index
    epoch_order, order_epoch = None, -1
    model.train()
    for step in range(run.start_step, total_steps):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:  # a function of (seed, epoch) only: resume lands on the same batches
            epoch_order = batch_order(data, bs * accum * world, cfg.train.seed + epoch, cfg.data.group_by_length)
            order_epoch = epoch
        stats = StepStats(groups, device)
        step_batches = micro_batches(epoch_order, in_epoch, bs, accum, world, rank)

        def micro_loss(idx):
            batch = collator([data[i] for i in idx], idx).to(device)
            losses, ex_stats = rm_losses(cfg, model, batch)
            stats.add(losses.detach(), batch.weights, ex_stats, batch.groups, batch.num_tokens, batch.padding_fraction)
            return (batch.weights * losses).sum() / bs

        t0 = time.perf_counter()
        outcome = run.driver.step(step + 1, step_batches, micro_loss)
        done = step + 1
        row = {**stats.reduce(accelerator, time.perf_counter() - t0), **run.step_fields(outcome, done, per_epoch)}
        if eval_data is not None and cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == total_steps):
            row.update(evaluate_reward_model(cfg, model, eval_data, collator, accelerator))
        run.record(row, done, total_steps, done % cfg.train.log_every == 0 or done == total_steps, tokenizer, per_epoch)
    run.close()
    return TrainResult(out, total_steps, run.history, accelerator.unwrap_model(model), tokenizer, collator.layout)


def evaluate_reward_model(cfg: RMRunConfig, model, data, collator, accelerator) -> dict:
    """Held-out loss and accuracies (overall and per annotator group), ``eval_`` prefixed."""
    return evaluate_held_out(lambda batch: rm_losses(cfg, model, batch), model, data, _group_names(data), collator,
                             accelerator, cfg.train.batch_size)
