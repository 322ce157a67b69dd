"""Preference records -> token ids, with truncation that is always counted.

Conventions (the same as TRL's DPO tokenization, so first-step losses match):
prompt and each response are tokenized separately and concatenated; the tokenizer's BOS (if it has
one and does not add it itself) starts the prompt; EOS ends every response. When a prompt plus its
longest response exceeds ``max_length``, the prompt is cut from the left to ``max_prompt_length``
(its end, next to the response, is kept), then responses are cut from the right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pluralign.data.records import PreferenceRecord


@dataclass(frozen=True)
class TokenizedExample:
    """One prompt with K tokenized responses. ``ranking`` indexes responses, best first (maybe partial)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[tuple[int, ...], ...]
    ranking: tuple[int, ...]
    weight: float = 1.0
    group: int = -1  # index into TokenizedDataset.annotators, -1 when unknown

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
    examples: list[TokenizedExample]
    annotators: list[str] = field(default_factory=list)
    num_truncated: int = 0
    num_dropped_empty: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.examples[i]

    def report(self) -> str:
        return (
            f"{len(self.examples)} tokenized examples; {self.num_truncated} truncated; "
            f"{self.num_dropped_empty} dropped (a response truncated to nothing); "
            f"{len(self.annotators)} annotators"
        )


def tokenize_records(
    records: list[PreferenceRecord],
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> TokenizedDataset:
    """Tokenize records; truncated and dropped examples are counted in the result."""
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
    eos = tokenizer.eos_token_id
    bos = getattr(tokenizer, "bos_token_id", None)
    annotators: dict[str, int] = {}
    out = TokenizedDataset(examples=[])
    for rec in records:
        prompt = list(_encode(tokenizer, rec.prompt))
        if bos is not None and (not prompt or prompt[0] != bos):
            prompt = [bos] + prompt
        responses = [list(_encode(tokenizer, r)) + [eos] for r in rec.responses]
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
        if any(len(r) == 0 for r in responses):
            out.num_dropped_empty += 1
            continue
        out.num_truncated += int(truncated)
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
            )
        )
    out.annotators = list(annotators)
    return out


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
