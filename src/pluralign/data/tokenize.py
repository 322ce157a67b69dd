"""Preference records -> token ids, with every truncation, stub and skip counted.

Conventions (the same as TRL's DPO tokenization, so first-step losses match):
prompt and each response are tokenized separately and concatenated; the tokenizer's BOS (if it has
one and does not add it itself) starts the prompt; EOS ends every response. When a prompt plus its
longest response exceeds ``max_length``, the prompt is cut from the left to ``max_prompt_length``
(its end, next to the response, is kept), then responses are cut from the right.

Two cases the collator could not serve are settled here, once, for training and ``validate-data``:

* A prompt that tokenizes to nothing (an empty prompt, or an implicit-prompt split with no shared
  prefix, under a tokenizer without BOS) gets a one-token stub, the EOS id: the first response
  token is then predicted from "start of text" (EOS is the document separator of such
  tokenizers, as in GPT-2) instead of having no logit at all. Counted in ``num_prompt_stubs``.
* An example whose responses are identical as token ids (after truncation, or because two texts
  tokenize alike) carries no preference: it is skipped and counted under ``identical_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pluralign.data.loaders import MAX_PROBLEMS, DataError
from pluralign.data.records import PreferenceRecord
from pluralign.errors import PluralignError


@dataclass(frozen=True)
class TokenizedExample:
    """One prompt with K tokenized responses. ``ranking`` indexes responses, best first (maybe partial)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[tuple[int, ...], ...]
    ranking: tuple[int, ...]
    weight: float = 1.0
    group: int = -1  # index into TokenizedDataset.annotators, -1 when unknown
    preference: float = 1.0  # P(chosen > rejected) for a pair; 1.0 for rankings

    @property
    def num_tokens_shared(self) -> int:
        """Tokens in one prompt-shared row: the prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    @property
    def num_tokens_plain(self) -> int:
        """Tokens when each response is a separate prompt+response sequence (TRL's layout)."""
        return sum(len(self.prompt_ids) + len(r) for r in self.response_ids)


@dataclass
class TokenizedDataset:
    """Tokenized examples and what tokenization did: ``num_truncated`` kept examples were cut,
    ``num_prompt_stubs`` got the EOS prompt stub, ``skipped_by_reason`` counts records not kept
    (``problems`` holds the first messages, each naming the record)."""

    examples: list[TokenizedExample]
    annotators: list[str] = field(default_factory=list)
    num_truncated: int = 0
    num_prompt_stubs: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    @property
    def num_dropped_empty(self) -> int:
        """Examples dropped because a response was truncated to nothing."""
        return self.skipped_by_reason.get("empty_after_truncation", 0)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.examples[i]

    def report(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_by_reason.items()))
        return (
            f"{len(self.examples)} tokenized examples; {self.num_truncated} truncated; "
            f"{self.num_prompt_stubs} with an empty prompt given the EOS stub; "
            f"{self.num_skipped} skipped" + (f" ({reasons})" if reasons else "")
            + f"; {len(self.annotators)} annotators"
        )


def tokenize_records(
    records: list[PreferenceRecord],
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> TokenizedDataset:
    """Tokenize records; truncated, stubbed and skipped examples are counted in the result.

    Problem messages name a skipped record by its ``source`` (the loaders set ``"FILE row N"``), else
    ``"record i"``. Raises :class:`~pluralign.data.loaders.DataError` when records were given but
    none (or none with a weight above 0) survive, and :class:`~pluralign.errors.PluralignError` for
    lengths that leave no room for a response.
    """
    if not 0 < max_prompt_length < max_length:
        raise PluralignError(f"data.max_prompt_length = {max_prompt_length} and data.max_length = "
                             f"{max_length}: expected 0 < max_prompt_length < max_length, so "
                             "every response keeps at least one token")
    eos = tokenizer.eos_token_id
    bos = getattr(tokenizer, "bos_token_id", None)
    annotators: dict[str, int] = {}
    out = TokenizedDataset(examples=[])
    for i, rec in enumerate(records):
        prompt = list(_encode(tokenizer, rec.prompt))
        if bos is not None and (not prompt or prompt[0] != bos):
            prompt = [bos] + prompt
        stub = not prompt
        if stub:
            prompt = [eos]
        responses = [_response_ids(tokenizer, r, eos) for r in rec.responses]
        longest = max(len(r) for r in responses)
        truncated = False
        if len(prompt) + longest > max_length:
            truncated = True
            if len(prompt) > max_prompt_length:
                # Cut from the left but keep a leading BOS (a chat template's first token too).
                keep = prompt[:1] if bos is not None and prompt[0] == bos else []
                prompt = keep + prompt[len(prompt) - max_prompt_length + len(keep):]
            budget = max_length - len(prompt)
            responses = [r[:budget] for r in responses]
        reason = _degenerate(responses, truncated)
        if reason is not None:
            label = rec.source or f"record {i}"
            _skip(out, reason[0], f"{label}: {reason[1]}")
            continue
        out.num_truncated += int(truncated)
        out.num_prompt_stubs += int(stub)
        group = -1
        if rec.annotator_id is not None:
            group = annotators.setdefault(rec.annotator_id, len(annotators))
        out.examples.append(
            TokenizedExample(
                prompt_ids=tuple(prompt),
                response_ids=tuple(tuple(r) for r in responses),
                ranking=tuple(rec.ranking),
                weight=float(rec.weight),
                group=group,
                preference=float(rec.preference),
            )
        )
    out.annotators = list(annotators)
    if records and not out.examples:
        raise DataError(f"no usable examples: all {len(records)} records were skipped in "
                        f"tokenization ({out.report()}); first: {out.problems[0]}")
    if out.examples and all(ex.weight == 0 for ex in out.examples):
        raise DataError("every example left after tokenization has weight 0; field 'weight' "
                        "must be > 0 for at least one", field="weight")
    return out


def _degenerate(responses: list[list[int]], truncated: bool) -> tuple[str, str] | None:
    """(reason, detail) when the tokenized responses cannot make a training example."""
    if any(len(r) == 0 for r in responses):
        return "empty_after_truncation", "a response was truncated to no tokens"
    seen: dict[tuple[int, ...], int] = {}
    for k, ids in enumerate(responses):
        key = tuple(ids)
        if key in seen:
            how = "after truncation to max_length" if truncated else "as token ids"
            return "identical_tokens", (f"responses {seen[key]} and {k} are identical {how}; "
                                        "a preference needs distinct responses")
        seen[key] = k
    return None


def _skip(out: TokenizedDataset, reason: str, message: str) -> None:
    out.skipped_by_reason[reason] = out.skipped_by_reason.get(reason, 0) + 1
    if len(out.problems) < MAX_PROBLEMS:
        out.problems.append(message)


def _response_ids(tokenizer, text: str, eos: int) -> list[int]:
    """A response's token ids, ending in exactly one EOS.

    A chat template closes the assistant turn with its end token, which is the model's EOS
    (SmolLM2: ``"...<|im_end|>\n"``). Such a response ends at that token, where generation stops,
    instead of getting a second EOS after the template's trailing whitespace; any other response
    gets EOS appended.
    """
    ids = _encode(tokenizer, text)
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        if not tokenizer.decode(ids[last + 1:]).strip():
            return ids[: last + 1]
    return ids + [eos]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
