"""Benchmark workloads: the records every contender trains on, and the batch plan they all follow.

Three workloads, all deterministic (seeded):

* ``synthetic`` -- preference pairs with short prompts (20-40 bytes) and responses (30-60 bytes);
  the byte tokenizer makes one token per byte, so these are token counts (plus one EOS per response).
* ``hh`` -- real HH-RLHF harmless-base test pairs, prompt extracted by pluralign's loader (the same
  split TRL's ``extract_prompt`` makes). Lengths are capped once, here, at the text level, so that
  neither pluralign nor TRL truncates anything afterwards and both see identical tokens.
  With a subword tokenizer (``--model smollm2``) pairs that fit are taken whole instead (see
  :func:`_hh_tokenized`).
* ``rank4`` -- prompts with 4 responses and a full ranking (6 implied comparisons each).

The batch plan is a list of lists of record indices, computed once and followed by every contender
(TRL gets its dataset in plan order with a sequential sampler), so all three see the same batches
in the same order and their per-step losses can be compared step by step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pluralign.data.records import PreferenceRecord

HH_PATH = "/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz"
WORKLOADS = ("synthetic", "hh", "rank4")

_WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live"
).split()


@dataclass
class Workload:
    name: str
    records: list[PreferenceRecord]
    plan: list[list[int]]  # batches of record indices, warm-up steps first
    comparisons_per_record: int  # 1 for a pair, 6 for a full ranking of 4
    description: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "records": [
                {"prompt": r.prompt, "responses": list(r.responses), "ranking": list(r.ranking)}
                for r in self.records
            ],
            "plan": self.plan,
            "comparisons_per_record": self.comparisons_per_record,
            "description": self.description,
        }


def records_from_json(items: list[dict]) -> list[PreferenceRecord]:
    return [PreferenceRecord(d["prompt"], tuple(d["responses"]), tuple(d["ranking"])) for d in items]


def _text(rng: random.Random, num_bytes: int) -> str:
    """ASCII text of exactly ``num_bytes`` bytes (so exactly that many byte-tokenizer tokens)."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < num_bytes + 1:
        words.append(rng.choice(_WORDS))
    return " ".join(words)[:num_bytes]


def _synthetic(num_records: int, num_responses: int, seed: int) -> list[PreferenceRecord]:
    rng = random.Random(seed)
    records = []
    for _ in range(num_records):
        prompt = "Q: " + _text(rng, rng.randint(20, 40) - 3)
        responses = [" " + _text(rng, rng.randint(30, 60) - 1) for _ in range(num_responses)]
        while len(set(responses)) < num_responses:  # vanishingly rare; keeps responses distinct
            responses[-1] = " " + _text(rng, rng.randint(30, 60) - 1)
        ranking = list(range(num_responses))
        rng.shuffle(ranking)
        records.append(PreferenceRecord(prompt, tuple(responses), tuple(ranking)))
    return records


def _cut_utf8_left(data: bytes, keep: int) -> bytes:
    """The last ``keep`` bytes (or fewer), starting on a UTF-8 character boundary."""
    tail = data[-keep:] if keep > 0 else b""
    start = 0
    while start < len(tail) and (tail[start] & 0xC0) == 0x80:  # continuation byte
        start += 1
    return tail[start:]


