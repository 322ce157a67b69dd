"""The wiring every loop repeats, in three calls:

    config, accelerator, out = start_run(cfg)
    run = wire_training(accelerator, cfg, module, out, total_steps, config, "rl", export=lambda m: m.model,
                        prefix="model.")
    for step in range(run.start_step, total_steps):
        outcome = run.driver.step(step + 1, micro_batches, loss_fn)
        row = {..., **run.step_fields(outcome, step + 1, per_epoch)}
        run.record(row, step + 1, total_steps, logged, tokenizer, per_epoch)   # history, log, progress, save
    run.close()

AdamW and the schedule (:mod:`pluralign.train.optim`), ``accelerator.prepare`` of the module and
optimizer (the schedule is registered for checkpointing, not prepared), the
:class:`~pluralign.train.checkpoint.Checkpointer`, the :class:`~pluralign.train.step.StepDriver`,
with ``train.resume`` the restored state of the latest checkpoint, the metrics logger and the
progress display.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from pluralign.train.checkpoint import Checkpointer
from pluralign.train.config import check_config, to_dict
from pluralign.train.metrics import MetricsLogger, StepStats
from pluralign.train.optim import build_optimizer, build_scheduler
from pluralign.train.progress import Progress
from pluralign.train.resume import check_resume
from pluralign.train.setup import make_accelerator, open_run_folder
from pluralign.train.shard import shard_batches
from pluralign.train.step import StepDriver

log = logging.getLogger(__name__)


def start_run(cfg):
    """(JSON config, accelerator, run folder): checked config, seeded accelerator, the run folder
    opened (and, with ``train.resume``, the stored run checked against this config)."""
    check_config(cfg)
    config = json.loads(json.dumps(to_dict(cfg)))
    accelerator = make_accelerator(cfg.train)
    out = open_run_folder(cfg.train, accelerator, config)
    if cfg.train.resume:
        check_resume(out, config, accelerator.num_processes)
    return config, accelerator, out


@dataclass
class WiredRun:
    accelerator: object
    cfg: object
    module: torch.nn.Module  # prepared
    optimizer: torch.optim.Optimizer
    scheduler: object
    checkpointer: Checkpointer
    driver: StepDriver
    start_step: int  # 0, or the step of the checkpoint resumed from
    logger: MetricsLogger
    progress: Progress
    history: list = field(default_factory=list)

    def step_fields(self, outcome, done: int, per_epoch: int) -> dict:
        """The metrics every loop logs about the optimizer step itself."""
        return dict(step=done, epoch=done / per_epoch, learning_rate=outcome.learning_rate, grad_norm=outcome.grad_norm,
                    skipped_steps=self.driver.guard.skipped_steps, num_processes=self.accelerator.num_processes)

    def record(self, row: dict, done: int, total_steps: int, logged: bool, tokenizer, per_epoch: int) -> None:
        """History, metrics.jsonl (when ``logged``), progress, and the checkpoint when one is due."""
        self.history.append(row)
        if logged:
            self.logger.log(row)
        self.progress.update(done, row)
        t = self.cfg.train
        if (t.save_every and done % t.save_every == 0) or done == total_steps:
            self.checkpointer.save(done, {"step": done, "epoch": done / per_epoch,
                                          "num_processes": self.accelerator.num_processes,
                                          "skipped_steps": self.driver.guard.skipped_steps}, tokenizer)

    def close(self) -> None:
        self.progress.close()
        self.logger.close()
        self.accelerator.wait_for_everyone()


def wire_training(accelerator, cfg, module, out, total_steps: int, config: dict, desc: str, export,
                  prefix: str, schedule_steps: int | None = None) -> WiredRun:
    """``export``/``prefix``: which transformers model inside ``module`` a checkpoint saves (see
    :class:`~pluralign.train.checkpoint.Checkpointer`); ``desc`` names the run in progress lines;
    ``schedule_steps``: optimizer steps the schedule spans when a loop step takes several (PPO's
    epochs and minibatches; default ``total_steps``)."""
    optimizer = build_optimizer(module.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, schedule_steps or total_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    checkpointer = Checkpointer(accelerator, module, out, cfg.train.keep_checkpoints, export=export, prefix=prefix)
    driver = StepDriver(accelerator, module, optimizer, scheduler, cfg.optim.max_grad_norm, cfg.train.max_nonfinite_steps)
    state = checkpointer.resume() if cfg.train.resume else None
    start_step = state["step"] if state else 0
    if state:
        driver.guard.skipped_steps = state.get("skipped_steps", 0)
        log.info("resumed from step %d", start_step)
    is_main = accelerator.is_main_process
    logger = MetricsLogger(out, cfg.train.report_to, is_main, resume_step=start_step if cfg.train.resume else None,
                           config=config)
    progress = Progress(total_steps, start_step, desc, cfg.train.progress_bar and is_main, cfg.train.progress_every)
    return WiredRun(accelerator, cfg, module, optimizer, scheduler, checkpointer, driver, start_step, logger, progress)


@torch.no_grad()
def evaluate_held_out(losses_fn, module, data, groups, collator, accelerator, batch_size: int) -> dict:
    """Held-out metrics (TRL's ``eval_`` prefix) over all of ``data``, split across processes and
    summed, under the training autocast. ``losses_fn(batch) -> (per-example losses, stats)``."""
    stats = StepStats(groups, accelerator.device)
    batches = [list(range(start, min(len(data), start + batch_size))) for start in range(0, len(data), batch_size)]
    module.eval()
    t0 = time.perf_counter()
    for idx, keep in shard_batches(batches, accelerator):
        batch = collator([data[i] for i in idx], idx).to(accelerator.device)
        with accelerator.autocast():
            losses, ex_stats = losses_fn(batch)
        if keep:
            stats.add(losses, batch.weights, ex_stats, batch.groups, batch.num_tokens, batch.padding_fraction)
    module.train()
    seconds = time.perf_counter() - t0
    row = stats.reduce(accelerator, seconds)
    return {**{f"eval_{k}": v for k, v in row.items() if not k.endswith("per_second")}, "eval_runtime": seconds}
