"""Prefix-shared attention: pay for a prompt once, and for each response only against its own keys.

In the shared layout (:mod:`pluralign.data.collate`) a row holds a prompt x followed by its K
responses y_1..y_K. The attention pattern it needs is

    prompt token i     sees prompt tokens j <= i
    response-k token i sees every prompt token and response-k tokens j <= i (never y_l, l != k)

A dense 4-D mask expresses this, but dense attention still computes every (query, key) product of
the row, (|x| + sum_k |y_k|)^2 of them, most of which the mask then throws away. This module
computes only the needed blocks, with :func:`torch.nn.functional.scaled_dot_product_attention`
on views of the row (nothing is gathered or padded):

    each prompt:   one causal SDPA call over its own tokens
    each response: one SDPA call, its queries against [prompt keys ; own keys], lower-right causal

i.e. |x|^2 / 2 + sum_k |y_k| (|x| + |y_k|) products instead of (|x| + sum_k |y_k|)^2. Rotary
position embeddings are applied by the model before attention from the batch's position ids
(which restart after the prompt), so the result equals the plain layout's, token for token.

:func:`enable_prefix_attention` registers it with transformers' ``AttentionInterface`` under
:data:`PREFIX_ATTENTION` as an extension of 'sdpa' (calls without segments are plain SDPA), and
:class:`pluralign.logprobs.SequenceLogprobs` passes each shared-layout batch's
:class:`PrefixSegments` down to it. Models that cannot use it (see
:func:`supports_prefix_attention`) keep the dense 4-D mask, and the trainer checks the shared
layout against the plain one once before training.

Each call has a fixed cost (about 150 us forward + backward on 2 CPU cores), so for short prompts
and responses one dense masked call is faster: :meth:`PrefixSegments.kernel_pays` compares the
two per batch. A varlen kernel (flash-attention's, on GPU) would remove that fixed cost; it is
not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pluralign.models import unwrap_peft

PREFIX_ATTENTION = "pluralign_prefix"
# Fixed cost of one SDPA call (forward + backward, with the split/cat around it) in units of
# query-key products: measured on 2 CPU cores, head dim 32, ~150 us per call against ~30 ns per
# product, plus the concatenations. Used only by the automatic per-batch choice.
CALL_OVERHEAD_PRODUCTS = 6000

# Config attributes that change attention in ways this kernel does not implement.
_UNSUPPORTED_CONFIG_ATTRS = ("attn_logit_softcapping",)


@dataclass(frozen=True)
class PrefixSegments:
    """How each row of a shared-layout batch splits into pieces.

    ``bounds[r]`` are the piece boundaries of row r (0 = first, last = the padded row length);
    piece i is tokens ``bounds[r][i]:bounds[r][i+1]``. ``groups[r]`` lists, for every prompt packed
    into row r, ``(prompt piece, (response pieces...))``; ``gaps[r]`` are the pieces that are padding.
    """

    bounds: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]
    gaps: tuple[tuple[int, ...], ...]
    # Additive response masks by (response length, prompt length, device, dtype), built once per
    # batch and shared by every layer (and by recomputation under activation checkpointing).
    masks: dict = field(default_factory=dict, compare=False, repr=False)

    def response_mask(self, size: int, prompt: int, device, dtype) -> torch.Tensor:
        """[size, prompt + size] additive mask, lower-right causal: key j visible to query i iff
        j <= i + prompt. Additive float masks go straight into the kernel (boolean ones are
        converted on every call)."""
        key = (size, prompt, device, dtype)
        if key not in self.masks:
            hidden = torch.ones(size, prompt + size, dtype=torch.bool, device=device).triu(prompt + 1)
            self.masks[key] = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(
                hidden, torch.finfo(dtype).min)
        return self.masks[key]

    def kernel_pays(self, call_overhead: int = CALL_OVERHEAD_PRODUCTS) -> bool:
        """Whether the per-segment kernel is expected to beat one dense masked SDPA call, counting
        query-key products per head: dense ``rows * L^2`` against ``sum P^2 + sum S (P + S)``
        plus ``call_overhead`` per SDPA call. The prompt counts P^2, not P^2/2: measured on CPU, a
        causal call costs about as much as the full square. Short segments lose: each call has a
        fixed cost."""
        rows, length = len(self.bounds), self.bounds[0][-1]
        kernel = 0
        for prompt, responses in self.group_sizes():
            kernel += prompt * prompt + call_overhead
            kernel += sum(size * (prompt + size) + call_overhead for size in responses)
        return kernel < rows * length * length

    def group_sizes(self):
        """``(prompt length, (response lengths...))`` of every prompt in the batch, row by row."""
        for bounds, groups in zip(self.bounds, self.groups):
            for p, responses in groups:
                yield bounds[p + 1] - bounds[p], tuple(bounds[s + 1] - bounds[s] for s in responses)


def attention_layer_types(config) -> set[str]:
    """The attention kinds the model's layers use: "full_attention" and/or "sliding_attention"."""
    types = getattr(config, "layer_types", None)
    if types:
        return set(types)
    return {"sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"}