def _cut_utf8_right(data: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes (or fewer), ending on a UTF-8 character boundary."""
    if keep >= len(data):
        return data
    end = max(keep, 0)
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def cap_record(record: PreferenceRecord, max_length: int, max_prompt_length: int) -> PreferenceRecord:
    """pluralign's truncation rule, applied to text so both libraries see the same tokens.

    With the byte tokenizer a string of n UTF-8 bytes is n tokens and each response gains one EOS.
    When prompt + longest response (EOS included) exceeds ``max_length``, the prompt keeps its last
    ``max_prompt_length`` bytes, then responses are cut from the right to fit (their EOS kept).
    Cuts move to the nearest character boundary inside the budget, so texts stay valid UTF-8.
    One difference from :func:`pluralign.data.tokenize.tokenize_records`: a cut response keeps its
    EOS (there it can lose it); both contenders get these capped texts and truncate nothing more.
    """
    prompt = record.prompt.encode("utf-8")
    responses = [r.encode("utf-8") for r in record.responses]
    if len(prompt) + max(len(r) for r in responses) + 1 <= max_length:
        return record
    if len(prompt) > max_prompt_length:
        prompt = _cut_utf8_left(prompt, max_prompt_length)
    budget = max_length - len(prompt) - 1  # one token for EOS
    responses = [_cut_utf8_right(r, budget) for r in responses]
    return PreferenceRecord(
        prompt.decode("utf-8"), tuple(r.decode("utf-8") for r in responses), record.ranking
    )


def _hh(num_records: int, seed: int, max_length: int, max_prompt_length: int) -> list[PreferenceRecord]:
    from pluralign.data.loaders import load_preferences

    loaded = load_preferences(HH_PATH).records
    if num_records > len(loaded):
        raise ValueError(f"the HH workload needs {num_records} pairs; {HH_PATH} has {len(loaded)}")
    picked = random.Random(seed).sample(range(len(loaded)), num_records)
    capped = []
    for i in picked:
        rec = cap_record(loaded[i], max_length, max_prompt_length)
        # a cut can make the two responses identical or empty; such pairs carry no preference
        if rec.prompt and all(rec.responses) and len(set(rec.responses)) == len(rec.responses):
            capped.append(rec)
    return capped


def _hh_tokenized(num_records: int, seed: int, max_length: int, max_prompt_length: int,
                  tokenizer_name: str) -> list[PreferenceRecord]:
    """HH pairs for a subword tokenizer: kept whole when they fit (prompt <= max_prompt_length, prompt +
    longest response + EOS <= max_length tokens), never cut, since a cut text re-tokenizes differently.
    The prompt text starts with the tokenizer's BOS where pluralign would prepend it, so every
    contender sees it; pairs whose prompt + response tokenizes differently from prompt, response
    apart (a merge across the boundary, where TRL splits differently) are left out."""
    from pluralign.data.loaders import load_preferences
    from pluralign.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else ""

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    loaded = load_preferences(HH_PATH).records
    order = random.Random(seed).sample(range(len(loaded)), len(loaded))
    kept = []
    for i in order:
        rec = loaded[i]
        prompt = rec.prompt if rec.prompt.startswith(bos) else bos + rec.prompt
        p_ids, r_ids = encode(prompt), [encode(r) for r in rec.responses]
        if len(p_ids) > max_prompt_length or len(p_ids) + max(len(r) for r in r_ids) + 1 > max_length:
            continue
        if any(encode(prompt + r) != p_ids + ids for r, ids in zip(rec.responses, r_ids)) or r_ids[0] == r_ids[1]:
            continue
        kept.append(PreferenceRecord(prompt, rec.responses, rec.ranking))
        if len(kept) == num_records:
            return kept
    raise ValueError(f"the HH workload needs {num_records} pairs that fit {max_length} tokens; found {len(kept)}")


def _record_tokens(record: PreferenceRecord) -> int:
    return len(record.prompt.encode()) + sum(len(r.encode()) + 1 for r in record.responses)


def make_plan(records: list[PreferenceRecord], batch_size: int, num_batches: int, order: str, seed: int):
    """Batches of record indices. ``grouped``: sort by length, cut into batches, shuffle the batches
    (length-grouped batching, as ``group_by_length`` does); ``random``: plain shuffled batches."""
    if len(records) < batch_size * num_batches:
        raise ValueError(f"need {batch_size * num_batches} records for the plan, have {len(records)}")
    rng = random.Random(seed)
    indices = list(range(len(records)))
    rng.shuffle(indices)
    indices = indices[: batch_size * num_batches]
    if order == "grouped":
        indices.sort(key=lambda i: _record_tokens(records[i]))
        batches = [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
        rng.shuffle(batches)
        return batches
    if order == "random":
        return [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
    raise ValueError(f"order must be 'grouped' or 'random', got {order!r}")


def build_workload(
    name: str,
    *,
    batch_size: int,
    num_batches: int,
    order: str = "grouped",
    seed: int = 0,
    max_length: int = 512,
    max_prompt_length: int = 256,
    tokenizer: str = "byte",
) -> Workload:
    need = batch_size * num_batches
    if name == "synthetic":
        records = _synthetic(need, 2, seed)
        desc = "synthetic pairs: prompts 20-40 tokens, responses 30-60 tokens (+EOS)"
        per = 1
    elif name == "rank4":
        records = _synthetic(need, 4, seed + 1)
        desc = "synthetic rankings of 4: prompts 20-40 tokens, responses 30-60 tokens (+EOS), 6 comparisons each"
        per = 6
    elif name == "hh" and tokenizer != "byte":
        records = _hh_tokenized(need, seed, max_length, max_prompt_length, tokenizer)
        desc = (f"HH-RLHF harmless-base test pairs, {tokenizer} tokens, pairs that fit max_length {max_length} "
                f"(prompt <= {max_prompt_length}) whole")
        per = 1
    elif name == "hh":
        records = _hh(need + need // 10 + 8, seed, max_length, max_prompt_length)
        desc = (
            f"HH-RLHF harmless-base test pairs, byte tokens, capped at max_length {max_length} "
            f"(prompt kept from the end, at most {max_prompt_length})"
        )
        per = 1
    else:
        raise ValueError(f"unknown workload {name!r}; expected one of {WORKLOADS}")
    plan = make_plan(records, batch_size, num_batches, order, seed)
    used = sorted({i for batch in plan for i in batch})
    remap = {old: new for new, old in enumerate(used)}
    records = [records[i] for i in used]
    plan = [[remap[i] for i in batch] for batch in plan]
    return Workload(name, records, plan, per, desc)


def pair_view(workload: dict) -> tuple[list[dict], list[list[int]], list[tuple[int, int, int]]]:
    """The workload as DPO pairs, for the pairwise contenders (TRL, plain loop).

    Returns (pairs as {"prompt", "chosen", "rejected"} strings, the plan over pair indices, and for
    each pair its (record, winner, loser) origin). A ranking contributes its implied pairs (6 for a
    full ranking of 4), all in the batch its record is in. Pairs are numbered in plan order, so the
    plan is consecutive runs and a sequential sampler reproduces it.
    """
    records = records_from_json(workload["records"])
    pairs: list[dict] = []
    origin: list[tuple[int, int, int]] = []
    plan: list[list[int]] = []
    for batch in workload["plan"]:
        ids = []
        for r in batch:
            record = records[r]
            for winner, loser in record.implied_pairs():
                ids.append(len(pairs))
                pairs.append({"prompt": record.prompt, "chosen": record.responses[winner],
                              "rejected": record.responses[loser]})
                origin.append((r, winner, loser))
        plan.append(ids)
    return pairs, plan, origin
