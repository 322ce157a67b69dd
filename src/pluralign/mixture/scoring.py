"""Summed log-probs of sampled completions under any policy, in the shared-prefix layout.

The k completions of a prompt form one example (:func:`pluralign.rl.scoring.rollout_examples`):
the prompt is computed once and each completion attends to it and to itself only
(:mod:`pluralign.data.collate`, :mod:`pluralign.logprobs`).
"""

from __future__ import annotations

import numpy as np
import torch

from pluralign.data.collate import Collator
from pluralign.generation import Completions
from pluralign.logprobs import SequenceLogprobs
from pluralign.rl.scoring import rollout_examples


@torch.no_grad()
def completion_logprobs(model, completions: Completions, pad_id: int, batch_prompts: int = 16) -> np.ndarray:
    """[N] log pi(y_n | x_n) summed over each completion's tokens (EOS included when it stopped;
    a completion clipped at max_new_tokens is scored as the truncated sequence it is), rows in the
    completions' prompt-major order, float64."""
    examples = rollout_examples(completions)
    collate = Collator(pad_id, "shared")
    scorer = SequenceLogprobs(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, len(examples), batch_prompts):
            sums, _ = scorer(collate(examples[start : start + batch_prompts]).to(device))
            parts.append(sums.reshape(-1).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy()
