"""One optimizer step, shared by every training loop: accumulation, autocast, clipping, the
non-finite guard, optimizer and schedule.

    driver = StepDriver(accelerator, model, optimizer, scheduler, max_grad_norm=1.0, max_nonfinite=3)
    outcome = driver.step(step, micro_batches, loss_fn)

``loss_fn(micro_batch)`` runs the (prepared) model and returns the micro-batch's loss, normalised
as the mean over one micro-batch; accelerate's ``backward`` divides it by the number of
micro-batches (``Accelerator(gradient_accumulation_steps=...)``), so the step's gradient is the mean
over the step's global batch. Gradients are synchronised across processes on the last micro-batch
only (``accelerator.accumulate``), clipped through the prepared model's parameters (FSDP clips the
whole gradient, not shards), then

* if the summed loss or the gradient norm is not finite on any process (the flag is all-reduced),
  the step is skipped: gradients are discarded and the weights and optimizer state are untouched;
  the skip is counted (``skipped_steps``) and logged with its step number, and after
  ``max_nonfinite`` skipped steps in a row the run stops with :class:`NonFiniteError`;
* otherwise the optimizer steps.

The schedule steps once per optimizer step in both cases (it is a function of the step number, so
a skipped step does not shift the schedule of the steps after it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from pluralign.errors import PluralignError

log = logging.getLogger(__name__)


class NonFiniteError(PluralignError):
    """Training stopped: too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class StepOutcome:
    loss_sum: float  # sum over micro-batches of loss_fn's values on this process
    grad_norm: float  # before clipping; inf or nan on a skipped step
    skipped: bool
    learning_rate: float  # for the next step (after the schedule stepped)


class NonFiniteGuard:
    """Counts steps whose loss or gradient norm is not finite on any process."""

    def __init__(self, accelerator, max_in_a_row: int):
        self.accelerator, self.max_in_a_row = accelerator, max_in_a_row
        self.skipped_steps = 0
        self.in_a_row: list[int] = []

    def finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach().float()) | ~torch.isfinite(grad_norm.detach().float())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad.to(self.accelerator.device), reduction="sum")
        return float(bad.sum()) == 0.0

    def record(self, step: int, ok: bool, loss: float, grad_norm: float) -> None:
        if ok:
            self.in_a_row = []
            return
        self.skipped_steps += 1
        self.in_a_row.append(step)
        log.warning("step %d skipped: non-finite loss %s or gradient norm %s (on at least one process); "
                    "weights unchanged (%d skipped so far)", step, loss, grad_norm, self.skipped_steps)
        if len(self.in_a_row) >= self.max_in_a_row:
            raise NonFiniteError(f"stopping: steps {self.in_a_row} had a non-finite loss or gradient norm, "
                                 f"{len(self.in_a_row)} in a row (train.max_nonfinite_steps = {self.max_in_a_row}); "
                                 "lower optim.lr, check the data's weights, or use train.mixed_precision=no")


class StepDriver:
    """Runs optimizer steps for one prepared model (see the module docstring)."""

    def __init__(self, accelerator, model, optimizer, scheduler, max_grad_norm: float | None, max_nonfinite: int):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.guard = NonFiniteGuard(accelerator, max_nonfinite)

    def step(self, step: int, micro_batches: Iterable, loss_fn: Callable[[object], torch.Tensor]) -> StepOutcome:
        """Optimizer step number ``step`` (1-based) over ``micro_batches`` (one per accumulation step)."""
        acc = self.accelerator
        total = torch.zeros((), device=acc.device)
        for micro in micro_batches:
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss = loss_fn(micro)
                acc.backward(loss)
                total = total + loss.detach().float()
        if not acc.sync_gradients:
            raise RuntimeError(f"step {step}: got fewer micro-batches than train.grad_accum = {acc.gradient_accumulation_steps}")
        # With no clipping asked for, an infinite bound still returns the norm the guard needs.
        bound = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), bound)
        # DeepSpeed clips inside its own step and returns no norm here: the guard then checks the loss.
        grad_norm = torch.zeros((), device=acc.device) if grad_norm is None else torch.as_tensor(grad_norm, device=acc.device)
        ok = self.guard.finite(total, grad_norm)
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.guard.record(step, ok, float(total), float(grad_norm))
        return StepOutcome(float(total), float(grad_norm), not ok, self.scheduler.get_last_lr()[0])
