"""Sampling completions from a causal LM behind one small interface.

    gen = TransformersGenerator(model, tokenizer)
    out = gen.generate(prompt_ids, SamplingParams(max_new_tokens=64, num_completions=4))
    out.token_ids, out.logprobs, out.mask, out.finish_reasons, out.clipped_ratio

A generator takes tokenized prompts and returns, for each of the k completions of each prompt
(prompt-major: completion j of prompt b is row b * k + j), the sampled token ids (EOS included
when the completion stopped), the model's log-prob log pi(a_t|s_t) of each sampled token, the
entropy of pi(.|s_t) at each step, and a finish reason: ``"stop"`` (an end token was sampled) or
``"length"`` (clipped at ``max_new_tokens``). Log-probs and entropies are those of the model's
own distribution (temperature 1, no top-k/top-p): the quantities RLHF penalties need. Sampling
settings only change which tokens are drawn.

:class:`TransformersGenerator` decodes with the KV cache, batched, with left-padded prompts; the k
completions of a prompt share one prefill (the prompt's cache is computed once and repeated k
times); rows whose completion ended leave the batch and its cache. :class:`VLLMGenerator` is the
adapter for GPU serving with vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from pluralign.attention import PREFIX_ATTENTION
from pluralign.llama_decode import LlamaDecodeStep

FINISH_REASONS = ("stop", "length")
# attention implementations that run transformers' SDPA attention on a decode step: 'sdpa', and the
# shared-prefix kernel's name, which a policy keeps after training and which calls without prefix
# segments (every generation call) hand to that same SDPA function with the same masks
SDPA_IMPLEMENTATIONS = ("sdpa", PREFIX_ATTENTION)


@dataclass(frozen=True)
class SamplingParams:
    """max_new_tokens: completion tokens at most (EOS included); temperature > 0 divides the logits;
    top_k (0: off) keeps the k likeliest tokens; top_p (1: off) keeps the smallest set whose
    probability reaches top_p; greedy takes the argmax (ignores the three); num_completions: k
    completions per prompt; seed: the sampler's seed (None: torch's global generator)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    num_completions: int = 1
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature: expected > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p: expected in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k: expected >= 0 (0 = off), got {self.top_k}")
        if self.num_completions < 1:
            raise ValueError(f"SamplingParams.num_completions: expected >= 1, got {self.num_completions}")


@dataclass
class Completions:
    """k completions for each of B prompts, rows prompt-major (N = B * k), right-padded to T."""

    prompt_ids: list[tuple[int, ...]]  # B
    num_completions: int  # k
    token_ids: torch.Tensor  # [N, T] long, pad after the end
    logprobs: torch.Tensor  # [N, T] log pi(a_t|s_t), 0 on padding
    entropy: torch.Tensor  # [N, T] H(pi(.|s_t)), 0 on padding
    mask: torch.Tensor  # [N, T] bool, the completion's tokens (EOS included)
    finish_reasons: list[str]  # N, "stop" or "length"

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def prompt_index(self) -> torch.Tensor:
        """[N] index of the prompt each completion answers."""
        return torch.arange(len(self.prompt_ids)).repeat_interleave(self.num_completions)

    @property
    def clipped_ratio(self) -> float:
        """Fraction of completions cut at max_new_tokens (TRL's ``completions/clipped_ratio``)."""
        return sum(r == "length" for r in self.finish_reasons) / max(1, len(self.finish_reasons))

    def completion_ids(self) -> list[list[int]]:
        """Each completion's token ids, EOS included when it stopped."""
        return [row[m].tolist() for row, m in zip(self.token_ids, self.mask)]

    def texts(self, tokenizer) -> list[str]:
        """Decoded completions without special tokens (EOS), as reward functions receive them."""
        return tokenizer.batch_decode(self.completion_ids(), skip_special_tokens=True)


def missing_eos_penalty(rewards: torch.Tensor, finish_reasons: Sequence[str], penalty: float) -> torch.Tensor:
    """rewards - penalty for every completion that did not stop (TRL's ``missing_eos_penalty``)."""
    clipped = torch.tensor([r == "length" for r in finish_reasons], dtype=rewards.dtype, device=rewards.device)
    return rewards - penalty * clipped


class Generator(Protocol):
    tokenizer: object

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> Completions: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next generate() use ``model``'s current weights (after an optimizer step)."""


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering: removed tokens get -inf."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = probs.cumsum(-1) - probs >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def end_token_ids(tokenizer, model=None) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS and the model's configured EOS ids."""
    ids = {tokenizer.eos_token_id}
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if cfg_eos is not None:
        ids.update(cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos])
    return sorted(i for i in ids if i is not None)


