"""What the loop aligns on: prompts with finite candidate sets, and where labels come from.

A label for responses (a, b) of prompt x is a Bernoulli draw with ``Pr(a wins) = p_x(a, b)``:

* :class:`MatrixLabeler`: ``p_x(a, b) = P_x[a, b]`` from a preference function ``x -> P_x`` (a
  world's population, which need not be transitive; any Python function returning a K x K matrix
  with ``P + P^T = 1``);
* :class:`JudgeLabeler`: ``p_x(a, b) = judge(prompt, a_text, b_text)`` (a probability, or a bool
  for a deterministic judge);
* :class:`RewardLabeler`: ``p_x(a, b) = sigmoid(r(x, a) - r(x, b))`` (Bradley-Terry reading of a
  reward model or reward functions).

Each labeler exposes the same ``matrix(x)``, the K x K label probabilities of prompt x's
candidates; the judge and reward labelers also label free text (``probabilities(prompt, texts, i,
j)``, the responses a round generated), so a judge is also the way to plug in any preference
function on text. Drawing labels is one code path (:func:`rank_groups`).
"""

from __future__ import annotations

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


class TextLabeler:
    """A labeler of texts (``probabilities(prompt, texts, i, j)``); ``matrix(x)`` is its K x K label
    matrix on candidate set x, computed once."""

    problem: OnlineProblem | None
    _cache: dict

    def matrix(self, x: int) -> np.ndarray:
        if x not in self._cache:
            self._cache[x] = pair_matrix(self, self.problem.prompts[x], self.problem.candidates[x])
        return self._cache[x]


class JudgeLabeler(TextLabeler):
    """``judge(prompt, a, b)`` for every ordered pair, asked once per prompt and pair; on free text
    (:meth:`probabilities`) once per labelled pair."""

    def __init__(self, problem: OnlineProblem | None, judge):
        self.problem, self.judge, self._cache = problem, judge, {}

    def probabilities(self, prompt: str, texts: list[str], i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Pr(texts[i] beats texts[j]) for each pair (i, j), as the judge says."""
        out = np.empty(len(i))
        for n, (a, b) in enumerate(zip(i, j)):
            p = float(self.judge(prompt, texts[a], texts[b]))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"online.judge: prompt {prompt[:40]!r}, responses {a} vs {b}: expected a probability "
                                 f"in [0, 1] or a bool, got {p!r}")
            out[n] = p
        return out


class RewardLabeler(TextLabeler):
    """Bradley-Terry labels ``sigmoid(r(x, a) - r(x, b))`` from ``rewards(prompts, completions) ->
    (scores, parts)`` (the RL loop's :class:`~pluralign.rl.rewards.WeightedRewards`); each candidate,
    or each drawn text, is scored once."""

    def __init__(self, problem: OnlineProblem | None, rewards):
        self.problem, self.rewards, self._cache, self._last = problem, rewards, {}, (None, None)

    def scores(self, prompt: str, texts: list[str]) -> np.ndarray:
        key = (prompt, tuple(texts))
        if self._last[0] != key:
            scores, _ = self.rewards([prompt] * len(texts), list(texts))
            self._last = (key, np.asarray([float(s) for s in scores]))
        return self._last[1]

    def probabilities(self, prompt: str, texts: list[str], i: np.ndarray, j: np.ndarray) -> np.ndarray:
        r = self.scores(prompt, texts)
        return 0.5 * (1.0 + np.tanh(0.5 * (r[i] - r[j])))  # sigmoid without overflow


def pair_matrix(labeler, prompt: str, texts: list[str]) -> np.ndarray:
    """The K x K label probabilities of ``texts`` under a text labeler (1/2 on the diagonal)."""
    K = len(texts)
    i, j = np.triu_indices(K, 1)
    P = np.full((K, K), 0.5)
    p = labeler.probabilities(prompt, list(texts), i, j)
    P[i, j], P[j, i] = p, 1.0 - p
    return P


def rank_groups(groups: np.ndarray, win_probability, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rank each group of response indices ([n, m]) best first.

    Every pair of columns (a, b) of the groups is labelled by one Bernoulli draw with
    ``win_probability(a, b)`` ([n], Pr(groups[:, a] beats groups[:, b])); the group is ranked by wins,
    ties broken uniformly at random (for m = 2 there are no ties: the ranking is the pair's winner
    first). Returns (rankings [n, m] of response indices, number of groups whose ranking needed a
    tie-break).
    """
    n, m = groups.shape
    wins = np.zeros((n, m))
    for a in range(m):
        for b in range(a + 1, m):
            a_wins = rng.random(n) < win_probability(a, b)
            wins[:, a] += a_wins
            wins[:, b] += ~a_wins
    jitter = rng.random((n, m)) if m > 2 else np.zeros((n, m))
    order = np.lexsort((jitter, -wins), axis=-1)  # by wins (desc), then the random tie-break
    tied = int(sum(len(set(row)) < m for row in wins)) if m > 2 else 0
    return np.take_along_axis(groups, order, axis=1), tied


def draw_labels(labeler, x: int, groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """:func:`rank_groups` of candidate indices of prompt x, with the labeler's ``matrix(x)``."""
    P = labeler.matrix(x)
    return rank_groups(groups, lambda a, b: P[groups[:, a], groups[:, b]], rng)


def draw_text_labels(labeler, prompt: str, texts: list[str], group_size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """:func:`rank_groups` of free-text responses: consecutive groups of ``group_size`` of ``texts``,
    each pair asked of the labeler's ``probabilities`` once."""
    groups = np.arange(len(texts)).reshape(-1, group_size)
    probs = {}
    for a in range(group_size):
        for b in range(a + 1, group_size):
            probs[a, b] = labeler.probabilities(prompt, texts, groups[:, a], groups[:, b])
    return rank_groups(groups, lambda a, b: probs[a, b], rng)
