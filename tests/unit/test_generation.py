"""Generation: EOS and max length, greedy = step-by-step argmax, log-probs = re-scoring,
one prefill per prompt = naive generation."""

import pytest
import torch

from pluralign.generation import (Completions, SamplingParams, TransformersGenerator, missing_eos_penalty, sample_next,
                                  warp_logits)
from pluralign.models import build_tiny_model, load_tokenizer
from tolerance import assert_close_scaled


@pytest.fixture(scope="module")
def lm():
    tok = load_tokenizer("byte")
    model = build_tiny_model(tok, seed=3).eval()
    prompts = [tok("Q: tea?\nA:", add_special_tokens=False)["input_ids"], tok("Hi", add_special_tokens=False)["input_ids"]]
    return model, tok, prompts


def _rescore(model, prompt, completion):
    """log pi(a_t | prompt, a_<t) and the argmax at each step, from one cache-free forward."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
    logp = torch.log_softmax(steps, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    return logp, steps.argmax(-1)


def test_greedy_is_stepwise_argmax_and_logprobs_match_rescoring(lm):
    model, tok, prompts = lm
    out = TransformersGenerator(model, tok).generate(prompts, SamplingParams(max_new_tokens=8, greedy=True))
    for i, completion in enumerate(out.completion_ids()):
        logp, argmax = _rescore(model, prompts[i], completion)
        assert completion == argmax.tolist()
        assert_close_scaled(out.logprobs[i, : len(completion)], logp, rel=1e-4, what="greedy log-probs")


def test_sampled_logprobs_match_rescoring(lm):
    model, tok, prompts = lm
    params = SamplingParams(max_new_tokens=6, num_completions=3, seed=0, top_k=50, top_p=0.9, temperature=0.8)
    out = TransformersGenerator(model, tok).generate(prompts, params)
    assert out.token_ids.shape[0] == 6 and out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    for i, completion in enumerate(out.completion_ids()):
        logp, _ = _rescore(model, prompts[int(out.prompt_index[i])], completion)
        assert_close_scaled(out.logprobs[i, : len(completion)], logp, rel=1e-4, what="sampled log-probs")
    assert float(out.logprobs[~out.mask].abs().sum()) == 0.0


def test_eos_stops_and_max_length_clips(lm):
    model, tok, prompts = lm
    greedy = SamplingParams(max_new_tokens=6, greedy=True)
    gen = TransformersGenerator(model, tok)
    free = gen.generate(prompts, greedy)
    assert free.finish_reasons == ["length", "length"] and free.clipped_ratio == 1.0
    assert free.lengths.tolist() == [6, 6]
    # declare the token greedy decoding emits at step 2 of prompt 0 an end token: it must stop there
    end = int(free.token_ids[0, 2])
    gen.end_ids = [end]
    stopped = gen.generate(prompts, greedy)
    first = free.token_ids[0].tolist().index(end)
    assert stopped.finish_reasons[0] == "stop"
    assert stopped.lengths[0] == first + 1 and stopped.completion_ids()[0][-1] == end
    assert (stopped.token_ids[0, first + 1 :] == tok.pad_token_id).all()
    assert stopped.completion_ids()[0] == free.completion_ids()[0][: first + 1]
    assert stopped.finish_reasons[1] == ("stop" if end in free.completion_ids()[1] else "length")
    assert stopped.clipped_ratio == (stopped.finish_reasons[1] == "length") / 2
    penalised = missing_eos_penalty(torch.tensor([1.0, 1.0]), stopped.finish_reasons, 2.0)
    assert penalised.tolist() == [1.0 if r == "stop" else -1.0 for r in stopped.finish_reasons]


@pytest.mark.parametrize("greedy", [True, False])
def test_prefill_once_equals_naive(lm, greedy):
    model, tok, prompts = lm
    params = SamplingParams(max_new_tokens=6, num_completions=3, greedy=greedy, seed=11)
    once = TransformersGenerator(model, tok, prefill_once=True).generate(prompts, params)
    naive = TransformersGenerator(model, tok, prefill_once=False).generate(prompts, params)
    assert torch.equal(once.token_ids, naive.token_ids)
    assert_close_scaled(once.logprobs, naive.logprobs, rel=1e-4, what="log-probs")
    assert once.finish_reasons == naive.finish_reasons


def test_warp_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda p: torch.isfinite(warp_logits(logits, p))[0].tolist()  # noqa: E731
    assert kept(SamplingParams(top_k=2)) == [True, True, False, False]
    assert kept(SamplingParams(top_p=0.8)) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(SamplingParams(top_p=0.81)) == [True, True, True, False]
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0)


def test_sampler_draws_the_warped_distribution():
    """Token frequencies over 40k rows match softmax(warp(logits)) within 5 standard errors, and
    a token the warp removed (top_k) or of probability 0 is never drawn."""
    n = 40_000
    logits = torch.log(torch.tensor([0.4, 0.3, 0.0, 0.2, 0.1, 0.0])).expand(n, 6).contiguous()
    params = SamplingParams(top_k=3)
    p = warp_logits(logits[:1], params).softmax(-1)[0].double()  # [0.4, 0.3, 0, 0.2, 0, 0] / 0.9
    gen = torch.Generator().manual_seed(0)
    nxt, logp, _ = sample_next(logits, params, gen, n, None)
    freq = torch.bincount(nxt, minlength=6).double() / n
    assert freq[p == 0].sum() == 0
    se = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 1e-12).all()), (freq.tolist(), p.tolist())
    # log pi is the model's own (unwarped) log-prob of the drawn token
    assert_close_scaled(logp, torch.log_softmax(logits, -1).gather(-1, nxt[:, None]).squeeze(-1), rel=1e-6,
                        what="sampled log-probs")


def test_sampler_rows_draw_the_same_after_others_leave():
    """A row's draw depends on its own uniform only: sampling rows [1, 3] of a 4-row batch gives
    what those rows get when all 4 are sampled with the same generator state."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1))
    params = SamplingParams()
    everyone, _, _ = sample_next(logits, params, torch.Generator().manual_seed(7), 4, None)
    rows = torch.tensor([1, 3])
    some, _, _ = sample_next(logits[rows], params, torch.Generator().manual_seed(7), 4, rows)
    assert some.tolist() == everyone[rows].tolist()


def test_completions_texts(lm):
    _, tok, _ = lm
    ids = torch.tensor([[ord("o"), ord("k"), tok.eos_token_id]])
    c = Completions([(1,)], 1, ids, torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), ["stop"])
    assert c.texts(tok) == ["ok"]
