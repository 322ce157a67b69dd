"""The preference record: one prompt, K >= 2 candidate responses and a (possibly partial) ranking.

A pair (DPO, IPO, RPO; Rafailov et al. 2023, Liu et al. 2405.16436) is the K = 2 case; a full ranking
of K >= 3 responses is what the Plackett-Luce objective consumes and what makes annotator types
identifiable (Chidambaram et al. 2510.15716); a top-k partial ranking ranks k responses and leaves the
other K - k tied below them.

Conventions (used by every objective downstream):

* ``ranking`` lists response indices best first.
* A ranking of length K - 1 carries the same information as the full ranking (the one missing index
  must be last), so it is normalised to length K on construction. After that, ``num_ranked == K``
  exactly when the ranking is full.
* The comparisons a ranking implies are its pairwise "winner beats loser" relations
  (``implied_pairs``): with k ranked responses out of K there are k(k-1)/2 + k(K-k) of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Sequence

from pluralign.errors import PluralignError

TIE_POLICIES = ("truncate", "error", "skip")
# Weights become float32 tensors in a batch; a larger one would turn into inf there.
MAX_WEIGHT = 3.4028234663852886e38
# NUL is rejected because tokenizers and C-string tools truncate at it; a lone surrogate (from a
# JSON "\ud800" escape) is not valid Unicode and cannot be encoded to UTF-8 for a tokenizer.
_BAD_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


class RecordError(PluralignError):
    """A record field holds an invalid value.

    ``field`` names the offending field (``"ranking"``, ``"scores"``, ...), ``detail`` says what is
    wrong without the field name (loaders prefix file, row and field themselves), and ``reason`` is a
    short machine-readable category used to count skipped rows.
    """

    def __init__(self, field: str, detail: str, reason: str = "invalid_record"):
        super().__init__(f"PreferenceRecord field '{field}': {detail}")
        self.field = field
        self.detail = detail
        self.reason = reason


class TieError(RecordError):
    """Scores contain a tie that the chosen tie policy cannot turn into a ranking.

    Raised by :meth:`PreferenceRecord.from_scores`. Loaders catch it: under ``ties="skip"`` the row is
    always skipped and counted under reason ``"tie"``; under ``ties="error"`` or ``"truncate"`` it is
    an ordinary row error handled by ``on_error``.
    """

    def __init__(self, detail: str):
        super().__init__("scores", detail, reason="tie")


RankingTieError = TieError


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference observation: a prompt, K >= 2 responses and a best-first ranking of them.

    Fields:
        prompt: rendered prompt text (may be empty; responses are the text that follows it).
        responses: K >= 2 non-empty candidate responses.
        ranking: response indices, best first, distinct, 1 <= length <= K. The first ``num_ranked``
            responses are ranked in this order; every other response is tied below all of them.
            A length K - 1 ranking is completed to length K by appending the missing index.
        annotator_id: who produced the ranking, when known (used by EM over annotator types).
        weight: finite, non-negative example weight (1.0 = ordinary example), at most the largest
            float32 (batches hold weights as float32).
        preference: P(chosen > rejected) in [0, 1] for a pair (1.0 = a hard label; a vote fraction
            or a world's exact P_ij otherwise). Rankings (K > 2) carry 1.0: a soft label has no
            single meaning for them, so any other value is an error.
        source: where the record came from (``"pairs.jsonl row 12"``), set by the loaders so
            problems found later (tokenization) name the file row; not part of equality.

    Strings must not contain NUL or lone surrogates (invalid Unicode, e.g. from a JSON ``"\\ud800"``
    escape): tokenizers cannot encode them faithfully.

    Lists are accepted for ``responses`` and ``ranking`` and stored as tuples, so records are
    hashable and comparable. Invalid values raise :class:`RecordError` (a ``ValueError``).
    """

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    annotator_id: str | None = None
    weight: float = 1.0
    preference: float = 1.0
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise RecordError("prompt", f"expected a string, got {type(self.prompt).__name__}",
                              "wrong_type")
        _check_characters(self.prompt, "prompt")
        responses = _as_tuple(self.responses, "responses")
        if len(responses) < 2:
            raise RecordError("responses", f"need at least 2 responses, got {len(responses)}",
                              "too_few_responses")
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise RecordError(f"responses[{i}]",
                                  f"expected a string, got {type(response).__name__}", "wrong_type")
            if not response:
                raise RecordError(f"responses[{i}]", "empty string", "empty_response")
            _check_characters(response, f"responses[{i}]")
        ranking = _validate_ranking(_as_tuple(self.ranking, "ranking"), len(responses))
        if self.annotator_id is not None and not isinstance(self.annotator_id, str):
            raise RecordError("annotator_id",
                              f"expected a string or None, got {type(self.annotator_id).__name__}",
                              "wrong_type")
        if self.annotator_id is not None:
            _check_characters(self.annotator_id, "annotator_id")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, Real):
            raise RecordError("weight", f"expected a number, got {type(weight).__name__}",
                              "bad_weight")
        weight = float(weight)
        if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
            raise RecordError("weight", f"expected a finite number >= 0 (at most {MAX_WEIGHT:.4g}, "
                              f"the float32 limit), got {weight!r}", "bad_weight")
        preference = self.preference
        if isinstance(preference, bool) or not isinstance(preference, Real):
            raise RecordError("preference", f"expected a number, got {type(preference).__name__}",
                              "bad_preference")
        preference = float(preference)
        if not 0.0 <= preference <= 1.0:  # also rejects NaN
            raise RecordError("preference", f"expected a probability in [0, 1], got {preference!r}",
                              "bad_preference")
        if preference != 1.0 and len(responses) != 2:
            raise RecordError("preference", f"a soft label applies to pairs only; this record has "
                              f"{len(responses)} responses (use 1.0 or omit it)", "bad_preference")
        # Frozen dataclass: normalised values are written through object.__setattr__.
        object.__setattr__(self, "responses", responses)
        object.__setattr__(self, "ranking", ranking)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "preference", preference)

    # ----------------------------------------------------------------------------------- views
    @property
    def num_responses(self) -> int:
        """K, the number of candidate responses."""
        return len(self.responses)

    @property
    def num_ranked(self) -> int:
        """k, the number of explicitly ranked responses (K for a full ranking)."""
        return len(self.ranking)

    @property
    def is_pair(self) -> bool:
        """True for K = 2 (a chosen/rejected pair; its ranking is always full)."""
        return len(self.responses) == 2

    @property
    def is_full_ranking(self) -> bool:
        """True when every response has a rank (k = K)."""
        return len(self.ranking) == len(self.responses)

    @property
    def unranked(self) -> tuple[int, ...]:
        """Indices tied below the ranked ones, ascending (empty for a full ranking)."""
        ranked = set(self.ranking)
        return tuple(i for i in range(len(self.responses)) if i not in ranked)

    @property
    def chosen(self) -> str:
        """The top-ranked response."""
        return self.responses[self.ranking[0]]

    def implied_pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs implied by the ranking.

        With ranking r_1 > ... > r_k and unranked set U (tied below all ranked responses) the pairs
        are (r_i, r_j) for i < j <= k and (r_i, u) for every u in U: k(k-1)/2 + k(K-k) pairs
        (K = 4: full ranking 6, top-2 5, top-1 3). Ordered by winner rank, then ranked losers in
        rank order, then unranked losers in index order.
        """
        unranked = self.unranked
        pairs: list[tuple[int, int]] = []
        for position, winner in enumerate(self.ranking):
            pairs.extend((winner, loser) for loser in self.ranking[position + 1:])
            pairs.extend((winner, loser) for loser in unranked)
        return pairs

    # ---------------------------------------------------------------------------- constructors
    @classmethod
    def from_pair(cls, prompt: str, chosen: str, rejected: str, annotator_id: str | None = None,
                  weight: float = 1.0, preference: float = 1.0, source: str | None = None) -> PreferenceRecord:
        """A K = 2 record: responses (chosen, rejected), ranking (0, 1)."""
        return cls(prompt, (chosen, rejected), (0, 1), annotator_id, weight, preference, source)

    @classmethod
    def from_scores(cls, prompt: str, responses: Sequence[str], scores: Sequence[float],
                    ties: str = "truncate", annotator_id: str | None = None,
                    weight: float = 1.0, preference: float = 1.0, source: str | None = None) -> PreferenceRecord:
        """Rank responses by score, higher is better, with an explicit tie policy.

        Responses are sorted by descending score into groups of equal score. With ``ties``:

        * ``"truncate"``: keep the ranking down to the first tie. Ranked responses are the leading
          groups of size one; the first group with two or more responses and everything below it
          become the unranked tail (a top-k partial ranking). Scores [3, 2, 2, 1] give ranking (0,)
          and [3, 2, 1, 1] give (0, 1). If the best score is tied there is no top-k ranking to
          keep and :class:`TieError` is raised.
        * ``"error"``: any tie raises :class:`TieError`.
        * ``"skip"``: same as ``"error"`` here; loaders treat the resulting :class:`TieError` as a
          counted skip (reason ``"tie"``) regardless of their ``on_error`` setting.

        Scores must be real, finite numbers, one per response (NaN raises :class:`RecordError`).
        Ties are exact equality of the float scores.
        """
        if ties not in TIE_POLICIES:
            raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
        score_values = _validate_scores(scores, len(responses))
        order = sorted(range(len(score_values)), key=lambda i: -score_values[i])
        groups: list[list[int]] = []
        for index in order:
            if groups and score_values[groups[-1][0]] == score_values[index]:
                groups[-1].append(index)
            else:
                groups.append([index])
        tied = [group for group in groups if len(group) > 1]
        if tied:
            described = "; ".join(f"responses {group} share score {score_values[group[0]]!r}"
                                  for group in tied)
            if ties != "truncate":
                raise TieError(f"tied scores ({described}) with ties={ties!r}")
            if len(groups[0]) > 1:
                raise TieError(f"the best score is tied ({described}); no ranking can be kept")
        ranking: list[int] = []
        for group in groups:
            if len(group) > 1:
                break
            ranking.append(group[0])
        return cls(prompt, tuple(responses), tuple(ranking), annotator_id, weight, preference, source)


# --------------------------------------------------------------------------------------- helpers
def _check_characters(text: str, field: str) -> None:
    bad = _BAD_CHARACTERS.search(text)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate (invalid Unicode)"
        raise RecordError(field, f"contains {what} {bad.group()!r} at character {bad.start()}",
                          "bad_characters")


def _as_tuple(value: object, field: str) -> tuple:
    # Any non-string iterable (list, tuple, numpy array) is accepted.
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise RecordError(field, f"expected a sequence, got {type(value).__name__}", "wrong_type")
    return tuple(value)


def _validate_ranking(ranking: tuple, num_responses: int) -> tuple[int, ...]:
    if not ranking:
        raise RecordError("ranking", "empty ranking; need at least the best response",
                          "bad_ranking")
    if len(ranking) > num_responses:
        raise RecordError("ranking", f"length {len(ranking)} exceeds the {num_responses} responses",
                          "bad_ranking")
    seen: set[int] = set()
    for index in ranking:  # numpy integers count as integers
        if isinstance(index, bool) or not isinstance(index, Integral):
            raise RecordError("ranking", f"expected integer indices, got {index!r}", "bad_ranking")
        if not 0 <= index < num_responses:
            raise RecordError("ranking", f"index {index} is out of range for {num_responses} "
                              f"responses (valid: 0..{num_responses - 1})", "bad_ranking")
        if index in seen:
            raise RecordError("ranking", f"index {index} appears more than once", "bad_ranking")
        seen.add(index)
    ranking = tuple(int(i) for i in ranking)
    if len(ranking) == num_responses - 1:
        (missing,) = set(range(num_responses)) - seen
        ranking = ranking + (missing,)
    return ranking


def _validate_scores(scores: object, num_responses: int) -> list[float]:
    values = list(_as_tuple(scores, "scores"))
    if len(values) != num_responses:
        raise RecordError("scores", f"expected {num_responses} scores (one per response), "
                          f"got {len(values)}", "bad_score")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise RecordError("scores", f"score {i} is {value!r}, expected a number", "bad_score")
        if not math.isfinite(value):
            raise RecordError("scores", f"score {i} is {value!r}, expected a finite number",
                              "bad_score")
    return [float(v) for v in values]
