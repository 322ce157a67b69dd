"""Batches of tokenized examples in two layouts, both read by :mod:`pluralign.logprobs`.

``plain``  -- one row per (prompt, response): the prompt is computed K times (TRL's layout).
``shared`` -- one row holds a prompt followed by all K of its responses; response tokens see the
              prompt and their own earlier tokens, never another response; position ids restart
              after the prompt, so each response sees exactly the positions it would see alone.
              Several prompts are packed into one row while they fit ``max_row_tokens``
              (first-fit decreasing, so rows come out nearly full and padding nearly vanishes).

Either way a batch carries, for every response token, where its predicting logit lives
(``gather_row``, ``gather_pos``), the token it must predict (``gather_target``) and the flat
sequence it belongs to (``gather_seq = example * K_max + response``). Log-probs are then gathered
from those positions only, so no layout needs logits for prompt or padding tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pluralign.data.tokenize import TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    # shared layout: block ids for the 4-D mask; plain layout: doc_ids is 0/-1 (token/padding), part_ids unused
    doc_ids: torch.Tensor  # [R, L], -1 on padding
    part_ids: torch.Tensor  # [R, L], 0 = prompt, k+1 = response k
    gather_row: torch.Tensor  # [T]
    gather_pos: torch.Tensor  # [T]
    gather_target: torch.Tensor  # [T]
    gather_seq: torch.Tensor  # [T]
    response_mask: torch.Tensor  # [B, K] bool, False where an example has fewer than K responses
    ranking: torch.Tensor  # [B, K] long, best first, -1 past the ranked entries
    num_ranked: torch.Tensor  # [B] long
    weights: torch.Tensor  # [B] float
    preference: torch.Tensor  # [B] float, P(chosen > rejected); 1 for rankings
    groups: torch.Tensor  # [B] long, -1 when unknown
    layout: str
    num_examples: int
    max_responses: int
    index: torch.Tensor | None = None  # [B] dataset indices (for cached reference log-probs)

    @property
    def num_tokens(self) -> int:
        return int((self.doc_ids >= 0).sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / max(1, self.input_ids.numel())

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)


class Collator:
    """Turns a list of :class:`TokenizedExample` into a :class:`Batch` in the chosen layout.

    ``max_row_tokens`` (shared layout only) lets several prompts share one row; ``"longest"`` packs
    into rows no longer than the batch's longest example (fewer rows and less padding, and never a
    longer row, so dense attention never costs more); ``None`` puts one prompt per row. Rows are
    right-padded with ``pad_id``.

    Packing is first-fit decreasing: examples, longest first, each go into the first row with room
    for them, and an example longer than ``max_row_tokens`` gets a row of its own. Which row an
    example lands in changes nothing it computes (each prompt and its responses form their own
    attention block with their own positions), only how much padding the batch carries.
    """

    def __init__(self, pad_id: int, layout: str = "shared", max_row_tokens: int | str | None = None):
        if layout not in ("shared", "plain"):
            raise ValueError(f"layout must be 'shared' or 'plain', got {layout!r}")
        self.pad_id = pad_id
        self.layout = layout
        self.max_row_tokens = max_row_tokens

    def __call__(self, examples: list[TokenizedExample], indices: list[int] | None = None) -> Batch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        # A response's first token is predicted by its prompt's last token. With an empty prompt
        # that would be the previous example's last token in a packed row, so it is refused here;
        # tokenize_records gives every prompt at least one token.
        empty = [b for b, ex in enumerate(examples) if not ex.prompt_ids]
        if empty:
            raise ValueError(f"examples {empty} of the batch have an empty prompt; every response "
                             "needs a prompt token to be predicted from (see tokenize_records)")
        rows = self._shared_rows(examples) if self.layout == "shared" else self._plain_rows(examples)
        return self._finish(examples, rows, indices)

    # Each row is a list of segments (example, part, token ids, start position, prompt_end):
    # prompt_end is the row offset of the prompt's last token, the logit that predicts a response's
    # first token.
    def _plain_rows(self, examples):
        rows = []
        for b, ex in enumerate(examples):
            for k, resp in enumerate(ex.response_ids):
                rows.append([(b, 0, ex.prompt_ids), (b, k + 1, resp)])
        return rows

    def _shared_rows(self, examples):
        def segments(b, ex):
            return [(b, 0, ex.prompt_ids)] + [(b, k + 1, resp) for k, resp in enumerate(ex.response_ids)]

        if self.max_row_tokens is None:
            return [segments(b, ex) for b, ex in enumerate(examples)]
        budget = self.max_row_tokens
        if budget == "longest":
            budget = max(ex.num_tokens_shared for ex in examples)
        rows, used = [], []
        for b in sorted(range(len(examples)), key=lambda b: -examples[b].num_tokens_shared):
            n = examples[b].num_tokens_shared
            fits = next((r for r, u in enumerate(used) if u + n <= budget), None)
            if fits is None:
                rows.append([])
                used.append(0)
                fits = len(rows) - 1
            rows[fits].extend(segments(b, examples[b]))
            used[fits] += n
        return rows

    def _finish(self, examples, rows, indices) -> Batch:
        kmax = max(len(ex.response_ids) for ex in examples)
        lengths = [sum(len(seg[2]) for seg in row) for row in rows]
        R, L = len(rows), max(lengths)
        input_ids = torch.full((R, L), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((R, L), dtype=torch.long)
        doc_ids = torch.full((R, L), -1, dtype=torch.long)
        part_ids = torch.zeros((R, L), dtype=torch.long)
        g_row, g_pos, g_tgt, g_seq = [], [], [], []
        for r, row in enumerate(rows):
            off, prompt_end, prompt_len, doc = 0, -1, 0, -1
            for b, part, ids in row:
                n = len(ids)
                if part == 0:
                    doc += 1
                    prompt_len, prompt_end = n, off + n - 1
                    positions = range(n)
                else:
                    positions = range(prompt_len, prompt_len + n)
                    # token j of the response is predicted by the logit just before it; the first
                    # by the prompt's last token (shared by every response of this prompt).
                    src = [prompt_end] + list(range(off, off + n - 1))
                    g_row.extend([r] * n)
                    g_pos.extend(src)
                    g_tgt.extend(ids)
                    g_seq.extend([b * kmax + part - 1] * n)
                input_ids[r, off : off + n] = torch.tensor(ids, dtype=torch.long)
                position_ids[r, off : off + n] = torch.tensor(list(positions), dtype=torch.long)
                doc_ids[r, off : off + n] = doc
                part_ids[r, off : off + n] = part
                off += n
        B = len(examples)
        response_mask = torch.zeros((B, kmax), dtype=torch.bool)
        ranking = torch.full((B, kmax), -1, dtype=torch.long)
        num_ranked = torch.zeros(B, dtype=torch.long)
        for b, ex in enumerate(examples):
            response_mask[b, : len(ex.response_ids)] = True
            ranking[b, : len(ex.ranking)] = torch.tensor(ex.ranking, dtype=torch.long)
            num_ranked[b] = len(ex.ranking)
        return Batch(
            input_ids=input_ids,
            position_ids=position_ids,
            doc_ids=doc_ids,
            part_ids=part_ids,
            gather_row=torch.tensor(g_row, dtype=torch.long),
            gather_pos=torch.tensor(g_pos, dtype=torch.long),
            gather_target=torch.tensor(g_tgt, dtype=torch.long),
            gather_seq=torch.tensor(g_seq, dtype=torch.long),
            response_mask=response_mask,
            ranking=ranking,
            num_ranked=num_ranked,
            weights=torch.tensor([ex.weight for ex in examples], dtype=torch.float32),
            preference=torch.tensor([ex.preference for ex in examples], dtype=torch.float32),
            groups=torch.tensor([ex.group for ex in examples], dtype=torch.long),
            layout=self.layout,
            num_examples=B,
            max_responses=kmax,
            index=None if indices is None else torch.tensor(indices, dtype=torch.long),
        )
