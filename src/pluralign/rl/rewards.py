"""Sequence rewards for on-policy RL: Python functions, a reward model, or a world's true reward.

A reward function follows TRL's convention ``f(prompts, completions, **columns) -> list[float]``
(one float per completion; ``columns`` carries the data set's other fields, repeated per
completion). :class:`WeightedRewards` combines several with weights, and reports each one under
``rewards/<name>`` as TRL's GRPO/RLOO trainers do.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedExample
from pluralign.rl.scoring import encode_prompt

RewardFn = Callable[..., Sequence[float]]


def reward_name(fn) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


class WeightedRewards:
    """r = sum_i w_i f_i(prompts, completions, **columns); returns (r [N], {name: f_i [N]})."""

    def __init__(self, functions: Sequence[RewardFn], weights: Sequence[float] | None = None):
        functions = list(functions)
        if not functions:
            raise ValueError("rewards: expected at least one reward function")
        weights = [1.0] * len(functions) if weights is None else [float(w) for w in weights]
        if len(weights) != len(functions):
            raise ValueError(f"rewards: {len(functions)} functions but {len(weights)} weights")
        self.functions, self.weights = functions, weights
        self.names = [reward_name(f) for f in functions]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"rewards: reward functions need distinct names, got {self.names}")

    def __call__(self, prompts: list[str], completions: list[str], **columns):
        total = torch.zeros(len(completions), dtype=torch.float64)
        parts = {}
        for fn, w, name in zip(self.functions, self.weights, self.names):
            values = torch.as_tensor(np.asarray(fn(prompts, completions, **columns), dtype=np.float64))
            if values.shape != (len(completions),):
                raise ValueError(f"reward function {name!r}: expected {len(completions)} floats, got shape "
                                 f"{tuple(values.shape)}")
            if not torch.isfinite(values).all():
                bad = int((~torch.isfinite(values)).nonzero()[0, 0])
                raise ValueError(f"reward function {name!r}: non-finite reward {float(values[bad])} for completion "
                                 f"{bad} ({completions[bad][:60]!r})")
            parts[name] = values.float()
            total += w * values
        return total.float(), parts


def _group_examples(tokenizer, prompts: list[str], completions: list[str]) -> list[TokenizedExample]:
    """Consecutive completions of the same prompt become one shared-prefix example, tokenized as
    the data layer does (prompt with BOS if the tokenizer has one, EOS closing every response)."""
    eos = tokenizer.eos_token_id
    examples, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            responses = tuple(tuple(tokenizer(c, add_special_tokens=False)["input_ids"] + [eos])
                              for c in completions[start:i])
            examples.append(TokenizedExample(tuple(encode_prompt(tokenizer, prompts[start])), responses,
                                             tuple(range(i - start))))
            start = i
    return examples


class ModelReward:
    """A reward model as a reward function: r(x, y) for each (prompt, completion), scored with
    every prompt's completions in one shared-prefix row. ``batch_size`` prompts per forward."""

    name = "reward_model"

    def __init__(self, reward_model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = reward_model, tokenizer, batch_size
        self.collator = Collator(tokenizer.pad_token_id, "shared")

    @torch.no_grad()
    def __call__(self, prompts, completions, **columns):
        examples = _group_examples(self.tokenizer, list(prompts), list(completions))
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(examples), self.batch_size):
            part = examples[i : i + self.batch_size]
            rewards = self.model(self.collator(part).to(device))
            for b, ex in enumerate(part):
                out.extend(rewards[b, : len(ex.response_ids)].tolist())
        self.model.train(was_training)
        return out


class WorldReward:
    """The true reward of a world (:mod:`pluralign.worlds`) for completions that are candidates.

    ``kind``: ``"population"`` gives r(x, y_k) = log sum_g w_g softmax(r_g(x, .))_k, the reward
    whose PM policy softmax(r) is the population's top-choice distribution
    (``World.population_target``), so PM-RLHF with beta = 1 targets exactly that; ``"mean"`` gives
    sum_g w_g r_g(x, y_k); a group name gives that group's Bradley-Terry reward. A completion that
    is not one of the prompt's candidates is an error naming it, unless ``off_candidate`` gives
    its reward; such completions are counted in ``num_off_candidate``.
    """

    def __init__(self, world, kind: str = "population", off_candidate: float | None = None):
        self.world, self.kind, self.off_candidate = world, kind, off_candidate
        if kind not in ("population", "mean") and kind not in world.group_names:
            raise ValueError(f"world reward kind {kind!r}: expected 'population', 'mean' or a group name "
                             f"{world.group_names}")
        self.name = f"world_{kind}"
        self.num_off_candidate = 0
        self.table = {p: dict(zip(world.candidates[x], self.reward_vector(x))) for x, p in enumerate(world.prompts)}

    def reward_vector(self, x: int) -> np.ndarray:
        """The reward of each candidate of prompt x."""
        w = self.world
        if self.kind == "population":
            return np.log(w.population_target(x))
        if self.kind == "mean":
            return w.group_weights @ w.rewards[x]
        return w.rewards[x][w.group_names.index(self.kind)]

    def __call__(self, prompts, completions, **columns):
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            if p not in self.table:
                raise ValueError(f"world reward: prompt {i} ({p[:60]!r}) is not a prompt of the world")
            r = self.table[p].get(c)
            if r is None:
                if self.off_candidate is None:
                    raise ValueError(f"world reward: completion {i} ({c[:60]!r}) is not a candidate of its prompt; "
                                     "set off_candidate to give such completions a reward")
                self.num_off_candidate += 1
                r = self.off_candidate
            out.append(float(r))
        return out


__all__ = ["ModelReward", "WeightedRewards", "WorldReward", "reward_name"]
