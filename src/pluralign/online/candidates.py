"""Exact sequence log-probs of every prompt's candidate set, in the shared-prefix layout.

For a finite candidate set "drawing from pi_t" is drawing from the LM's renormalised distribution
``pi_t(y_k|x) = exp(log p(y_k|x)) / sum_j exp(log p(y_j|x))`` (log p summed over the candidate's
tokens, EOS included; :mod:`pluralign.eval.world_eval`), so sampling, the snapshots and the loss all
read the same numbers. Candidates are never truncated: a candidate set longer than
``data.max_length`` is an error naming the prompt.
"""

from __future__ import annotations

import numpy as np
import torch

from pluralign.data.collate import Collator
from pluralign.data.records import PreferenceRecord
from pluralign.data.tokenize import tokenize_records
from pluralign.train.config import ConfigError


class CandidateTable:
    """One tokenized example per prompt holding all its candidates."""

    def __init__(self, tokenizer, prompts: list[str], candidates: list[list[str]], max_length: int,
                 max_prompt_length: int):
        records = [PreferenceRecord(prompt=p, responses=tuple(c), ranking=tuple(range(len(c))))
                   for p, c in zip(prompts, candidates)]
        data = tokenize_records(records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
        for x, (rec, ex) in enumerate(zip(records, data.examples)):
            full = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in rec.responses]
            if [len(r) for r in ex.response_ids] != full:
                raise ConfigError(f"online: prompt {x}: a candidate does not fit data.max_length = {max_length} "
                                  "(candidates are scored whole); raise data.max_length")
        if len(data.examples) != len(records) or data.num_truncated:
            raise ConfigError(f"online: {data.num_truncated} of {len(records)} prompts were truncated; raise "
                              f"data.max_length / data.max_prompt_length (candidate log-probs must be exact)")
        self.examples = data.examples
        self.sizes = [len(c) for c in candidates]
        self.collator = Collator(tokenizer.pad_token_id, "shared")

    def __len__(self) -> int:
        return len(self.examples)

    def logps(self, scorer, prompts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probs [n, K_max], token counts [n, K_max]) of the candidates of ``prompts``
        under ``scorer`` (a :class:`~pluralign.logprobs.SequenceLogprobs`, possibly prepared)."""
        batch = self.collator([self.examples[x] for x in prompts], list(prompts)).to(device)
        return scorer(batch)

    @torch.no_grad()
    def snapshot(self, scorer, device, chunk: int = 16) -> list[np.ndarray]:
        """Every prompt's candidate log-probs (float64 arrays of length K_x), in eval mode."""
        was = scorer.training
        scorer.eval()
        out = []
        for lo in range(0, len(self), chunk):
            xs = list(range(lo, min(len(self), lo + chunk)))
            sums, _ = self.logps(scorer, xs, device)
            out += [sums[i, : self.sizes[x]].double().cpu().numpy() for i, x in enumerate(xs)]
        scorer.train(was)
        return out


def renormalised(logp: np.ndarray) -> np.ndarray:
    """The candidate distribution of summed log-probs (softmax over the candidate set)."""
    z = np.asarray(logp, dtype=float)
    e = np.exp(z - z.max())
    return e / e.sum()
