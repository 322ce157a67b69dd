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

import json
import logging
import time

import torch

from pluralign.data.collate import Collator
from pluralign.data.tokenize import tokenize_records
from pluralign.models import load_tokenizer
from pluralign.objectives.reward import reward_model_loss, reward_stats
from pluralign.reward_model import build_reward_model
from pluralign.rl.config import RMRunConfig
from pluralign.train.checkpoint import Checkpointer
from pluralign.train.config import check_config, to_dict
from pluralign.train.data import batch_order, load_records
from pluralign.train.metrics import MetricsLogger, StepStats
from pluralign.train.offline import TrainResult, _group_names, total_training_steps
from pluralign.train.optim import build_optimizer, build_scheduler
from pluralign.train.progress import Progress
from pluralign.train.resume import check_resume
from pluralign.train.setup import make_accelerator, open_run_folder
from pluralign.train.shard import shard_batches
from pluralign.train.step import StepDriver

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
    check_config(cfg)
    config = json.loads(json.dumps(to_dict(cfg)))
    accelerator = make_accelerator(cfg.train)
    out = open_run_folder(cfg.train, accelerator, config)
    if cfg.train.resume:
        check_resume(out, config, accelerator.num_processes)
    is_main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes

    tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    reports: list[str] = []
    if records is None:
        records, eval_records = load_records(cfg, tokenizer, reports)
    data, eval_data = (tokenize_records(part, tokenizer, max_length=cfg.data.max_length,
                                        max_prompt_length=cfg.data.max_prompt_length) if part else None
                       for part in (records, eval_records))
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    total_steps = total_training_steps(cfg, len(data), world)
    per_epoch = len(data) // (bs * accum * world)
    reports += [f"{name}: {part.report()}" for name, part in (("train", data), ("eval", eval_data)) if part is not None]
    if is_main:
        (out / "data_report.txt").write_text("\n\n".join(reports) + "\n")

    model = build_reward_model(cfg.model.name, tokenizer, cfg.reward_model.head, dtype=cfg.model.dtype,
                               seed=cfg.model.seed, attn_implementation=cfg.model.attn_implementation).to(device)
    # Every response scores only what it attends to, so the shared layout is exact for any backbone.
    collator = Collator(tokenizer.pad_token_id, "plain" if cfg.data.layout == "plain" else "shared",
                        cfg.data.max_row_tokens)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    checkpointer = Checkpointer(accelerator, model, out, cfg.train.keep_checkpoints, export=lambda m: m.source,
                                prefix="source.")
    driver = StepDriver(accelerator, model, optimizer, scheduler, cfg.optim.max_grad_norm, cfg.train.max_nonfinite_steps)
    state = checkpointer.resume() if cfg.train.resume else None
    start_step = state["step"] if state else 0
    if state:
        driver.guard.skipped_steps = state.get("skipped_steps", 0)

    logger = MetricsLogger(out, cfg.train.report_to, is_main, resume_step=start_step if cfg.train.resume else None,
                           config=config)
    progress = Progress(total_steps, start_step, "reward model", cfg.train.progress_bar and is_main,
                        cfg.train.progress_every)
    groups, history, rank = _group_names(data), [], accelerator.process_index
    epoch_order, order_epoch = None, -1
    model.train()
    for step in range(start_step, total_steps):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:  # a function of (seed, epoch) only: resume lands on the same batches
            epoch_order = batch_order(data, bs * accum * world, cfg.train.seed + epoch, cfg.data.group_by_length)
            order_epoch = epoch
        stats = StepStats(groups, device)
        base = in_epoch * bs * accum * world
        micro_batches = [epoch_order[lo : lo + bs] for lo in (base + (m * world + rank) * bs for m in range(accum))]

        def micro_loss(idx):
            batch = collator([data[i] for i in idx], idx).to(device)
            losses, ex_stats = rm_losses(cfg, model, batch)
            stats.add(losses.detach(), batch.weights, ex_stats, batch.groups, batch.num_tokens, batch.padding_fraction)
            return (batch.weights * losses).sum() / bs

        t0 = time.perf_counter()
        outcome = driver.step(step + 1, micro_batches, micro_loss)
        done = step + 1
        row = stats.reduce(accelerator, time.perf_counter() - t0)
        row.update(step=done, epoch=done / per_epoch, learning_rate=outcome.learning_rate, num_processes=world,
                   grad_norm=outcome.grad_norm, skipped_steps=driver.guard.skipped_steps)
        if eval_data is not None and cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == total_steps):
            row.update(evaluate_reward_model(cfg, model, eval_data, collator, accelerator))
        history.append(row)
        if done % cfg.train.log_every == 0 or done == total_steps:
            logger.log(row)
        progress.update(done, row)
        if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == total_steps:
            checkpointer.save(done, {"step": done, "epoch": done / per_epoch, "num_processes": world,
                                     "skipped_steps": driver.guard.skipped_steps}, tokenizer)
    progress.close()
    logger.close()
    accelerator.wait_for_everyone()
    return TrainResult(out, total_steps, history, accelerator.unwrap_model(model), tokenizer, collator.layout)


@torch.no_grad()
def evaluate_reward_model(cfg: RMRunConfig, model, data, collator, accelerator) -> dict:
    """Held-out loss and accuracies (overall and per annotator group), ``eval_`` prefixed."""
    stats = StepStats(_group_names(data), accelerator.device)
    bs = cfg.train.batch_size
    batches = [list(range(start, min(len(data), start + bs))) for start in range(0, len(data), bs)]
    model.eval()
    t0 = time.perf_counter()
    for idx, keep in shard_batches(batches, accelerator):
        batch = collator([data[i] for i in idx], idx).to(accelerator.device)
        with accelerator.autocast():
            losses, ex_stats = rm_losses(cfg, model, batch)
        if keep:
            stats.add(losses, batch.weights, ex_stats, batch.groups, batch.num_tokens, batch.padding_fraction)
    model.train()
    row = stats.reduce(accelerator, time.perf_counter() - t0)
    return {f"eval_{k}": v for k, v in row.items() if not k.endswith("per_second")}
