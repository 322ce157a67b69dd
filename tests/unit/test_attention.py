"""Prefix-shared attention kernel: equal to the dense mask and to the plain layout, values and gradients."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pluralign.attention import PREFIX_ATTENTION, prefix_segments
from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedExample
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import enable_activation_checkpointing, load_model, load_tokenizer
from tolerance import assert_close_scaled


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


def _examples(seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return tuple(torch.randint(0, 256, (n,), generator=g).tolist())

    return [TokenizedExample(rand(3, 30), tuple(rand(1, 12) for _ in range(k)), tuple(range(k))) for k in (2, 3, 4, 2, 1)]


def _gqa_model(vocab):
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def _values_and_grads(model, batch, prefix_attention):
    model.zero_grad()
    sums, _ = SequenceLogprobs(model, chunk_tokens=9, prefix_attention=prefix_attention)(batch)
    (sums * torch.arange(1.0, 1.0 + sums.numel()).view_as(sums)).sum().backward()
    return sums.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("which", ["tiny", "gqa"])
@pytest.mark.parametrize("row_tokens", [None, 70])
def test_kernel_equals_dense_mask_and_plain_layout(tok, which, row_tokens):
    model = load_model("tiny", tok) if which == "tiny" else _gqa_model(len(tok))
    exs = _examples(1)
    plain = _values_and_grads(model, Collator(tok.pad_token_id, "plain")(exs), False)
    shared = Collator(tok.pad_token_id, "shared", row_tokens)(exs)
    dense = _values_and_grads(model, shared, False)
    kernel = _values_and_grads(model, shared, True)
    assert model.config._attn_implementation == PREFIX_ATTENTION
    for values, grads in (dense, kernel):
        assert_close_scaled(values, plain[0], what="log-probs")
        assert_close_scaled(grads, plain[1], what="gradients")


def test_kernel_under_gradient_checkpointing(tok):
    model = load_model("tiny", tok)
    batch = Collator(tok.pad_token_id, "shared", 70)(_examples(2))
    expected = _values_and_grads(model, batch, True)
    enable_activation_checkpointing(model)
    model.train()
    got = _values_and_grads(model, batch, True)
    assert_close_scaled(got[0], expected[0], what="log-probs")
    assert_close_scaled(got[1], expected[1], what="gradients")


def test_segments_of_a_packed_batch(tok):
    a = TokenizedExample((1, 2, 3), ((4, 5), (6,)), (0, 1))
    b = TokenizedExample((7, 8), ((9,), (10, 11)), (1, 0))
    c = TokenizedExample((13,), ((14,), (15,)), (0, 1))
    batch = Collator(tok.pad_token_id, "shared", 12)([a, b, c])  # rows: [a b] and [c + padding]
    seg = prefix_segments(batch.doc_ids, batch.part_ids)
    assert batch.input_ids.shape == (2, 11)
    assert seg.bounds == ((0, 3, 5, 6, 8, 9, 11), (0, 1, 2, 3, 11))
    assert seg.groups == (((0, (1, 2)), (3, (4, 5))), ((0, (1, 2)),))
    assert seg.gaps == ((), (3,))


def test_calls_without_segments_are_plain_sdpa(tok):
    model = load_model("tiny", tok).eval()
    reference = load_model("tiny", tok).eval()  # same seed, same weights, untouched 'sdpa'
    SequenceLogprobs(model)  # switches the model to the kernel
    assert model.config._attn_implementation == PREFIX_ATTENTION
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        want = reference(ids, attention_mask=mask).logits
    assert torch.equal(got, want)


def test_unsupported_model_keeps_the_dense_mask(tok):
    model = load_model("tiny", tok, attn_implementation="eager")
    scorer = SequenceLogprobs(model)
    assert not scorer.prefix_attention and "eager" in scorer.attention_path
    with pytest.raises(ValueError, match="eager"):
        SequenceLogprobs(model, prefix_attention=True)


def test_saved_config_does_not_name_the_kernel(tok, tmp_path):
    model = load_model("tiny", tok)
    SequenceLogprobs(model)
    model.save_pretrained(tmp_path)
    assert PREFIX_ATTENTION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model.eval()(ids).logits, atol=1e-6)


def test_cost_model_chooses_the_kernel_for_long_segments_only(tok):
    def batch(prompt_len, response_len, n=4):
        exs = [TokenizedExample(tuple(range(1, prompt_len + 1)), ((5,) * response_len, (6,) * response_len), (0, 1))] * n
        return Collator(tok.pad_token_id, "shared")(exs)

    short, long = batch(20, 30), batch(256, 150)
    assert not prefix_segments(short.doc_ids, short.part_ids).kernel_pays()
    assert prefix_segments(long.doc_ids, long.part_ids).kernel_pays()
    # rows * L^2 = 4 * 556^2 dense products against 4 * (256^2 + 2 * 150 * 406) + 12 calls' overhead
    assert not prefix_segments(long.doc_ids, long.part_ids).kernel_pays(call_overhead=10**6)

    model = load_model("tiny", tok)
    scorer = SequenceLogprobs(model)
    with torch.no_grad():
        scorer(short)
        scorer(long)
    assert (scorer.kernel_batches, scorer.dense_batches) == (1, 1)
    forced = SequenceLogprobs(model, prefix_attention=True)
    with torch.no_grad():
        forced(short)
    assert (forced.kernel_batches, forced.dense_batches) == (1, 0)
