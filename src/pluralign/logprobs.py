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

import weakref

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pluralign.attention import attention_layer_types, enable_prefix_attention, prefix_segments
from pluralign.data.collate import Batch
from pluralign.models import unwrap_peft

def split_decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder returning hidden states, lm_head) of a causal LM with the usual structure, else None.
    Whether logits really are ``lm_head(hidden)`` is :func:`check_fast_head`'s question."""
    inner = unwrap_peft(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = getattr(inner, "base_model", None)
    if head is None or decoder is None or decoder is inner:
        return None
    return decoder, head


@torch.no_grad()
def check_fast_head(model: nn.Module, length: int = 8) -> tuple[bool, str]:
    """(usable, reason): whether ``lm_head(decoder(x).last_hidden_state)`` equals the model's own
    logits, tried once on a short input. A model that post-processes logits (Granite's
    ``logits_scaling``, Gemma's final soft-capping, Cohere's ``logit_scale``) or puts anything
    between the decoder and the head fails, and its log-probs then come from its full forward.

    The head's output is captured during the model's own forward and compared exactly (the same
    tensor when nothing follows the head), and the decoder's hidden states against the head's input
    (two runs of the same computation, up to rounding)."""
    split = split_decoder_and_head(model)
    if split is None:
        return False, "the model has no separate decoder and output embedding"
    decoder, head = split
    inner = unwrap_peft(model)
    vocab = int(getattr(inner.config, "vocab_size", 0) or head.weight.shape[0])
    device = next(model.parameters()).device
    ids = (torch.arange(length, device=device)[None] * 7919 + 3) % vocab  # deterministic, spread-out ids
    seen = {}
    hook = head.register_forward_hook(lambda mod, args, out: seen.update(hidden=args[0], logits=out))
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, use_cache=False).logits
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    finally:
        hook.remove()
        model.train(was_training)
    if "logits" not in seen or seen["logits"].shape != logits.shape:
        return False, "the model's logits do not come from one call of its output embedding"
    if not torch.equal(seen["logits"].float(), logits.float()):
        diff = float((seen["logits"].float() - logits.float()).abs().max())
        return False, f"the model post-processes lm_head's output (max |diff| {diff:.3g} on a test input)"
    h, want = hidden.float(), seen["hidden"].float()
    scale = float(want.abs().max()) + 1e-30
    if h.shape != want.shape or float((h - want).abs().max()) > 1e-5 * scale:
        return False, "the decoder's last hidden state is not what lm_head receives"
    return True, "lm_head on the hidden states of response tokens only"


# One start-up check per model object: scoring helpers build a SequenceLogprobs per call.
_HEAD_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checked_fast_head(model: nn.Module) -> tuple[bool, str]:
    """:func:`check_fast_head`, run once per model object."""
    if model not in _HEAD_CHECKS:
        _HEAD_CHECKS[model] = check_fast_head(model)
    return _HEAD_CHECKS[model]


# One compiled wrapper per decoder module, kept outside the module so that state dicts, copies
# and process wrappers of the scorer never see it.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_decoder(decoder: nn.Module):
    """``decoder`` under torch.compile (:class:`pluralign.compiling.CompiledOrEager`), built once per module."""
    if decoder not in _COMPILED:
        from pluralign.compiling import CompiledOrEager

        _COMPILED[decoder] = CompiledOrEager(decoder, "the decoder forward")
    return _COMPILED[decoder]


