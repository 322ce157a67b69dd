"""A world built from real preference data: its prompts and candidates, annotator types as rewards on text.

    world = from_records(load_preferences("data.jsonl").records,
                         {"concise": length_reward(sign=-1), "helpful": refusal_reward(sign=-1)},
                         group_weights=[0.7, 0.3])

Each distinct prompt of the records becomes a world prompt (first-appearance order); its candidates
are the distinct responses its records show (``candidates="union"``, first-appearance order), or,
with ``candidates="same"``, the one response set that every record of the prompt must show. Each
annotator type g is a reward function on text in TRL's convention ``f(prompts, completions) ->
floats`` (a rule on the text such as :func:`length_reward` or :func:`refusal_reward`, the way the
EM-DPO authors built the IMDb sentiment-vs-grammar types, or a reward model such as
``pluralign.rl.rewards.ModelReward``), and group g's Bradley-Terry reward is

    r_g(x, y_k) = scale * f_g([x] * K, [y_1 .. y_K])[k].

The result is an ordinary :class:`~pluralign.worlds.World`: it samples rankings with known groups
(``sample_rankings``), scores any policy exactly (``evaluate_policy``) and gives the lab its
finite problems, so EM-DPO and MMRA can be run with ground truth on one's own text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable, Sequence

import numpy as np

from pluralign.data.records import PreferenceRecord
from pluralign.errors import PluralignError
from pluralign.worlds.world import World

CANDIDATE_MODES = ("union", "same")
REFUSAL_PHRASES = ("i can't", "i cannot", "i won't", "i will not", "i'm sorry", "i am sorry", "i'm not able",
                   "i am not able", "as an ai", "i don't think i can", "i'm unable", "i am unable")


class RecordsWorldError(PluralignError):
    """Records or reward functions that cannot make a world; the message names the record and field."""


def length_reward(unit: str = "words", sign: float = 1.0, per: float = 10.0) -> Callable:
    """A rule reward: ``sign * len(completion) / per`` with the length in words (whitespace split)
    or characters; ``sign=-1`` is a type that likes short answers."""
    if unit not in ("words", "chars"):
        raise ValueError(f"length_reward unit: expected 'words' or 'chars', got {unit!r}")

    def reward(prompts, completions, **columns):
        return [sign * (len(c.split()) if unit == "words" else len(c)) / per for c in completions]

    reward.name = f"length_{unit}" if sign >= 0 else f"brevity_{unit}"
    return reward


def refusal_reward(phrases: Sequence[str] = REFUSAL_PHRASES, sign: float = 1.0) -> Callable:
    """A rule reward: ``sign`` (1.0) when the completion contains one of ``phrases`` (case-insensitive,
    curly apostrophes read as straight ones), else 0; ``sign=-1`` is a type that dislikes refusals."""
    pattern = re.compile("|".join(re.escape(p.lower()) for p in phrases))

    def reward(prompts, completions, **columns):
        return [sign * float(bool(pattern.search(c.lower().replace("\u2019", "'")))) + 0.0 for c in completions]

    reward.name = "refusal" if sign >= 0 else "no_refusal"
    return reward


def _named_types(types) -> tuple[list[str], list[Callable]]:
    from pluralign.rl.rewards import reward_name

    if isinstance(types, Mapping):
        names, fns = [str(n) for n in types], list(types.values())
    else:
        fns = list(types)
        names = [reward_name(f) for f in fns]
    if not fns:
        raise RecordsWorldError("types: expected at least one annotator type (a reward function on text)")
    if len(set(names)) != len(names):
        raise RecordsWorldError(f"types: expected distinct type names, got {names}")
    for name, fn in zip(names, fns):
        if not callable(fn):
            raise RecordsWorldError(f"types[{name!r}]: expected a reward function f(prompts, completions), "
                                    f"got {type(fn).__name__}")
    return names, fns


def _candidate_sets(records, mode: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(prompts, candidates per prompt, index of each prompt's first record), checked record by record."""
    if mode not in CANDIDATE_MODES:
        raise RecordsWorldError(f"candidates: expected one of {CANDIDATE_MODES}, got {mode!r}")
    prompts: dict[str, int] = {}
    cands: list[list[str]] = []
    first: list[int] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferenceRecord):
            raise RecordsWorldError(f"record {i}: expected a PreferenceRecord, got {type(rec).__name__}")
        for j, resp in enumerate(rec.responses):
            if rec.responses.index(resp) != j:
                raise RecordsWorldError(f"record {i}: field responses[{j}] repeats responses[{rec.responses.index(resp)}] "
                                        f"({resp[:40]!r}); a world's candidates are distinct")
        x = prompts.get(rec.prompt)
        if x is None:
            prompts[rec.prompt] = len(cands)
            cands.append(list(rec.responses))
            first.append(i)
        elif mode == "union":
            cands[x] += [r for r in rec.responses if r not in cands[x]]
        elif set(rec.responses) != set(cands[x]):
            extra = sorted(set(rec.responses) - set(cands[x]))
            lacking = sorted(set(cands[x]) - set(rec.responses))
            raise RecordsWorldError(
                f"record {i}: field responses differs from record {first[x]}'s for the same prompt "
                f"(candidates='same'): {len(extra)} response(s) not in it {[e[:40] for e in extra]}, "
                f"{len(lacking)} missing {[m[:40] for m in lacking]}")
    if not cands:
        raise RecordsWorldError("records: expected at least one record, got none")
    return list(prompts), cands, first


