"""Scoring rollouts: the k completions of a prompt as one shared-prefix example.

The k completions of a prompt are the same shape as a ranking of k responses: one prompt, k
responses after it. Each prompt becomes one :class:`TokenizedExample` (the prompt once, its k
completions after it), so policy and reference log-probs of a rollout come from one
shared-prefix forward (:mod:`pluralign.data.collate`, :mod:`pluralign.logprobs`), per token.
"""

from __future__ import annotations

import torch

from pluralign.data.collate import Batch, Collator
from pluralign.data.tokenize import TokenizedExample
from pluralign.generation import Completions


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt token ids as the data layer makes them (:mod:`pluralign.data.tokenize`): the
    tokenizer's BOS first when it has one and does not add it itself."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] + ids if bos is not None and (not ids or ids[0] != bos) else ids


def rollout_examples(completions: Completions) -> list[TokenizedExample]:
    """One example per prompt with its k completions as responses (in sampling order)."""
    ids = completions.completion_ids()
    k = completions.num_completions
    return [
        TokenizedExample(prompt_ids=tuple(p), response_ids=tuple(tuple(r) for r in ids[b * k : (b + 1) * k]),
                         ranking=tuple(range(k)))
        for b, p in enumerate(completions.prompt_ids)
    ]


def rollout_batch(completions: Completions, collator: Collator) -> Batch:
    return collator(rollout_examples(completions))


def unflatten_tokens(values: torch.Tensor, gather_seq: torch.Tensor, num_seq: int, width: int) -> torch.Tensor:
    """Flat per-token values [T] (in ``gather_seq`` order, each sequence contiguous) -> [num_seq, width],
    left-aligned, 0 elsewhere."""
    counts = torch.bincount(gather_seq, minlength=num_seq)
    starts = counts.cumsum(0) - counts
    pos = torch.arange(values.shape[0], device=values.device) - starts[gather_seq]
    out = values.new_zeros(num_seq, width)
    return out.index_put((gather_seq, pos), values)


def token_logprobs(scorer, batch: Batch, width: int) -> torch.Tensor:
    """log pi(a_t|s_t) [N, width] of every completion token under ``scorer`` (a
    :class:`pluralign.logprobs.SequenceLogprobs`), rows in the rollout's prompt-major order."""
    flat = scorer(batch, per_token=True)
    return unflatten_tokens(flat, batch.gather_seq, batch.num_examples * batch.max_responses, width)
