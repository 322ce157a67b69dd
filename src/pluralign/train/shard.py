"""Splitting read-only passes (evaluation, the reference precompute) across processes.

Each process takes every ``world``-th batch; processes with one batch fewer repeat a batch whose
results they drop, so every process runs the same number of forwards (FSDP/DeepSpeed forwards are
collectives). Results are then summed across processes: each example is counted by one process.
"""

from __future__ import annotations

import math


def shard_batches(batches: list[list[int]], accelerator=None) -> list[tuple[list[int], bool]]:
    """(indices, keep) for this process's share of ``batches``; ``keep`` is False for padding."""
    if accelerator is None or accelerator.num_processes == 1 or not batches:
        return [(b, True) for b in batches]
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = [(b, True) for b in batches[rank::world]]
    return mine + [(batches[0], False)] * (math.ceil(len(batches) / world) - len(mine))


def sum_across(accelerator, *tensors):
    """The element-wise sum of each tensor over processes (unchanged with one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return tensors
    return tuple(accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu() for t in tensors)
