"""Exact sequence log-probs of every prompt's responses, in the shared-prefix layout.

A :class:`ResponseTable` holds one tokenized example per prompt with all its responses (a fixed
candidate set, a probe's fixed responses, or the texts one round drew) and scores them in one
shared-prefix row per prompt. For a finite candidate set "drawing from pi_t" is drawing from the
LM's renormalised distribution ``pi_t(y_k|x) = exp(log p(y_k|x)) / sum_j exp(log p(y_j|x))`` (log p
summed over the response's tokens, EOS included; :mod:`pluralign.eval.world_eval`), so sampling,
the snapshots and the loss all read the same numbers. Candidates are never truncated: a candidate
set longer than ``data.max_length`` is an error naming the prompt.
"""

from __future__ import annotations

import numpy as np
import torch

from pluralign.data.collate import Collator
from pluralign.data.records import PreferenceRecord
from pluralign.data.tokenize import TokenizedExample, tokenize_records
from pluralign.rl.scoring import encode_prompt
from pluralign.train.config import ConfigError


class ResponseTable:
    """One tokenized example per prompt holding all its responses."""

    def __init__(self, examples: list[TokenizedExample], pad_id: int):
        self.examples = list(examples)
        self.sizes = [len(ex.response_ids) for ex in self.examples]
        self.collator = Collator(pad_id, "shared")

    @staticmethod
    def from_texts(tokenizer, prompts: list[str], responses: list[list[str]], max_prompt_length: int):
        """Responses tokenized as the data layer does (EOS closing each), prompts cut from the left to
        ``max_prompt_length`` tokens as the generator sees them; duplicates and any length allowed."""
        eos = tokenizer.eos_token_id
        examples = []
        for p, texts in zip(prompts, responses):
            ids = tuple(tuple(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]) for t in texts)
            examples.append(TokenizedExample(tuple(encode_prompt(tokenizer, p)[-max_prompt_length:]), ids,
                                             tuple(range(len(ids)))))
        return ResponseTable(examples, tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.examples)

    def logps(self, scorer, prompts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probs [n, K_max], token counts [n, K_max]) of the responses of ``prompts``
        under ``scorer`` (a :class:`~pluralign.logprobs.SequenceLogprobs`, possibly prepared)."""
        batch = self.collator([self.examples[x] for x in prompts], list(prompts)).to(device)
        return scorer(batch)

    @torch.no_grad()
    def snapshot(self, scorer, device, chunk: int = 16) -> list[np.ndarray]:
        """Every prompt's response log-probs (float64 arrays of length K_x), in eval mode."""
        was = scorer.training
        scorer.eval()
        out = []
        for lo in range(0, len(self), chunk):
            xs = list(range(lo, min(len(self), lo + chunk)))
            sums, _ = self.logps(scorer, xs, device)
            out += [sums[i, : self.sizes[x]].double().cpu().numpy() for i, x in enumerate(xs)]
        scorer.train(was)
        return out


class CandidateTable(ResponseTable):
    """A fixed candidate set per prompt, tokenized by the data layer and checked to fit whole."""

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
        super().__init__(data.examples, tokenizer.pad_token_id)


def renormalised(logp: np.ndarray) -> np.ndarray:
    """The candidate distribution of summed log-probs (softmax over the candidate set)."""
    z = np.asarray(logp, dtype=float)
    e = np.exp(z - z.max())
    return e / e.sum()
