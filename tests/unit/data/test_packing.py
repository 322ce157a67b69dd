"""Shared-layout row packing: first-fit decreasing, and the training collator's row budget."""

import pytest

from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedExample
from pluralign.train.config import ConfigError, DataConfig
from pluralign.train.data import run_collator


def _example(prompt: int, *responses: int) -> TokenizedExample:
    """An example of the given prompt/response lengths (token ids are arbitrary but distinct)."""
    return TokenizedExample(tuple(range(1, prompt + 1)), tuple(tuple(range(1, n + 1)) for n in responses),
                            tuple(range(len(responses))))


def _row_lengths(batch):
    return (batch.doc_ids >= 0).sum(1).tolist()


def test_first_fit_decreasing_rows():
    # shared lengths 5, 8, 3, 4 with room for 10 per row: 8 | 5 + 4 | 3 (longest first, first row with room)
    examples = [_example(1, 2, 2), _example(2, 3, 3), _example(1, 1, 1), _example(2, 1, 1)]
    assert [ex.num_tokens_shared for ex in examples] == [5, 8, 3, 4]
    batch = Collator(0, "shared", max_row_tokens=10)(examples)
    assert _row_lengths(batch) == [8, 9, 3]
    assert batch.input_ids.shape == (3, 9)
    # row 1 holds example 0 (5 tokens) then example 3 (4 tokens): two documents, positions restart
    assert batch.doc_ids[1].tolist() == [0] * 5 + [1] * 4
    assert batch.position_ids[1].tolist() == [0, 1, 2, 1, 2, 0, 1, 2, 2]
    # every example's responses still map to their own sequences: example b, response k -> b * K + k
    seqs = sorted(set(batch.gather_seq.tolist()))
    assert seqs == [0, 1, 2, 3, 4, 5, 6, 7]


def test_an_example_longer_than_the_budget_gets_its_own_row():
    examples = [_example(3, 4, 4), _example(1, 1, 1)]  # 11 and 3 tokens, budget 6
    assert _row_lengths(Collator(0, "shared", max_row_tokens=6)(examples)) == [11, 3]


def test_packing_never_adds_padding():
    examples = [_example(p, r, r + 1) for p, r in [(7, 3), (2, 9), (5, 5), (1, 2), (6, 1), (3, 4)]]
    one_per_row = Collator(0, "shared")(examples)
    packed = Collator(0, "shared", max_row_tokens=max(ex.num_tokens_shared for ex in examples))(examples)
    assert packed.num_tokens == one_per_row.num_tokens
    assert packed.input_ids.numel() <= one_per_row.input_ids.numel()
    assert packed.input_ids.shape[1] == one_per_row.input_ids.shape[1]  # no row longer than the longest example


def test_longest_budget_never_makes_a_row_longer_than_the_longest_example():
    # shared lengths 9, 5, 4, 3, 2: rows 9 | 5 + 4 | 3 + 2, the longest row as long as the longest example
    examples = [_example(3, 3, 3), _example(1, 2, 2), _example(2, 1, 1), _example(1, 1, 1), _example(1, 1)]
    assert [ex.num_tokens_shared for ex in examples] == [9, 5, 4, 3, 2]
    batch = Collator(0, "shared", max_row_tokens="longest")(examples)
    assert _row_lengths(batch) == [9, 9, 5]
    assert batch.input_ids.shape == (3, 9)


def test_run_collator_budget():
    assert run_collator(DataConfig(), 0, "shared").max_row_tokens == "longest"  # the default, "auto"
    assert run_collator(DataConfig(max_row_tokens=None), 0, "shared").max_row_tokens is None
    assert run_collator(DataConfig(max_row_tokens=64), 0, "shared").max_row_tokens == 64
    assert run_collator(DataConfig(), 0, "plain").max_row_tokens is None  # plain rows are never packed
    for bad in (0, "all"):
        with pytest.raises(ConfigError, match="data.max_row_tokens"):
            DataConfig(max_row_tokens=bad)
