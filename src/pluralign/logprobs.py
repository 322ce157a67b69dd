"""Sequence log-probabilities: the one place where they are computed.

For a response y to a prompt x the summed log-probability is

    log pi(y | x) = sum_{t=1}^{|y|} log pi(y_t | x, y_<t)          (prompt tokens masked)

and the mean convention divides by |y| (the token count, EOS included). DPO, RPO's summed SFT
term and Plackett-Luce use the sum (as TRL, the DPO reference code and alignment-handbook do);
TRL's IPO uses the mean. :class:`SequenceLogprobs` returns both the sums and the token counts, so
each objective picks its convention by name and nothing is recomputed.

All K responses of a batch go through one forward pass, in either layout of
:mod:`pluralign.data.collate`. Logits are formed only at the positions that predict response
tokens, in chunks, each under activation checkpointing when gradients are on: the full
[rows, length, vocab] fp32 logit tensor is never materialised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pluralign.attention import enable_prefix_attention, prefix_segments
from pluralign.data.collate import Batch
from pluralign.models import unwrap_peft

# Models whose logits are not simply lm_head(hidden): the generic fast path would be wrong for them.
_LOGIT_POSTPROCESSING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def split_decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder returning hidden states, lm_head) when logits == lm_head(hidden), else None."""
    inner = unwrap_peft(model)
    config = getattr(inner, "config", None)
    if config is None or any(getattr(config, a, None) for a in _LOGIT_POSTPROCESSING_ATTRS):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = getattr(inner, "base_model", None)
    if head is None or decoder is None or decoder is inner:
        return None
    return decoder, head


def shared_prefix_mask(doc_ids: torch.Tensor, part_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask [R, 1, L, L]: token i sees j iff j <= i, same prompt block, and j is in the
    prompt or in i's own response. Padding sees only itself (keeps softmax rows finite)."""
    L = doc_ids.shape[1]
    pos = torch.arange(L, device=doc_ids.device)
    causal = pos[None, :] <= pos[:, None]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    visible_part = (part_ids[:, None, :] == 0) | (part_ids[:, :, None] == part_ids[:, None, :])
    allowed = causal[None] & same_doc & visible_part & (doc_ids[:, None, :] >= 0)
    allowed |= torch.eye(L, dtype=torch.bool, device=doc_ids.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def model_inputs(batch: Batch, dtype: torch.dtype, segments=None) -> dict:
    """Forward keyword arguments of a batch in its layout: a 2-D padding mask (plain), the
    prefix-shared kernel's ``segments`` when given, else the dense 4-D shared-prefix mask."""
    inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids)
    if batch.layout != "shared":
        inputs["attention_mask"] = (batch.doc_ids >= 0).long()
    elif segments is not None:
        inputs["prefix_segments"] = segments
    else:
        inputs["attention_mask"] = shared_prefix_mask(batch.doc_ids, batch.part_ids, dtype)
    return inputs


def _token_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class SequenceLogprobs(nn.Module):
    """Wraps a causal LM; ``forward(batch)`` returns ``(logp_sum [B, K], num_tokens [B, K])``.

    Entries where an example has fewer than K responses are 0 with count 0. Wrapping the model in
    this module (rather than calling its parts from the trainer) keeps DDP/FSDP hooks on the path.

    ``chunk_tokens``: response tokens per logit chunk (None: one chunk, no recomputation).
    ``prefix_attention``: shared-layout batches use the prefix-shared attention kernel of
    :mod:`pluralign.attention` (True), the dense 4-D mask (False), or (None) the kernel when the
    model supports it and, batch by batch, when its cost model says it beats the dense call (long
    prompts and responses; short ones pay more in per-call overhead than they save).
    ``attention_path`` says what was chosen and why; ``kernel_batches`` / ``dense_batches`` count
    the shared-layout forwards that took each path.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int | None = 4096, prefix_attention: bool | None = None):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.kernel_batches = self.dense_batches = 0
        self.always_kernel = bool(prefix_attention)
        if prefix_attention is False:
            self.prefix_attention, self.attention_path = False, "dense 4-D mask (requested)"
        else:
            enabled, reason = enable_prefix_attention(model)
            if prefix_attention and not enabled:
                raise ValueError(f"prefix_attention=True, but the kernel cannot serve this model: {reason}")
            self.prefix_attention = enabled
            if not enabled:
                self.attention_path = f"dense 4-D mask ({reason})"
            else:
                self.attention_path = reason + (" on every batch" if self.always_kernel else
                                                " where its cost model beats the dense 4-D mask, batch by batch")

    def forward(self, batch: Batch, per_token: bool = False):
        """(logp_sum [B, K], num_tokens [B, K]); with ``per_token`` the flat per-token log-probs [T]
        in the order of ``batch.gather_seq`` (what per-token RLHF penalties need)."""
        segments = None
        if batch.layout == "shared":
            segments = prefix_segments(batch.doc_ids, batch.part_ids) if self.prefix_attention else None
            if segments is not None and (self.always_kernel or segments.kernel_pays()):
                self.kernel_batches += 1
            else:
                segments = None
                self.dense_batches += 1
        inputs = model_inputs(batch, next(self.model.parameters()).dtype, segments)
        split = split_decoder_and_head(self.model)
        if split is not None:
            decoder, head = split
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            picked = hidden[batch.gather_row, batch.gather_pos]
            token_logps = self._chunked(picked, head, batch.gather_target)
        else:  # generic path: full logits from the model's own forward
            logits = self.model(**inputs, use_cache=False).logits
            picked = logits[batch.gather_row, batch.gather_pos].float()
            token_logps = picked.gather(-1, batch.gather_target[:, None]).squeeze(-1) - torch.logsumexp(picked, -1)
        if per_token:
            return token_logps
        n_seq = batch.num_examples * batch.max_responses
        sums = torch.zeros(n_seq, dtype=torch.float32, device=token_logps.device)
        sums = sums.index_add(0, batch.gather_seq, token_logps)
        counts = torch.zeros(n_seq, dtype=torch.float32, device=token_logps.device)
        counts = counts.index_add(0, batch.gather_seq, torch.ones_like(token_logps))
        shape = (batch.num_examples, batch.max_responses)
        return sums.view(shape), counts.view(shape)

    def _chunked(self, hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
        size = self.chunk_tokens or hidden.shape[0]
        if hidden.shape[0] <= size:
            return _token_logprobs(hidden, head, targets)
        parts = []
        for start in range(0, hidden.shape[0], size):
            h, t = hidden[start : start + size], targets[start : start + size]
            if torch.is_grad_enabled():
                # Recompute this chunk's logits in backward instead of storing [chunk, vocab] floats.
                parts.append(checkpoint(_token_logprobs, h, head, t, use_reentrant=False))
            else:
                parts.append(_token_logprobs(h, head, t))
        return torch.cat(parts)


@torch.no_grad()
def score_candidates(model: nn.Module, tokenizer, prompt: str, candidates: list[str]) -> torch.Tensor:
    """Summed log pi(candidate | prompt) for each candidate (EOS included), in one shared-prefix pass."""
    from pluralign.data.collate import Collator
    from pluralign.data.records import PreferenceRecord
    from pluralign.data.tokenize import tokenize_records

    record = PreferenceRecord(prompt=prompt, responses=tuple(candidates), ranking=tuple(range(len(candidates))))
    data = tokenize_records([record], tokenizer, max_length=1 << 20, max_prompt_length=(1 << 20) - 1)
    batch = Collator(tokenizer.pad_token_id, "shared")(data.examples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, _ = SequenceLogprobs(model)(batch.to(device))
    model.train(was_training)
    return sums[0].cpu()