class TransformersGenerator:
    """Batched KV-cache decoding with any transformers causal LM (the policy itself: no weight sync).

    ``prefill_once`` (default True) computes each prompt's cache once and repeats it for its k
    completions; False repeats the prompt k times before the prefill (the naive way; same result).
    ``batch_size`` bounds the prompts decoded together. ``compact_at`` (default 0.25): once this
    fraction of the rows still decoded has finished, those rows leave the batch and its cache, so
    the remaining steps compute only live rows (None: never; the tokens drawn are the same either
    way, see :func:`sample_next`). ``lean`` (default True): decode steps of Llama, Qwen2 and Mistral
    models call the model's weights directly (:class:`pluralign.llama_decode.LlamaDecodeStep`, the
    same operations as their forward; other models, or False, go through the forward). ``compile``
    (``model.compile``): that lean decode step runs under torch.compile (:mod:`pluralign.compiling`).

    Per decode step the work outside the model is a handful of tensor ops, run in inference mode:
    the attention mask is a view of one buffer allocated per batch (with SDPA, the 4D mask
    transformers would build, in the additive form SDPA turns it into, so neither builds one per
    step), the sampler draws for every row of the batch in one call, and the outputs are written
    into preallocated [N, max_new_tokens] tensors; which tokens belong to each completion (up to its
    first end token) is worked out once at the end.
    """

    def __init__(self, model, tokenizer, *, prefill_once: bool = True, batch_size: int | None = None,
                 compact_at: float | None = 0.25, lean: bool = True, compile: bool = False):
        if compact_at is not None and not 0 < compact_at <= 1:
            raise ValueError(f"TransformersGenerator.compact_at: expected in (0, 1] or None, got {compact_at}")
        self.model, self.tokenizer = model, tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.end_ids = end_token_ids(tokenizer, model)
        self.prefill_once = prefill_once
        self.batch_size = batch_size
        self.compact_at = compact_at
        self.lean = lean
        self.decode_step = LlamaDecodeStep.__call__
        if compile:
            from pluralign.compiling import CompiledOrEager

            self.decode_step = CompiledOrEager(LlamaDecodeStep.__call__, "the decode step")

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> Completions:
        prompts = [tuple(int(t) for t in p) for p in prompt_ids]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: expected a non-empty list of non-empty token-id prompts")
        device = next(self.model.parameters()).device
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=device).manual_seed(params.seed)
        # what the model's forward takes, read once per call (not per decode step)
        call = _ModelCall(self.model)
        step = self.batch_size or len(prompts)
        # inference mode spares every op of the decode loop autograd's bookkeeping; _concat, outside
        # it, copies the results into ordinary tensors, which the caller may use in a loss
        with torch.inference_mode():
            parts = [self._generate_batch(call, prompts[i : i + step], params, device, gen)
                     for i in range(0, len(prompts), step)]
        return _concat(prompts, params.num_completions, parts, self.pad_id)

    def _generate_batch(self, call, prompts, params, device, gen):
        k = params.num_completions
        was_training = self.model.training
        self.model.eval()
        try:
            if self.prefill_once:
                logits, cache, attn, pos = self._prefill(call, prompts, device)
                cache.batch_repeat_interleave(k)
                logits, attn, pos = (t.repeat_interleave(k, 0) for t in (logits, attn, pos))
            else:
                logits, cache, attn, pos = self._prefill(call, [p for p in prompts for _ in range(k)], device)
            return self._decode(call, logits, cache, attn, pos, params, gen)
        finally:
            self.model.train(was_training)

    def _prefill(self, call, prompts, device):
        from transformers import DynamicCache

        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((len(prompts), P), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at column P - 1
            ids[i, P - len(p):] = torch.tensor(p, device=device)
            attn[i, P - len(p):] = 1
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=self.model.config)
        logits = call(self.model, ids, attn, pos, cache, logits_to_keep=1)
        return logits, cache, attn, pos[:, -1:]  # the cache is updated in place

    def _decode(self, call, logits, cache, attn, pos, params, gen):
        N, T, device = logits.shape[0], params.max_new_tokens, logits.device
        end_ids = torch.tensor(self.end_ids, device=device)
        tokens = torch.full((N, T), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((N, T), device=device)
        ents = torch.zeros((N, T), device=device)
        mask = _DecodeMask(attn, T, _cache_dtype(cache) if call.mask_4d else None)
        preallocated = _preallocate(cache, T)
        # the model's own weights called directly for Llama-shaped models, same logits (None: the model's forward)
        lean = LlamaDecodeStep.build(self.model, cache) if self.lean and preallocated and call.mask_4d else None
        rows = None  # the original row of each batch row once finished rows have left (None: all, in order)
        ended = torch.zeros(N, dtype=torch.bool, device=device)
        width = T
        for t in range(T):
            nxt, logp, ent = sample_next(logits, params, gen, N, rows)
            if rows is None:
                tokens[:, t], logps[:, t], ents[:, t] = nxt, logp, ent
            else:
                tokens[rows, t], logps[rows, t], ents[rows, t] = nxt, logp, ent
            ended |= torch.isin(nxt, end_ids)
            n_ended = int(ended.sum())
            if n_ended == ended.shape[0] or t == T - 1:
                width = t + 1
                break
            if self.compact_at is not None and n_ended >= self.compact_at * ended.shape[0]:
                keep = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows = keep if rows is None else rows[keep]
                nxt, pos, ended = nxt[keep], pos[keep], ended[keep]
                mask.select(keep)
            pos = pos + 1
            if lean is not None:
                logits = self.decode_step(lean, nxt, pos, mask.grow())
            else:
                logits = call(self.model, nxt[:, None], mask.grow(), pos, cache)
        return _finish(tokens[:, :width], logps[:, :width], ents[:, :width], end_ids, self.pad_id)


def sample_next(logits: torch.Tensor, params: SamplingParams, gen, num_rows: int, rows: torch.Tensor | None):
    """The next token of each row, its log-prob log pi(a|s) and the entropy H(pi(.|s)) of the model's
    own distribution pi = softmax(logits) (temperature 1, unfiltered).

    Sampling draws a ~ p = softmax(warp_logits(logits)) by inversion: one uniform u per row, and a
    is the first token whose cumulative probability exceeds u * sum(p). The cumulative sum is in
    float64, so its rounding shifts no token's probability measurably, and the target is capped
    just below the total, so it never passes the last token of nonzero probability. One uniform per row replaces the vocabulary-wide
    exponential noise ``torch.multinomial`` draws (the whole step is 2.3-3.7x faster,
    ``bench/bench_sampler.py``); the tokens follow the same distribution but are not
    multinomial's draws. The uniforms are drawn for all ``num_rows`` rows of the
    batch even when only ``rows`` (the rows still decoded, after finished ones left) are sampled,
    so that every row's draws are the same whether or not other rows left the batch.
    """
    probs = logits.softmax(-1)
    if params.greedy:
        nxt = logits.argmax(-1)
    else:
        warped = probs
        if params.temperature != 1.0 or params.top_k or params.top_p < 1.0:
            warped = warp_logits(logits, params).softmax(-1)
        u = torch.rand((num_rows, 1), dtype=torch.float64, generator=gen, device=warped.device)
        if rows is not None:
            u = u[rows]
        cdf = warped.double().cumsum(-1)
        total = cdf[:, -1:]
        target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        # right=True: the first index whose cdf exceeds the target, which skips tokens of
        # probability 0 (their cdf equals the previous one)
        nxt = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    logp_all = torch.log_softmax(logits, -1)
    # 0 * log 0 = 0 for tokens of probability 0 (logit -inf), not NaN
    entropy = -(probs * logp_all).nan_to_num_(0.0, 0.0, 0.0).sum(-1)
    return nxt, logp_all.gather(-1, nxt[:, None]).squeeze(-1), entropy


def _finish(tokens, logps, ents, end_ids, pad_id):
    """Each completion ends at its first end token: later positions become padding (pad id, log-prob
    and entropy 0, mask False); finish reason "stop" where an end token was drawn, else "length"."""
    is_end = torch.isin(tokens, end_ids)
    after = (is_end.long().cumsum(-1) - is_end.long()) > 0  # strictly after the first end token
    logps, ents = logps.masked_fill(after, 0.0), ents.masked_fill(after, 0.0)
    if not bool(torch.isfinite(logps).all() and torch.isfinite(ents).all()):
        raise ValueError("generate: the model's next-token distribution is not finite (NaN or inf logits)")
    reasons = ["stop" if s else "length" for s in is_end.any(-1).tolist()]
    return tokens.masked_fill(after, pad_id), logps, ents, ~after, reasons


class _ModelCall:
    """One forward of the model with the KV cache; what it takes is read once per generate() call:
    the cache argument's name (transformers renamed past_key_values to cache; a peft wrapper passes
    keyword arguments through, so ask the model under it), and whether decode steps may pass the 4D
    boolean mask SDPA uses directly: only for models whose modeling code builds its mask with
    transformers' ``create_causal_mask`` (which returns a prepared 4D mask as is), whose attention is
    SDPA (:data:`SDPA_IMPLEMENTATIONS`) and attends fully causally in every layer (no sliding-window
    or chunked layers, whose masks differ)."""

    def __init__(self, model):
        import inspect
        import sys

        from pluralign.models import unwrap_peft

        base = unwrap_peft(model)
        self.cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        try:
            from transformers.masking_utils import create_causal_mask
        except ImportError:  # an older transformers: keep the 2D mask
            create_causal_mask = None
        modeling = sys.modules.get(type(base).__module__)
        self.mask_4d = (create_causal_mask is not None and getattr(modeling, "create_causal_mask", None) is create_causal_mask
                        and getattr(config, "_attn_implementation", None) in SDPA_IMPLEMENTATIONS
                        and layer_types == {"full_attention"}
                        and getattr(config, "sliding_window", None) is None
                        and getattr(config, "attention_chunk_size", None) is None)

    def __call__(self, model, ids, attn, pos, cache, **kw):
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{self.cache_kwarg: cache}, **kw)
        return out.logits[:, -1].float()