def from_records(records, types, *, group_weights=None, scale: float = 1.0, candidates: str = "union",
                 minority_group: int | None = None, annotators_per_group: int = 50,
                 max_prompts: int | None = None) -> World:
    """A :class:`World` from preference records and annotator types (module docstring).

    ``records``: PreferenceRecords (or a ``load_preferences`` result); ``types``: ``{name: reward
    function}`` or a list of named reward functions; ``group_weights``: the types' population shares
    (default uniform); ``scale``: multiplies every reward (the Bradley-Terry temperature);
    ``minority_group``: the tracked group (default: the smallest share, first on ties);
    ``max_prompts``: keep the first prompts only. Errors name the record, field or type.
    """
    records = list(getattr(records, "records", records))
    names, fns = _named_types(types)
    if not (np.isfinite(scale) and scale > 0):
        raise RecordsWorldError(f"scale: expected a positive number, got {scale!r}")
    weights = np.full(len(names), 1.0 / len(names)) if group_weights is None else np.asarray(group_weights, dtype=float)
    if weights.shape != (len(names),) or np.any(weights < 0) or not np.all(np.isfinite(weights)) \
            or abs(weights.sum() - 1.0) > 1e-8:
        raise RecordsWorldError(f"group_weights: expected {len(names)} non-negative shares summing to 1 "
                                f"(one per type {names}), got {np.asarray(group_weights).tolist()}")
    prompts, cands, first = _candidate_sets(records, candidates)
    if max_prompts is not None:
        prompts, cands, first = prompts[:max_prompts], cands[:max_prompts], first[:max_prompts]
    rewards = []
    for x, (prompt, cs) in enumerate(zip(prompts, cands)):
        rows = []
        for name, fn in zip(names, fns):
            try:
                values = np.asarray(fn([prompt] * len(cs), list(cs)), dtype=float)
            except (TypeError, ValueError) as err:
                raise RecordsWorldError(f"type {name!r} on the prompt of record {first[x]}: {err}") from err
            if values.shape != (len(cs),):
                raise RecordsWorldError(f"type {name!r} on the prompt of record {first[x]}: expected {len(cs)} "
                                        f"rewards (one per candidate), got shape {values.shape}")
            if not np.all(np.isfinite(values)):
                k = int(np.flatnonzero(~np.isfinite(values))[0])
                raise RecordsWorldError(f"type {name!r} on the prompt of record {first[x]}: non-finite reward "
                                        f"{values[k]} for candidate {k} ({cs[k][:40]!r})")
            rows.append(scale * values)
        rewards.append(np.stack(rows))
    minority = int(np.argmin(weights)) if minority_group is None else minority_group
    return World(prompts=prompts, candidates=cands, group_names=names, group_weights=weights, rewards=rewards,
                 minority_group=minority, annotators_per_group=annotators_per_group)