def shared_prefix_mask(doc_ids: torch.Tensor, part_ids: torch.Tensor, dtype: torch.dtype,
                       position_ids: torch.Tensor | None = None, sliding_window: int | None = None) -> torch.Tensor:
    """Additive 4-D mask [R, 1, L, L]: token i sees j iff j <= i, same prompt block, and j is in the
    prompt or in i's own response; with ``sliding_window`` W also ``pos_i - pos_j < W`` (positions
    restart after each prompt, so this is the window of the per-sequence computation). Padding sees
    only itself (keeps softmax rows finite)."""
    L = doc_ids.shape[1]
    pos = torch.arange(L, device=doc_ids.device)
    causal = pos[None, :] <= pos[:, None]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    visible_part = (part_ids[:, None, :] == 0) | (part_ids[:, :, None] == part_ids[:, None, :])
    allowed = causal[None] & same_doc & visible_part & (doc_ids[:, None, :] >= 0)
    if sliding_window is not None:
        if position_ids is None:
            raise ValueError("a sliding-window mask needs the batch's position ids")
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < sliding_window
    allowed |= torch.eye(L, dtype=torch.bool, device=doc_ids.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def dense_shared_mask(config, batch: Batch, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The dense mask(s) of a shared-layout batch for a model: one tensor when all its layers attend
    alike, else ``{layer type: mask}``, which transformers models with mixed layers accept in place
    of ``attention_mask``."""
    window = getattr(config, "sliding_window", None)
    masks = {kind: shared_prefix_mask(batch.doc_ids, batch.part_ids, dtype, batch.position_ids,
                                      window if kind == "sliding_attention" else None)
             for kind in attention_layer_types(config)}
    return next(iter(masks.values())) if len(masks) == 1 else masks


def model_inputs(batch: Batch, dtype: torch.dtype, segments=None, config=None) -> dict:
    """Forward keyword arguments of a batch in its layout: a 2-D padding mask (plain), the
    prefix-shared kernel's ``segments`` when given, else the dense shared-prefix mask(s) for the
    model with ``config`` (its sliding windows and layer types; None: full attention)."""
    inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids)
    if batch.layout != "shared":
        inputs["attention_mask"] = (batch.doc_ids >= 0).long()
    elif segments is not None:
        inputs["prefix_segments"] = segments
    elif config is None:
        inputs["attention_mask"] = shared_prefix_mask(batch.doc_ids, batch.part_ids, dtype)
    else:
        inputs["attention_mask"] = dense_shared_mask(config, batch, dtype)
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
    the shared-layout forwards that took each path. ``logits_path`` says whether logits are formed
    from the decoder's hidden states by lm_head alone (checked once, :func:`check_fast_head`) or
    taken from the model's full forward. ``compile`` (``model.compile``): the decoder forward of
    batches that do not take the prefix-shared kernel runs under torch.compile
    (:mod:`pluralign.compiling`; the fast-head path only).
    """

    def __init__(self, model: nn.Module, chunk_tokens: int | None = 4096, prefix_attention: bool | None = None,
                 compile: bool = False):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.compile = compile
        self.kernel_batches = self.dense_batches = 0
        self.always_kernel = bool(prefix_attention)
        self.fast_head, self.logits_path = checked_fast_head(model)
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

    def shared_attention_paths(self) -> tuple[str, ...]:
        """The attention paths shared-layout batches may take: "kernel" and/or "dense"."""
        if not self.prefix_attention:
            return ("dense",)
        return ("kernel",) if self.always_kernel else ("kernel", "dense")

    def forward(self, batch: Batch, attention: str | None = None, per_token: bool = False):
        """(logp_sum [B, K], num_tokens [B, K]); with ``per_token`` the flat per-token log-probs [T]
        in the order of ``batch.gather_seq`` (what per-token RLHF penalties need). ``attention``
        ("kernel" | "dense") overrides the per-batch choice for a shared-layout batch."""
        if attention not in (None, *self.shared_attention_paths()):
            raise ValueError(f"attention={attention!r}; this model's shared batches take {self.shared_attention_paths()}")
        segments = None
        if batch.layout == "shared":
            segments = prefix_segments(batch.doc_ids, batch.part_ids) if self.prefix_attention else None
            if segments is not None and attention is None:
                use_kernel = self.always_kernel or segments.kernel_pays()
            else:
                use_kernel = segments is not None and attention == "kernel"
            if use_kernel:
                self.kernel_batches += 1
            else:
                segments = None
                self.dense_batches += 1
        inputs = model_inputs(batch, next(self.model.parameters()).dtype, segments, unwrap_peft(self.model).config)
        if self.fast_head:
            decoder, head = split_decoder_and_head(self.model)
            if self.compile and segments is None:  # the kernel's per-piece calls stay eager
                decoder = compiled_decoder(decoder)
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
