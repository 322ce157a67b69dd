"""The optimised decode loop (prepared mask views, one-call sampler, outputs written in place,
finished rows leaving the batch) equals a straightforward one kept here: same tokens, masks and
finish reasons, log-probs and entropies within float tolerance, for sampling (with and without
top-k / top-p / temperature) and greedy decoding, padded prompts, SDPA and eager attention."""

import pytest
import torch
from transformers import DynamicCache

from pluralign.generation import SamplingParams, TransformersGenerator, _ModelCall, warp_logits
from pluralign.models import build_tiny_model, load_tokenizer
from tolerance import assert_close_scaled

# a random tiny model spreads its mass over all bytes: declaring 16 of them end tokens
# makes completions stop at scattered steps, so rows leave the batch several times per generate()
END_IDS = list(range(200, 216))


@pytest.fixture(scope="module")
def lm():
    tok = load_tokenizer("byte")
    model = build_tiny_model(tok, seed=5).eval()
    texts = ["Q: why is the sky blue?\nA:", "Hi", "Tell me a story."]
    return model, tok, [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@torch.no_grad()
def reference_generate(model, pad_id, end_ids, prompts, params):
    """k copies of each prompt, left-padded; per step: the 2D mask grown by concatenation,
    inversion sampling on softmax(warp(logits)) (one float64 uniform per row: the number of
    tokens whose cumulative probability is <= u * total), finished rows fed padding and kept in
    the batch."""
    rows = [list(p) for p in prompts for _ in range(params.num_completions)]
    N, P = len(rows), max(len(p) for p in rows)
    ids = torch.full((N, P), pad_id)
    attn = torch.zeros((N, P), dtype=torch.long)
    for i, p in enumerate(rows):
        ids[i, P - len(p):] = torch.tensor(p)
        attn[i, P - len(p):] = 1
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    gen = torch.Generator().manual_seed(params.seed)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
    pos = pos[:, -1:]
    alive = torch.ones(N, dtype=torch.bool)
    tokens, logps, ents, masks = [], [], [], []
    for t in range(params.max_new_tokens):
        logp_all = torch.log_softmax(logits, -1)
        if params.greedy:
            nxt = logits.argmax(-1)
        else:
            u = torch.rand((N, 1), dtype=torch.float64, generator=gen)
            cdf = warp_logits(logits, params).softmax(-1).double().cumsum(-1)
            nxt = (cdf <= u * cdf[:, -1:]).sum(-1)
        nxt = torch.where(alive, nxt, pad_id)
        tokens.append(nxt)
        logps.append(torch.where(alive, logp_all.gather(-1, nxt[:, None]).squeeze(-1), 0.0))
        ents.append(torch.where(alive, -(logp_all.exp() * logp_all).nan_to_num().sum(-1), 0.0))
        masks.append(alive.clone())
        alive = alive & ~torch.isin(nxt, torch.tensor(end_ids))
        if not alive.any() or t == params.max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones((N, 1), dtype=attn.dtype)], -1)
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos, cache=cache,
                       use_cache=True).logits[:, -1]
    mask = torch.stack(masks, 1)
    stopped = (torch.isin(torch.stack(tokens, 1), torch.tensor(end_ids)) & mask).any(-1)
    return torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(ents, 1), mask, stopped


def _check(out, ref):
    tokens, logps, ents, mask, stopped = ref
    assert torch.equal(out.token_ids, tokens)
    assert torch.equal(out.mask, mask)
    assert out.finish_reasons == ["stop" if s else "length" for s in stopped.tolist()]
    assert_close_scaled(out.logprobs, logps, rel=1e-5, what="log-probs")
    assert_close_scaled(out.entropy, ents, rel=1e-5, what="entropies")


@pytest.fixture
def compactions(monkeypatch):
    """Counts the times finished rows leave a batch (its cache keeps only the live rows)."""
    seen = []
    select = DynamicCache.batch_select_indices

    def spy(self, indices):
        seen.append(len(indices))
        return select(self, indices)

    monkeypatch.setattr(DynamicCache, "batch_select_indices", spy)
    return seen