def prefix_segments(doc_ids: torch.Tensor, part_ids: torch.Tensor) -> PrefixSegments:
    """Pieces of a shared-layout batch from its ``doc_ids`` (-1 on padding) and ``part_ids``
    (0 = prompt, k + 1 = response k). A piece is a maximal run of tokens with the same (doc, part)
    in a row; every response must follow its prompt in the same row (the collator guarantees it)."""
    doc, part = doc_ids.cpu(), part_ids.cpu()
    length = doc.shape[1]
    change = torch.ones_like(doc, dtype=torch.bool)
    change[:, 1:] = (doc[:, 1:] != doc[:, :-1]) | (part[:, 1:] != part[:, :-1])
    all_bounds, all_groups, all_gaps = [], [], []
    for r in range(doc.shape[0]):
        bounds = torch.nonzero(change[r]).squeeze(1).tolist() + [length]
        groups: list[tuple[int, list[int]]] = []
        gaps = []
        for i, start in enumerate(bounds[:-1]):
            if int(doc[r, start]) < 0:
                gaps.append(i)
            elif int(part[r, start]) == 0:
                groups.append((i, []))
            elif not groups:
                raise ValueError(f"row {r}: the response at token {start} has no prompt before it")
            else:
                groups[-1][1].append(i)
        all_bounds.append(tuple(bounds))
        all_groups.append(tuple((p, tuple(rs)) for p, rs in groups))
        all_gaps.append(tuple(gaps))
    return PrefixSegments(tuple(all_bounds), tuple(all_groups), tuple(all_gaps))


