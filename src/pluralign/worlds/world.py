"""A world: prompts with finite candidate sets and a population of annotator groups.

Every group g has a reward vector ``r_g(x, .)`` over the candidates of prompt x, on the
Bradley-Terry scale (PAPERS.md §1.1):

    P_g(y_i > y_j | x) = sigmoid(r_g(x, y_i) - r_g(x, y_j)),

and ranks candidates by Plackett-Luce with the same rewards. The population is the mixture
of groups with shares ``w_g``. Because everything is finite, the population's pairwise
preferences, its preference-matching target and any policy's distance to it are exact numbers;
a language model is scored by renormalising its candidate log-probabilities over the
candidate set (see ``pluralign.worlds.evaluate``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pluralign.data.records import PreferenceRecord

WORLD_FORMAT = "pluralign.world/v1"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so no overflow for large |z|.
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))


def _softmax(r: np.ndarray) -> np.ndarray:
    e = np.exp(r - np.max(r))
    return e / e.sum()


@dataclass
class World:
    """Prompts, candidate responses and annotator groups with known rewards.

    Fields:
        prompts: the prompts, distinct strings.
        candidates: ``candidates[x]`` is the list of K_x >= 2 distinct candidate responses for
            prompt x (K may differ between prompts).
        group_names: one distinct name per annotator group (G >= 1 groups).
        group_weights: [G] population shares ``w_g``, non-negative, summing to 1.
        rewards: ``rewards[x]`` is a [G, K_x] array; row g is group g's Bradley-Terry reward
            ``r_g(x, .)`` (only differences within a row matter).
        minority_group: index of the group whose distinctive responses are tracked.
        annotators_per_group: size of each group's annotator pool; sampled annotators get the
            ids ``"{group name}/a{index}"`` (the training metrics group accuracy by the part before "/") with ``index < annotators_per_group``.
    """

    prompts: list[str]
    candidates: list[list[str]]
    group_names: list[str]
    group_weights: np.ndarray
    rewards: list[np.ndarray]
    minority_group: int
    annotators_per_group: int

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts)
        self.candidates = [list(c) for c in self.candidates]
        self.group_names = list(self.group_names)
        if not self.prompts:
            raise ValueError("World.prompts: expected at least one prompt, got none")
        if not all(isinstance(p, str) for p in self.prompts):
            raise ValueError("World.prompts: expected a list of strings")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError("World.prompts: expected distinct prompts, found duplicates")
        if len(self.candidates) != len(self.prompts):
            raise ValueError(
                f"World.candidates: expected one candidate list per prompt "
                f"({len(self.prompts)}), got {len(self.candidates)}"
            )
        for x, cands in enumerate(self.candidates):
            if len(cands) < 2 or not all(isinstance(c, str) for c in cands):
                raise ValueError(f"World.candidates[{x}]: expected at least 2 strings, got {cands!r}")
            if len(set(cands)) != len(cands):
                raise ValueError(f"World.candidates[{x}]: expected distinct candidates, got {cands!r}")
        n_groups = len(self.group_names)
        if n_groups < 1 or len(set(self.group_names)) != n_groups:
            raise ValueError(
                f"World.group_names: expected >= 1 distinct names, got {self.group_names!r}"
            )
        weights = np.asarray(self.group_weights, dtype=float)
        if weights.shape != (n_groups,):
            raise ValueError(
                f"World.group_weights: expected shape ({n_groups},) to match group_names, "
                f"got {weights.shape}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-8:
            raise ValueError(
                f"World.group_weights: expected non-negative shares summing to 1, got {weights.tolist()}"
            )
        self.group_weights = weights
        if len(self.rewards) != len(self.prompts):
            raise ValueError(
                f"World.rewards: expected one [G, K] array per prompt ({len(self.prompts)}), "
                f"got {len(self.rewards)}"
            )
        rewards = []
        for x, r in enumerate(self.rewards):
            r = np.asarray(r, dtype=float)
            expected = (n_groups, len(self.candidates[x]))
            if r.shape != expected:
                raise ValueError(
                    f"World.rewards[{x}]: expected shape {expected} (groups, candidates), got {r.shape}"
                )
            if not np.all(np.isfinite(r)):
                raise ValueError(f"World.rewards[{x}]: expected finite rewards, got {r.tolist()}")
            rewards.append(r)
        self.rewards = rewards
        minority, pool = self.minority_group, self.annotators_per_group
        if not (isinstance(minority, (int, np.integer)) and 0 <= minority < n_groups):
            raise ValueError(f"World.minority_group: expected an index in [0, {n_groups}), got {minority!r}")
        self.minority_group = int(self.minority_group)
        if not (isinstance(pool, (int, np.integer)) and pool >= 1):
            raise ValueError(f"World.annotators_per_group: expected a positive integer, got {pool!r}")
        self.annotators_per_group = int(self.annotators_per_group)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def n_candidates(self, x: int) -> int:
        """K_x, the number of candidates of prompt x."""
        return len(self.candidates[self._check_prompt(x)])

    def _check_prompt(self, x: int) -> int:
        if not isinstance(x, (int, np.integer)) or not 0 <= x < self.n_prompts:
            raise ValueError(f"prompt index: expected an integer in [0, {self.n_prompts}), got {x!r}")
        return int(x)

    def _check_group(self, g: int) -> int:
        if not isinstance(g, (int, np.integer)) or not 0 <= g < self.n_groups:
            raise ValueError(f"group index: expected an integer in [0, {self.n_groups}), got {g!r}")
        return int(g)

    def record_indices(self, record: PreferenceRecord) -> tuple[int, tuple[int, ...]]:
        """Map a record drawn from this world to (prompt index, ranking as candidate indices)."""
        try:
            x = self.prompts.index(record.prompt)
        except ValueError:
            raise ValueError(f"record prompt {record.prompt!r} is not a prompt of this world") from None
        cands = self.candidates[x]
        try:
            ranked = tuple(cands.index(record.responses[i]) for i in record.ranking)
        except ValueError:
            raise ValueError(
                f"record for prompt {x} has a response that is not one of its candidates"
            ) from None
        return x, ranked

    # ------------------------------------------------------------------ exact quantities
    def group_preference_matrix(self, g: int, x: int) -> np.ndarray:
        """[K, K] matrix P_g with P_g[i, j] = sigmoid(r_g(x, y_i) - r_g(x, y_j)) (Bradley-Terry, §1.1).

        P_g + P_g^T = 1 and the diagonal is 1/2.
        """
        r = self.rewards[self._check_prompt(x)][self._check_group(g)]
        return _sigmoid(r[:, None] - r[None, :])

    def preference_matrix(self, x: int) -> np.ndarray:
        """Population preference matrix P = sum_g w_g P_g.

        A mixture of Bradley-Terry matrices is in general not Bradley-Terry itself: the log-odds
        logit(P_ij) are not differences of any scores, so no single reward reproduces P.
        """
        x = self._check_prompt(x)
        return sum(w * self.group_preference_matrix(g, x) for g, w in enumerate(self.group_weights))

    def group_top_choice(self, g: int, x: int) -> np.ndarray:
        """softmax(r_g(x, .)): group g's Plackett-Luce probability that each candidate is ranked first.

        This is also group g's preference-matching policy pi_PM (PAPERS.md §1.3).
        """
        return _softmax(self.rewards[self._check_prompt(x)][self._check_group(g)])

    def population_target(self, x: int) -> np.ndarray:
        """sum_g w_g softmax(r_g(x, .)): the population's probability of each candidate being top choice.

        This is the distribution a preference-matching policy for the whole population should
        put on the candidates (each group's PM policy, mixed by population share).
        """
        x = self._check_prompt(x)
        return sum(w * self.group_top_choice(g, x) for g, w in enumerate(self.group_weights))

    def minority_responses(self, x: int) -> np.ndarray:
        """Indices of the minority group's distinctive candidates for prompt x (sorted).

        Candidate k is distinctive when the minority gives it more top-choice probability than
        the rest of the population does:

            softmax(r_m)_k  >  sum_{g != m} w_g softmax(r_g)_k / sum_{g != m} w_g.

        This compares rewards in the gauge log softmax(r_g) (rewards minus their log-partition),
        because Bradley-Terry rewards are only defined up to a per-group shift; with two groups
        it reads "the minority's normalised reward exceeds the majority's". Empty when the world
        has a single group or the other groups have zero weight.
        """
        x = self._check_prompt(x)
        m = self.minority_group
        others = [g for g in range(self.n_groups) if g != m and self.group_weights[g] > 0]
        if not others:
            return np.zeros(0, dtype=int)
        rest_weight = sum(self.group_weights[g] for g in others)
        rest = sum(self.group_weights[g] * self.group_top_choice(g, x) for g in others) / rest_weight
        return np.flatnonzero(self.group_top_choice(m, x) > rest)

    # ------------------------------------------------------------------ sampling
    def _draw_annotators(
        self, n: int, rng: np.random.Generator, n_per_annotator: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw (prompt, group, annotator index) for each of n rows."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a non-negative integer number of rows, got {n!r}")
        if n_per_annotator is None:
            groups = rng.choice(self.n_groups, size=n, p=self.group_weights)
            index = rng.integers(self.annotators_per_group, size=n)
        else:
            valid = isinstance(n_per_annotator, (int, np.integer)) and n_per_annotator >= 1
            if not valid or n % n_per_annotator:
                raise ValueError(
                    f"n_per_annotator: expected a positive integer dividing n={n}, got {n_per_annotator!r}"
                )
            n_annotators = n // n_per_annotator
            # Largest-remainder rounding makes the realised group shares as close to w as possible.
            quota = self.group_weights * n_annotators
            counts = np.floor(quota).astype(int)
            order = np.argsort(-(quota - counts), kind="stable")
            counts[order[: n_annotators - counts.sum()]] += 1
            if counts.max(initial=0) > self.annotators_per_group:
                raise ValueError(
                    f"n_per_annotator: {n_annotators} annotators need {counts.tolist()} per group, more than "
                    f"annotators_per_group={self.annotators_per_group}; raise it or lower n"
                )
            ann_group = np.repeat(np.arange(self.n_groups), counts)
            ann_index = np.concatenate(
                [np.sort(rng.choice(self.annotators_per_group, size=c, replace=False)) for c in counts]
            ).astype(int)
            perm = rng.permutation(n_annotators)
            groups = np.repeat(ann_group[perm], n_per_annotator)
            index = np.repeat(ann_index[perm], n_per_annotator)
        prompts = rng.integers(self.n_prompts, size=n)
        return prompts, groups, index

    def sample_pairs(
        self,
        n: int,
        seed: int,
        sampler: str | Sequence[np.ndarray] = "uniform",
        n_per_annotator: int | None = None,
    ) -> list[PreferenceRecord]:
        """Draw n pairwise comparisons as ``PreferenceRecord.from_pair`` rows (chosen first).

        Each row: prompt x uniform; annotator group g ~ w, annotator index uniform in the pool
        (or, with ``n_per_annotator``, n / n_per_annotator annotators whose group counts are
        w rounded by largest remainder, each giving n_per_annotator consecutive rows); a pair
        i != j drawn i.i.d. from the sampler mu_x conditioned on i != j (``"uniform"``: every
        unordered pair equally likely; or a list of per-prompt distributions mu_x over the
        candidates); label y_i > y_j with probability sigmoid(r_g(x, y_i) - r_g(x, y_j)).
        Annotator ids are ``"{group name}/a{index}"``.
        """
        rng = np.random.default_rng(seed)
        mus = self._check_sampler(sampler)
        prompts, groups, index = self._draw_annotators(n, rng, n_per_annotator)
        first = np.zeros(n, dtype=int)
        second = np.zeros(n, dtype=int)
        margin = np.zeros(n)
        for x in range(self.n_prompts):
            rows = np.flatnonzero(prompts == x)
            k = self.n_candidates(x)
            if mus is None:
                a = rng.integers(k, size=rows.size)
                b = rng.integers(k - 1, size=rows.size)
                b = b + (b >= a)
            else:
                # P(i, j) ∝ mu_i mu_j for i != j: i ∝ mu_i (1 - mu_i), then j ∝ mu_j over j != i.
                mu = mus[x]
                a = rng.choice(k, size=rows.size, p=mu * (1 - mu) / np.sum(mu * (1 - mu)))
                rest = np.tile(mu, (rows.size, 1))
                rest[np.arange(rows.size), a] = 0.0
                cdf = np.cumsum(rest / rest.sum(axis=1, keepdims=True), axis=1)
                b = np.minimum((rng.random(rows.size)[:, None] > cdf).sum(axis=1), k - 1)
            first[rows], second[rows] = a, b
            margin[rows] = self.rewards[x][groups[rows], a] - self.rewards[x][groups[rows], b]
        first_wins = rng.random(n) < _sigmoid(margin)
        records = []
        for row in range(n):
            x, i, j = prompts[row], first[row], second[row]
            chosen, rejected = (i, j) if first_wins[row] else (j, i)
            records.append(
                PreferenceRecord.from_pair(
                    self.prompts[x],
                    self.candidates[x][chosen],
                    self.candidates[x][rejected],
                    annotator_id=f"{self.group_names[groups[row]]}/a{index[row]}",
                )
            )
        return records

    def sample_rankings(
        self,
        n: int,
        seed: int,
        k: int | None = None,
        n_per_annotator: int | None = None,
        n_shown: int | None = None,
    ) -> list[PreferenceRecord]:
        """Draw n Plackett-Luce rankings (PAPERS.md §1.1) by the annotator's group.

        Prompts and annotators are drawn as in ``sample_pairs``. The annotator sees ``n_shown``
        candidates (a uniform subset, listed in candidate order; default all K_x) and ranks them by
        PL with its group's rewards, sampled exactly with the Gumbel-max trick
        (argsort of r + Gumbel noise). With ``k`` only the top-k prefix is kept (a partial
        ranking; k = 1 is a top-choice observation).
        """
        if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"k: expected a positive integer (top-k prefix) or None, got {k!r}")
        if n_shown is not None and (not isinstance(n_shown, (int, np.integer)) or n_shown < 2):
            raise ValueError(f"n_shown: expected an integer >= 2 or None, got {n_shown!r}")
        smallest = min(len(c) for c in self.candidates)
        if n_shown is not None and n_shown > smallest:
            raise ValueError(
                f"n_shown: expected at most {smallest} (the smallest candidate set), got {n_shown}"
            )
        if k is not None and k > (n_shown or smallest):
            raise ValueError(f"k: expected at most {n_shown or smallest} shown candidates, got {k}")
        rng = np.random.default_rng(seed)
        prompts, groups, index = self._draw_annotators(n, rng, n_per_annotator)
        shown: list[np.ndarray | None] = [None] * n
        orders: list[np.ndarray | None] = [None] * n
        for x in range(self.n_prompts):
            rows = np.flatnonzero(prompts == x)
            size = n_shown or self.n_candidates(x)
            # A uniform subset: the first `size` entries of a uniform random permutation, sorted.
            shuffled = np.argsort(rng.random((rows.size, self.n_candidates(x))), axis=1)
            subsets = np.sort(shuffled[:, :size], axis=1)
            utility = np.take_along_axis(self.rewards[x][groups[rows]], subsets, axis=1)
            utility = utility + rng.gumbel(size=utility.shape)
            ranked = np.argsort(-utility, axis=1, kind="stable")[:, : k or size]
            for row, subset, order in zip(rows, subsets, ranked):
                shown[row], orders[row] = subset, order
        records = []
        for row in range(n):
            x = prompts[row]
            records.append(
                PreferenceRecord(
                    prompt=self.prompts[x],
                    responses=tuple(self.candidates[x][c] for c in shown[row]),
                    ranking=tuple(int(i) for i in orders[row]),
                    annotator_id=f"{self.group_names[groups[row]]}/a{index[row]}",
                )
            )
        return records

    def _check_sampler(self, sampler: str | Sequence[np.ndarray]) -> list[np.ndarray] | None:
        if isinstance(sampler, str):
            if sampler != "uniform":
                raise ValueError(
                    f"sampler: expected 'uniform' or a list of per-prompt distributions, got {sampler!r}"
                )
            return None
        if len(sampler) != self.n_prompts:
            raise ValueError(
                f"sampler: expected one distribution per prompt ({self.n_prompts}), got {len(sampler)}"
            )
        mus = []
        for x, mu in enumerate(sampler):
            mu = np.asarray(mu, dtype=float)
            if mu.shape != (self.n_candidates(x),) or np.any(mu < 0) or abs(mu.sum() - 1) > 1e-6:
                raise ValueError(
                    f"sampler[{x}]: expected a distribution over {self.n_candidates(x)} candidates"
                )
            if np.count_nonzero(mu) < 2:
                raise ValueError(f"sampler[{x}]: expected at least two candidates with positive mass")
            mus.append(mu / mu.sum())
        return mus

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats as Python floats, which JSON round-trips exactly)."""
        return {
            "format": WORLD_FORMAT,
            "prompts": list(self.prompts),
            "candidates": [list(c) for c in self.candidates],
            "group_names": list(self.group_names),
            "group_weights": self.group_weights.tolist(),
            "rewards": [r.tolist() for r in self.rewards],
            "minority_group": self.minority_group,
            "annotators_per_group": self.annotators_per_group,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> World:
        """Inverse of ``to_dict``; unknown or missing keys are errors."""
        fields = {
            "prompts", "candidates", "group_names", "group_weights", "rewards", "minority_group",
            "annotators_per_group",
        }
        if not isinstance(data, dict):
            raise ValueError(f"World.from_dict: expected a dict, got {type(data).__name__}")
        if data.get("format", WORLD_FORMAT) != WORLD_FORMAT:
            raise ValueError(
                f"World.from_dict: expected format {WORLD_FORMAT!r}, got {data['format']!r}"
            )
        unknown = set(data) - fields - {"format"}
        missing = fields - set(data)
        if unknown or missing:
            raise ValueError(
                f"World.from_dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
            )
        return cls(**{key: data[key] for key in fields})

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load_json(cls, path: str | Path) -> World:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a valid world file: {err}") from err
