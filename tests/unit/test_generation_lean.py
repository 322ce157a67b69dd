"""The lean decode step (the model's weights called directly) gives the logits of the model's own
forward, step by step, for Llama (multi-head), Qwen2 (grouped-query, biased projections) and
Mistral; generate() through it draws the same tokens as through the forward, with and without
padding (additive mask or none) and with finished rows leaving the batch; and it declines models
and set-ups it does not reproduce."""

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pluralign.attention import PREFIX_ATTENTION, enable_prefix_attention
from pluralign.generation import (SamplingParams, TransformersGenerator, _DecodeMask, _ModelCall, _cache_dtype,
                                 _preallocate)
from pluralign.llama_decode import LlamaDecodeStep
from pluralign.models import build_tiny_model, load_tokenizer
from tolerance import assert_close_scaled

END_IDS = list(range(200, 216))  # scattered stops in a random model (as in test_generation_fast)
SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


def _seeded(cls, config, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).eval()


def _models(tok):
    vocab = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    qwen = Qwen2Config(**SIZES, **vocab, num_key_value_heads=2, attn_implementation="sdpa")
    mistral = MistralConfig(**SIZES, **vocab, num_key_value_heads=2, sliding_window=None, attn_implementation="sdpa")
    return {"llama": build_tiny_model(tok, seed=5).eval(), "qwen2": _seeded(Qwen2ForCausalLM, qwen, 1),
            "mistral": _seeded(MistralForCausalLM, mistral, 2)}


@pytest.fixture(scope="module")
def models(tok):
    return _models(tok)


def _prompts(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@torch.inference_mode()
def test_step_logits_equal_forward(tok, models, family, padded):
    """Twin caches from one prefill; each step feeds the same tokens to the forward and to the lean step."""
    model = models[family]
    prompts = _prompts(tok, ["Q: why?\nA:", "Hi", "Tell me."] if padded else ["abc", "xyz"])
    gen = TransformersGenerator(model, tok)
    call = _ModelCall(model)
    assert call.mask_4d
    caches, logits = [], None
    for _ in range(2):
        logits, cache, attn, pos = gen._prefill(call, prompts, torch.device("cpu"))
        _preallocate(cache, 8)
        caches.append(cache)
    step = LlamaDecodeStep.build(model, caches[1])
    assert step is not None
    masks = [_DecodeMask(attn, 8, _cache_dtype(caches[0])) for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    for t in range(8):
        nxt = torch.randint(0, len(tok), (len(prompts),), generator=g)
        pos = pos + 1
        want = call(model, nxt[:, None], masks[0].grow(), pos, caches[0])
        got = step(nxt, pos, masks[1].grow())
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert_close_scaled(got, want, rel=1e-6, what=f"{family} step {t} logits")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "llama-prefix"])
def test_generate_same_tokens(tok, models, family, monkeypatch):
    """llama-prefix: a policy switched to the shared-prefix attention kernel (as training leaves it),
    whose calls without prefix segments are SDPA's."""
    if family == "llama-prefix":
        model = build_tiny_model(tok, seed=5).eval()
        assert enable_prefix_attention(model)[0] and model.config._attn_implementation == PREFIX_ATTENTION
    else:
        model = models[family]
    steps = []
    real_call = LlamaDecodeStep.__call__
    monkeypatch.setattr(LlamaDecodeStep, "__call__", lambda self, *a: steps.append(1) or real_call(self, *a))
    prompts = _prompts(tok, ["Q: why is the sky blue?\nA:", "Hi", "Tell me a story."])
    for params in (SamplingParams(max_new_tokens=20, num_completions=3, seed=7),
                   SamplingParams(max_new_tokens=12, num_completions=2, seed=1, temperature=0.7, top_p=0.9)):
        outs = []
        for lean in (True, False):
            gen = TransformersGenerator(model, tok, lean=lean)
            gen.end_ids = END_IDS
            before = len(steps)
            outs.append(gen.generate(prompts, params))
            assert (len(steps) > before) == lean  # the lean step decoded, or the forward did
        a, b = outs
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.mask, b.mask)
        assert a.finish_reasons == b.finish_reasons
        assert_close_scaled(a.logprobs, b.logprobs, rel=1e-5, what="log-probs")
        assert_close_scaled(a.entropy, b.entropy, rel=1e-5, what="entropies")
    assert 0 < a.finish_reasons.count("stop") < len(a.finish_reasons)  # rows left the batch mid-way


def test_declines_what_it_does_not_reproduce(tok, models):
    model = models["llama"]
    gen = TransformersGenerator(model, tok)
    call = _ModelCall(model)

    def cache():
        _, c, _, _ = gen._prefill(call, _prompts(tok, ["Hi"]), torch.device("cpu"))
        assert _preallocate(c, 4)  # the step writes into preallocated layers only
        return c

    assert LlamaDecodeStep.build(model, cache()) is not None
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *a: None)  # a hook the step would skip
    try:
        assert LlamaDecodeStep.build(model, cache()) is None
    finally:
        handle.remove()
    proj = model.model.layers[1].self_attn.q_proj

    class Wrapped(torch.nn.Linear):  # e.g. an adapter's layer in place of the plain projection
        pass

    model.model.layers[1].self_attn.q_proj = Wrapped(proj.in_features, proj.out_features, bias=False)
    try:
        assert LlamaDecodeStep.build(model, cache()) is None
    finally:
        model.model.layers[1].self_attn.q_proj = proj
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the forward would compute in bf16
        assert LlamaDecodeStep.build(model, cache()) is None
    model.train()
    try:
        assert LlamaDecodeStep.build(model, cache()) is None
    finally:
        model.eval()
    model.config._attn_implementation = "eager"
    try:
        assert LlamaDecodeStep.build(model, cache()) is None
    finally:
        model.config._attn_implementation = "sdpa"