SAMPLE = SamplingParams(max_new_tokens=24, num_completions=4, seed=7)
WARPED = SamplingParams(max_new_tokens=16, num_completions=3, seed=3, temperature=0.7, top_k=40, top_p=0.9)
GREEDY = SamplingParams(max_new_tokens=8, num_completions=2, seed=0, greedy=True)


@pytest.mark.parametrize("params, attn_impl", [(SAMPLE, "sdpa"), (SAMPLE, "eager"), (WARPED, "sdpa"), (GREEDY, "sdpa")],
                         ids=["sample-sdpa", "sample-eager", "warped-sdpa", "greedy-sdpa"])
def test_fast_decode_equals_reference(lm, params, attn_impl, compactions):
    model, tok, prompts = lm
    model.config._attn_implementation = attn_impl
    try:
        assert _ModelCall(model).mask_4d == (attn_impl == "sdpa")  # the 4D-mask path is what SDPA runs
        ref = reference_generate(model, tok.pad_token_id, END_IDS, prompts, params)
        if not params.greedy:
            assert 0 < int(ref[4].sum()) < ref[4].numel()  # some completions stop, some are clipped
        for compact_at in (0.25, None):  # finished rows leave the batch, or stay in it
            gen = TransformersGenerator(model, tok, compact_at=compact_at)
            gen.end_ids = END_IDS
            before = len(compactions)
            _check(gen.generate(prompts, params), ref)
            if not params.greedy:
                assert (len(compactions) > before) == (compact_at is not None)
        # the model's own end token (never drawn here): every completion runs to max_new_tokens
        gen = TransformersGenerator(model, tok)
        _check(gen.generate(prompts, params), reference_generate(model, tok.pad_token_id, gen.end_ids, prompts, params))
    finally:
        model.config._attn_implementation = "sdpa"


def test_unpadded_prompts_and_batches(lm):
    """Prompts of one length (no padding: SDPA decode steps get no mask) and decoding in batches."""
    model, tok, prompts = lm
    params = SamplingParams(max_new_tokens=10, num_completions=3, seed=2)
    gen = TransformersGenerator(model, tok)
    gen.end_ids = END_IDS
    same = [prompts[1], [ord("H"), ord("o")]]
    _check(gen.generate(same, params), reference_generate(model, tok.pad_token_id, END_IDS, same, params))
    # batch_size=1: the first batch draws from the seed's stream first, as the first prompt alone does
    alone = gen.generate(prompts[:1], params)
    gen.batch_size = 1
    batched = gen.generate(prompts, params)
    n = alone.token_ids.shape[1]
    assert batched.token_ids.shape[0] == 9 and batched.token_ids.shape[1] >= n
    assert torch.equal(batched.token_ids[:3, :n], alone.token_ids)
    assert torch.equal(batched.mask[:3, :n], alone.mask) and not batched.mask[:3, n:].any()
    with pytest.raises(ValueError, match="compact_at"):
        TransformersGenerator(model, tok, compact_at=0.0)


def test_preallocated_cache_layer_equals_concatenation():
    """Keys and values written into the preallocated buffers equal a DynamicLayer's concatenation,
    also past the room made and after rows are selected."""
    from transformers.cache_utils import DynamicLayer

    from pluralign.generation import _PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    new = lambda n: (torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 5, generator=g))  # noqa: E731
    plain = DynamicLayer()
    plain.update(*new(6))
    grown = _PreallocatedLayer(plain, extra=2)
    for n in (1, 1, 3):  # the last update needs more room than was made
        k, v = new(n)
        want, got = plain.update(k, v), grown.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(want, got)) and grown.get_seq_length() == plain.get_seq_length()
    rows = torch.tensor([2, 0])
    plain.batch_select_indices(rows)
    grown.batch_select_indices(rows)
    k, v = new(1)
    k, v = k[:2], v[:2]
    assert all(torch.equal(a, b) for a, b in zip(plain.update(k, v), grown.update(k, v)))
