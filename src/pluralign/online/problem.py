"""What the loop aligns on: prompts with finite candidate sets, and where labels come from.

A label for responses (a, b) of prompt x is a Bernoulli draw with ``Pr(a wins) = p_x(a, b)``:

* :class:`MatrixLabeler`: ``p_x(a, b) = P_x[a, b]`` from a preference function ``x -> P_x`` (a
  world's population, which need not be transitive; any Python function returning a K x K matrix
  with ``P + P^T = 1``);
* :class:`JudgeLabeler`: ``p_x(a, b) = judge(prompt, a_text, b_text)`` (a probability, or a bool
  for a deterministic judge);
* :class:`RewardLabeler`: ``p_x(a, b) = sigmoid(r(x, a) - r(x, b))`` (Bradley-Terry reading of a
  reward model or reward functions).

Each labeler exposes the same ``matrix(x)``, the K x K label probabilities of prompt x, so drawing
labels is one code path (:func:`draw_labels`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pluralign.train.config import ConfigError


@dataclass
class OnlineProblem:
    """Prompts, their candidate sets, and (optionally) the exact preference matrix of each prompt."""

    prompts: list[str]
    candidates: list[list[str]]
    preference: Callable[[int], np.ndarray] | None = None  # x -> [K_x, K_x] with P[i, j] = Pr(i > j)

    def __post_init__(self):
        if not self.prompts or len(self.prompts) != len(self.candidates):
            raise ValueError(f"OnlineProblem: expected one candidate list per prompt, got {len(self.prompts)} "
                             f"prompts and {len(self.candidates)} candidate lists")
        for x, cands in enumerate(self.candidates):
            if len(cands) < 2 or len(set(cands)) != len(cands):
                raise ValueError(f"OnlineProblem.candidates[{x}]: expected >= 2 distinct strings, got {cands!r}")

    @classmethod
    def from_world(cls, world) -> "OnlineProblem":
        return cls(list(world.prompts), [list(c) for c in world.candidates], world.preference_matrix)


def import_callable(spec: str, key: str):
    """``module:function`` -> the function; the error names the recipe key."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{key}: cannot import {spec!r} (expected 'module:function'): {err}") from None


def check_preference_matrix(P, x: int, K: int, source: str) -> np.ndarray:
    P = np.asarray(P, dtype=float)
    if P.shape != (K, K):
        raise ValueError(f"{source}: prompt {x}: expected a {K} x {K} preference matrix, got shape {P.shape}")
    if not np.all(np.isfinite(P)) or np.any(P < 0) or np.any(P > 1):
        raise ValueError(f"{source}: prompt {x}: preference probabilities must lie in [0, 1]")
    if not np.allclose(P + P.T, 1.0, atol=1e-6):
        raise ValueError(f"{source}: prompt {x}: expected P[i, j] + P[j, i] = 1 (and 1/2 on the diagonal)")
    return P


class MatrixLabeler:
    def __init__(self, problem: OnlineProblem, source: str = "online preference"):
        if problem.preference is None:
            raise ConfigError("online.labels = 'preference' needs a problem with preference matrices "
                              "(data.world, or online.problem returning OnlineProblem(..., preference=f))")
        self.problem, self.source, self._cache = problem, source, {}

    def matrix(self, x: int) -> np.ndarray:
        if x not in self._cache:
            K = len(self.problem.candidates[x])
            self._cache[x] = check_preference_matrix(self.problem.preference(x), x, K, self.source)
        return self._cache[x]


class JudgeLabeler:
    """``judge(prompt, a, b)`` for every ordered pair, asked once per prompt and pair."""

    def __init__(self, problem: OnlineProblem, judge):
        self.problem, self.judge, self._cache = problem, judge, {}

    def matrix(self, x: int) -> np.ndarray:
        if x not in self._cache:
            prompt, cands = self.problem.prompts[x], self.problem.candidates[x]
            K = len(cands)
            P = np.full((K, K), 0.5)
            for i in range(K):
                for j in range(i + 1, K):
                    p = float(self.judge(prompt, cands[i], cands[j]))
                    if not 0.0 <= p <= 1.0:
                        raise ValueError(f"online.judge: prompt {x}, candidates {i} vs {j}: expected a probability "
                                         f"in [0, 1] or a bool, got {p!r}")
                    P[i, j], P[j, i] = p, 1.0 - p
            self._cache[x] = P
        return self._cache[x]


class RewardLabeler:
    """Bradley-Terry labels from ``rewards(prompts, completions) -> (scores, parts)`` (the RL loop's
    :class:`~pluralign.rl.rewards.WeightedRewards`); each candidate is scored once."""

    def __init__(self, problem: OnlineProblem, rewards):
        self.problem, self.rewards, self._cache = problem, rewards, {}

    def matrix(self, x: int) -> np.ndarray:
        if x not in self._cache:
            cands = self.problem.candidates[x]
            scores, _ = self.rewards([self.problem.prompts[x]] * len(cands), list(cands))
            r = np.asarray([float(s) for s in scores])
            z = r[:, None] - r[None, :]
            self._cache[x] = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
        return self._cache[x]


def draw_labels(labeler, x: int, groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rank each group of drawn candidate indices ([n, m]) best first.

    Every pair in a group is labelled by one Bernoulli draw; the group is ranked by wins, ties
    broken uniformly at random (for m = 2 there are no ties: the ranking is the pair's winner
    first). Returns (rankings [n, m] of candidate indices, number of groups whose ranking needed a
    tie-break).
    """
    P = labeler.matrix(x)
    n, m = groups.shape
    wins = np.zeros((n, m))
    for a in range(m):
        for b in range(a + 1, m):
            a_wins = rng.random(n) < P[groups[:, a], groups[:, b]]
            wins[:, a] += a_wins
            wins[:, b] += ~a_wins
    jitter = rng.random((n, m)) if m > 2 else np.zeros((n, m))
    order = np.lexsort((jitter, -wins), axis=-1)  # by wins (desc), then the random tie-break
    tied = int(sum(len(set(row)) < m for row in wins)) if m > 2 else 0
    return np.take_along_axis(groups, order, axis=1), tied