def prefix_shared_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    prefix_segments: PrefixSegments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query [B, H, L, D]``, ``key/value [B, Hkv, L, D]`` ->
    ``(output [B, L, H, D], None)``, attending as the shared layout requires (see module doc).

    Each segment is one SDPA call on views of the row, so nothing is padded: a prompt is plain
    causal attention; a response of length S after a prompt of length P attends to the
    concatenated keys [prompt ; response] under the lower-right causal mask (key j visible to
    query i iff j <= i + P).
    Padding positions get zeros (their outputs are never read)."""
    if prefix_segments is None:
        raise RuntimeError(f"attention implementation {PREFIX_ATTENTION!r} needs the batch's prefix_segments")
    batch, heads, length, dim = query.shape
    bounds = prefix_segments.bounds
    if len(bounds) != batch or any(b[-1] != length for b in bounds):
        raise ValueError(f"prefix_segments describe {len(bounds)} rows of {bounds[0][-1]} tokens; "
                         f"attention got {batch} rows of {length}")
    gqa = heads != key.shape[1]

    def attend(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              dropout_p=dropout, scale=scaling, enable_gqa=gqa)

    out_rows = []
    # unbind/split (not slicing) so that backward assembles each gradient with one stack/cat.
    for r, (q_row, k_row, v_row) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
        sizes = [b - a for a, b in zip(bounds[r][:-1], bounds[r][1:])]
        qs, ks, vs = (x[None].split(sizes, dim=2) for x in (q_row, k_row, v_row))
        pieces = [None] * len(sizes)
        for gap in prefix_segments.gaps[r]:
            pieces[gap] = query.new_zeros(1, heads, sizes[gap], dim)
        for p, responses in prefix_segments.groups[r]:
            pieces[p] = attend(qs[p], ks[p], vs[p])
            for s in responses:
                keys, values = torch.cat([ks[p], ks[s]], dim=2), torch.cat([vs[p], vs[s]], dim=2)
                mask = prefix_segments.response_mask(sizes[s], sizes[p], query.device, query.dtype)
                pieces[s] = attend(qs[s], keys, values, mask)
        out_rows.append(torch.cat(pieces, dim=2))
    return torch.cat(out_rows).transpose(1, 2).contiguous(), None


def _sdpa_or_prefix_attention(module, query, key, value, attention_mask, prefix_segments=None, **kwargs):
    """The registered function: the prefix kernel for shared-layout batches, transformers' SDPA
    attention (unchanged) for every other call, so a model switched to it behaves as with 'sdpa'."""
    if prefix_segments is not None:
        return prefix_shared_attention(module, query, key, value, attention_mask,
                                       prefix_segments=prefix_segments, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if PREFIX_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(PREFIX_ATTENTION, _sdpa_or_prefix_attention)
        # Calls without prefix_segments get exactly the masks 'sdpa' would get.
        AttentionMaskInterface.register(PREFIX_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def supports_prefix_attention(model: torch.nn.Module) -> tuple[bool, str]:
    """(usable, reason): whether :func:`prefix_shared_attention` can serve this model's attention.

    Needs attention dispatched through transformers' ``AttentionInterface`` with keyword
    arguments passed through (``_supports_attention_backend``), the 'sdpa' implementation (the
    kernel extends it), and no sliding window, logit soft-capping or mixed layer types."""
    try:  # the attention and mask interfaces this extends (transformers >= 4.53)
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        return False, "this transformers release has no AttentionInterface/AttentionMaskInterface"
    inner = unwrap_peft(model)
    config = getattr(inner, "config", None)
    if config is None or not getattr(inner, "_supports_attention_backend", False):
        return False, "the model does not dispatch attention through transformers' AttentionInterface"
    if getattr(config, "sub_configs", None):
        return False, "the model has sub-configs (a composite model)"
    if config._attn_implementation not in ("sdpa", PREFIX_ATTENTION):
        return False, f"attention implementation is {config._attn_implementation!r}, not 'sdpa'"
    for attr in _UNSUPPORTED_CONFIG_ATTRS:
        if getattr(config, attr, None):
            return False, f"the model's config sets {attr}"
    other = attention_layer_types(config) - {"full_attention"}
    if other:
        return False, f"the model has {', '.join(sorted(other))} layers (the kernel implements full causal attention)"
    return True, "prefix-shared attention kernel"


def enable_prefix_attention(model: torch.nn.Module) -> tuple[bool, str]:
    """Switch an 'sdpa' model to :data:`PREFIX_ATTENTION` when :func:`supports_prefix_attention`
    allows it; returns (enabled, reason). The switch stays on the model (gradient checkpointing
    recomputes layers during backward, which must see the same attention); calls without
    ``prefix_segments`` behave exactly as 'sdpa', and the name is never written to saved configs."""
    ok, reason = supports_prefix_attention(model)
    if ok:
        _register()
        unwrap_peft(model).config._attn_implementation = PREFIX_ATTENTION
    return ok, reason