def _preallocate(cache, extra: int) -> bool:
    """Give every plain growing layer of a transformers ``DynamicCache`` room for ``extra`` more
    positions, so that decode steps write keys and values in place instead of concatenating (a copy
    of the whole cache per step). Layers of other kinds (sliding window, ...) stay as they are.
    True when every layer was preallocated."""
    if _DynamicLayer is object:  # an older transformers without cache layers
        return False
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is _DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            layers[i] = _PreallocatedLayer(layer, extra)
    return bool(layers) and all(type(layer) is _PreallocatedLayer for layer in layers)


try:
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # an older transformers: caches are not preallocated (see _preallocate)
    _DynamicLayer = object


class _PreallocatedLayer(_DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow: the same
    tensors, shapes and values as concatenation gives, without copying the past each step."""

    def __init__(self, layer, extra: int):
        super().__init__()
        self.device, self.is_initialized = layer.device, True
        self.length = layer.keys.shape[-2]
        self._bufs = []
        for t in (layer.keys, layer.values):
            buf = t.new_empty((*t.shape[:2], self.length + extra, t.shape[3]))
            buf[:, :, : self.length] = t
            self._bufs.append(buf)
        self._views()

    def _views(self):
        self.keys, self.values = (b[:, :, : self.length] for b in self._bufs)

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self.length + n > self._bufs[0].shape[2]:  # out of room: make as much again
            self._bufs = [torch.cat([b[:, :, : self.length], b.new_empty((*b.shape[:2], self.length + n, b.shape[3]))], 2)
                          for b in self._bufs]
        for buf, new in zip(self._bufs, (key_states, value_states)):
            buf[:, :, self.length : self.length + n] = new
        self.length += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._bufs = [b[indices] for b in self._bufs]
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._bufs = [b.repeat_interleave(repeats, dim=0) for b in self._bufs]
        self._views()


def _cache_dtype(cache) -> torch.dtype | None:
    """The dtype of the cached keys (that of the attention's queries, autocast included), if readable."""
    keys = getattr(next(iter(getattr(cache, "layers", None) or []), None), "keys", None)
    return keys.dtype if isinstance(keys, torch.Tensor) and keys.is_floating_point() else None


class _DecodeMask:
    """The attention mask of the decode steps: prompt columns (left padding) then one column per
    generated token, as views of one buffer. With ``dtype_4d`` (SDPA) it is the [N, 1, 1, L] mask
    transformers' SDPA path would build for a one-token query, already in the additive form SDPA
    turns a boolean mask into (0: attend, -inf: padding; in the queries' dtype), or None when no row
    has padding (what transformers passes then too); otherwise the 2D mask."""

    def __init__(self, attn: torch.Tensor, max_new_tokens: int, dtype_4d: torch.dtype | None):
        N, self.length = attn.shape
        self.as_4d = dtype_4d is not None
        self.buf = None
        if self.as_4d and not bool(attn.all()):
            self.buf = torch.zeros((N, self.length + max_new_tokens), dtype=dtype_4d, device=attn.device)
            self.buf[:, : self.length].masked_fill_(attn == 0, float("-inf"))
        elif not self.as_4d:
            self.buf = torch.ones((N, self.length + max_new_tokens), dtype=attn.dtype, device=attn.device)
            self.buf[:, : self.length] = attn

    def select(self, rows: torch.Tensor) -> None:
        if self.buf is not None:
            self.buf = self.buf[rows]

    def grow(self):
        """The mask for the next decode step (one more column)."""
        self.length += 1
        if self.buf is None:
            return None
        view = self.buf[:, : self.length]
        return view[:, None, None, :] if self.as_4d else view


def _concat(prompts, k, parts, pad_id) -> Completions:
    T = max(p[0].shape[1] for p in parts)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)

    return Completions(
        prompt_ids=prompts,
        num_completions=k,
        token_ids=torch.cat([pad(p[0], pad_id) for p in parts]).cpu(),
        logprobs=torch.cat([pad(p[1], 0.0) for p in parts]).cpu(),
        entropy=torch.cat([pad(p[2], 0.0) for p in parts]).cpu(),
        mask=torch.cat([pad(p[3], False) for p in parts]).cpu(),
        finish_reasons=[r for p in parts for r in p[4]],
    )


class VLLMGenerator:
    """Generation with vLLM on GPUs (``pip install vllm``; imported only when this class is built).

    ``VLLMGenerator(model_name_or_path, tokenizer, gpu_memory_utilization=0.3, **llm_kwargs)``
    starts an in-process ``vllm.LLM`` on the same weights as the policy. After every optimizer
    step the trainer calls ``sync_weights(policy)``, which streams the policy's parameters into
    the vLLM engine (``model.load_weights``), so sampling stays on-policy. vLLM returns the
    sampled token ids and their log-probs (``logprobs=0``: the sampled token's own log-prob).
    Whether those are the model's raw log-probs or those after temperature / top-p depends on
    the vLLM version and its ``logprobs_mode`` (pass ``logprobs_mode="raw_logprobs"`` where it
    exists), so check them against a re-scoring before using them in penalties. Per-step
    entropies are not available from vLLM and are returned as NaN. (``pluralign rl`` samples with
    :class:`TransformersGenerator`; this class is for Python use.)
    Prompts go in as token ids, so tokenization is identical to the transformers backend.
    """

    def __init__(self, model_name_or_path: str, tokenizer, **llm_kwargs):
        try:
            import vllm
        except ImportError as err:  # pragma: no cover - GPU-only optional dependency
            raise ImportError("VLLMGenerator needs vLLM: pip install vllm (CUDA GPUs only)") from err
        self._vllm = vllm
        llm_kwargs.setdefault("gpu_memory_utilization", 0.3)
        self.llm = vllm.LLM(model=model_name_or_path, **llm_kwargs)
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        self.end_ids = end_token_ids(tokenizer)

    def sync_weights(self, model) -> None:  # pragma: no cover - needs a GPU and vLLM
        if hasattr(model, "merge_and_unload"):  # vLLM serves plain weights, not adapters
            raise ValueError("VLLMGenerator.sync_weights: pass the policy with its LoRA adapters merged")
        weights = [(name, p.detach()) for name, p in model.state_dict().items()]
        engine = self.llm.llm_engine
        if hasattr(self.llm, "collective_rpc"):  # vLLM >= 0.7: reach every worker
            self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights))
        else:
            engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(engine, "reset_prefix_cache"):
            engine.reset_prefix_cache()

    def generate(self, prompt_ids, params: SamplingParams) -> Completions:  # pragma: no cover
        sp = self._vllm.SamplingParams(
            n=params.num_completions, max_tokens=params.max_new_tokens, logprobs=0,
            temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k else -1, seed=params.seed, stop_token_ids=self.end_ids,
        )
        prompts = [tuple(int(t) for t in p) for p in prompt_ids]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sp, use_tqdm=False)
        rows = [c for o in outs for c in o.outputs]
        T = max(len(c.token_ids) for c in rows)
        N = len(rows)
        ids = torch.full((N, T), self.pad_id, dtype=torch.long)
        logps = torch.zeros(N, T)
        mask = torch.zeros(N, T, dtype=torch.bool)
        for i, c in enumerate(rows):
            n = len(c.token_ids)
            ids[i, :n] = torch.tensor(c.token_ids)
            logps[i, :n] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)])
            mask[i, :n] = True
        reasons = ["stop" if c.finish_reason == "stop" else "length" for c in rows]
        return Completions(prompts, params.num_completions, ids, logps, torch.full((N, T), float("nan")), mask, reasons)
