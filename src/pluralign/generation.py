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
times). :class:`VLLMGenerator` is the adapter for GPU serving with vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

FINISH_REASONS = ("stop", "length")


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
    ``batch_size`` bounds the prompts decoded together.
    """

    def __init__(self, model, tokenizer, *, prefill_once: bool = True, batch_size: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.end_ids = end_token_ids(tokenizer, model)
        self.prefill_once = prefill_once
        self.batch_size = batch_size

    def sync_weights(self, model) -> None:
        self.model = model

    @property
    def _cache_kwarg(self) -> str:
        # transformers renamed the forward's cache argument (past_key_values -> cache); a peft wrapper
        # passes keyword arguments through, so ask the model under it
        import inspect

        from pluralign.models import unwrap_peft

        forward = unwrap_peft(self.model).forward
        return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> Completions:
        prompts = [tuple(int(t) for t in p) for p in prompt_ids]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: expected a non-empty list of non-empty token-id prompts")
        device = next(self.model.parameters()).device
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=device).manual_seed(params.seed)
        step = self.batch_size or len(prompts)
        parts = [self._generate_batch(prompts[i : i + step], params, device, gen) for i in range(0, len(prompts), step)]
        return _concat(prompts, params.num_completions, parts, self.pad_id)

    def _generate_batch(self, prompts, params, device, gen):
        k = params.num_completions
        was_training = self.model.training
        self.model.eval()
        try:
            if self.prefill_once:
                logits, cache, attn, pos = self._prefill(prompts, device)
                cache.batch_repeat_interleave(k)
                logits, attn, pos = (t.repeat_interleave(k, 0) for t in (logits, attn, pos))
            else:
                logits, cache, attn, pos = self._prefill([p for p in prompts for _ in range(k)], device)
            return self._decode(logits, cache, attn, pos, params, gen)
        finally:
            self.model.train(was_training)

    def _prefill(self, prompts, device):
        from transformers import DynamicCache

        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((len(prompts), P), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at column P - 1
            ids[i, P - len(p):] = torch.tensor(p, device=device)
            attn[i, P - len(p):] = 1
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self._cache_kwarg: cache})
        return out.logits[:, -1].float(), cache, attn, pos[:, -1:]  # the cache is updated in place

    def _decode(self, logits, cache, attn, pos, params, gen):
        N, device = logits.shape[0], logits.device
        end_ids = torch.tensor(self.end_ids, device=device)
        tokens, logps, ents, masks = [], [], [], []
        alive = torch.ones(N, dtype=torch.bool, device=device)
        stopped = torch.zeros(N, dtype=torch.bool, device=device)
        for t in range(params.max_new_tokens):
            logp_all = torch.log_softmax(logits, -1)
            if params.greedy:
                nxt = logits.argmax(-1)
            else:
                probs = warp_logits(logits, params).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, self.pad_id))
            tokens.append(nxt)
            logps.append(torch.where(alive, logp_all.gather(-1, nxt[:, None]).squeeze(-1), 0.0))
            ents.append(torch.where(alive, -(logp_all.exp() * logp_all).nan_to_num().sum(-1), 0.0))
            masks.append(alive.clone())
            ended = alive & torch.isin(nxt, end_ids)
            stopped |= ended
            alive &= ~ended
            if not bool(alive.any()) or t == params.max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((N, 1), dtype=attn.dtype, device=device)], -1)
            pos = pos + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos, use_cache=True,
                             **{self._cache_kwarg: cache})
            logits = out.logits[:, -1].float()
        reasons = ["stop" if s else "length" for s in stopped.tolist()]
        return torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(ents, 1), torch.stack(masks, 1), reasons


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
