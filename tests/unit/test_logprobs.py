"""Sequence log-probs: batched layouts against per-sequence computation."""

import pytest
import torch

from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedExample
from pluralign.logprobs import SequenceLogprobs, score_candidates
from pluralign.models import load_model, load_tokenizer
from tolerance import assert_close_scaled


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


def _examples(seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: torch.randint(0, 256, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    return [TokenizedExample(tuple(rand(3, 20)), tuple(tuple(rand(1, 9)) for _ in range(k)), tuple(range(k))) for k in (2, 3, 2, 4)]


def _manual(model, ex, k):
    ids = torch.tensor([list(ex.prompt_ids) + list(ex.response_ids[k])])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)
    P = len(ex.prompt_ids)
    return float(sum(lp[P - 1 + j, t] for j, t in enumerate(ex.response_ids[k])))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_batched_logprobs_equal_per_sequence(tok, impl):
    model = load_model("tiny", tok, attn_implementation=impl).eval()
    exs = _examples()
    for layout, row_tokens in [("plain", None), ("shared", None), ("shared", 60)]:
        with torch.no_grad():
            sums, counts = SequenceLogprobs(model, chunk_tokens=7)(Collator(tok.pad_token_id, layout, row_tokens)(exs))
        for b, ex in enumerate(exs):
            for k in range(4):
                if k < len(ex.response_ids):
                    assert sums[b, k].item() == pytest.approx(_manual(model, ex, k), rel=1e-5)
                    assert counts[b, k].item() == len(ex.response_ids[k])
                else:
                    assert sums[b, k].item() == 0.0 and counts[b, k].item() == 0.0


def test_shared_prefix_gradients_equal_plain(tok):
    model = load_model("tiny", tok)
    exs = _examples(1)
    grads, values = [], []
    for layout, row_tokens in [("plain", None), ("shared", None), ("shared", 80)]:
        model.zero_grad()
        sums, _ = SequenceLogprobs(model, chunk_tokens=5)(Collator(tok.pad_token_id, layout, row_tokens)(exs))
        (sums * torch.arange(1.0, 1.0 + sums.numel()).view_as(sums)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        values.append(sums.detach())
    for g, v in zip(grads[1:], values[1:]):
        assert_close_scaled(v, values[0], what="log-probs")
        assert_close_scaled(g, grads[0], what="gradients")


def test_responses_never_see_each_other(tok):
    model = load_model("tiny", tok).eval()
    a = TokenizedExample((5, 6, 7), ((10, 11, 12), (20, 21)), (0, 1))
    b = TokenizedExample((5, 6, 7), ((99, 98, 97), (20, 21)), (0, 1))
    with torch.no_grad():
        sa, _ = SequenceLogprobs(model)(Collator(tok.pad_token_id, "shared")([a]))
        sb, _ = SequenceLogprobs(model)(Collator(tok.pad_token_id, "shared")([b]))
    assert sa[0, 1].item() == pytest.approx(sb[0, 1].item(), abs=1e-6)
    assert sa[0, 0].item() != pytest.approx(sb[0, 0].item(), abs=1e-3)


def test_shared_layout_pays_the_prompt_once(tok):
    exs = _examples(2)
    plain = Collator(tok.pad_token_id, "plain")(exs)
    shared = Collator(tok.pad_token_id, "shared")(exs)
    assert plain.num_tokens == sum(ex.num_tokens_plain for ex in exs)
    assert shared.num_tokens == sum(ex.num_tokens_shared for ex in exs)
    assert shared.num_tokens < plain.num_tokens


def test_score_candidates_matches_manual(tok):
    model = load_model("tiny", tok).eval()
    scores = score_candidates(model, tok, "Q: hi\nA:", [" yes", " no thanks"])
    ex = TokenizedExample(tuple(tok("Q: hi\nA:").input_ids), (tuple(tok(" yes").input_ids) + (tok.eos_token_id,),), (0,))
    assert scores[0].item() == pytest.approx(_manual(model, ex, 0), rel=1e-5)
