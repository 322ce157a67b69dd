"""The reference precompute runs in training's own micro-batches (same shapes, same bf16 numbers)."""

import torch

from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedDataset, TokenizedExample
from pluralign.train.data import batch_order, epoch_plan, micro_batches
from pluralign.train.reference import compute_table


class BatchRecorder(torch.nn.Module):
    """Stands in for SequenceLogprobs: records each batch's dataset indices; an example's "log-prob"
    is its index plus 1000 x the size of the batch it was computed in."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, batch):
        idx = batch.index.tolist()
        self.batches.append(idx)
        s = torch.tensor([[i + 1000.0 * len(idx)] * 2 for i in idx])
        return s, torch.ones_like(s)


def _data(n):
    return TokenizedDataset([TokenizedExample((1,) * (1 + i % 5), ((2,) * (1 + i % 3), (3,)), (0, 1)) for i in range(n)])


def test_epoch_plan_is_each_process_micro_batches_round_robin():
    order = list(range(100, 124))  # 24 "indices": 3 steps of 2 processes x 2 accumulation x 2 examples
    plan = epoch_plan(order, steps=3, batch_size=2, grad_accum=2, world=2)
    assert len(plan) == 12
    for step in range(3):
        for rank in range(2):
            mine = micro_batches(order, step, 2, 2, 2, rank)
            # batch i of the plan goes to process i % world (pluralign.train.shard.shard_batches)
            assert [plan[(step * 2 + m) * 2 + rank] for m in range(2)] == mine
    assert micro_batches(order, 0, 2, 2, 2, 0) == [[100, 101], [104, 105]]
    assert micro_batches(order, 0, 2, 2, 2, 1) == [[102, 103], [106, 107]]
    assert sorted(i for b in plan for i in b) == order


def test_compute_table_follows_the_plan_then_covers_the_rest():
    data = _data(11)
    order = batch_order(data, 3, seed=4, group_by_length=False)
    plan = epoch_plan(order, steps=2, batch_size=3, grad_accum=1, world=1)  # 6 of the 11 examples
    module = BatchRecorder()
    logps, counts = compute_table(module, data, Collator(0, "shared"), 4, "cpu", plan=plan)
    assert module.batches[:2] == plan
    rest = sorted(set(range(11)) - {i for b in plan for i in b}, key=lambda i: data[i].num_tokens_shared)
    assert module.batches[2:] == [rest[:4], rest[4:]]
    expected = {i: i + 1000.0 * len(b) for b in module.batches for i in b}
    assert logps[:, 0].tolist() == [expected[i] for i in range(11)]
    assert counts.sum().item() == 22


def test_compute_table_without_a_plan_groups_by_length():
    data = _data(7)
    module = BatchRecorder()
    compute_table(module, data, Collator(0, "shared"), 3, "cpu")
    by_length = sorted(range(7), key=lambda i: data[i].num_tokens_shared)
    assert module.batches == [by_length[:3], by_length[3:6], by_length[6:]]
