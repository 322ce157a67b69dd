"""Every common decoder architecture: batched log-probs and gradients equal per-sequence computation
through the model's own forward, in the plain layout, the shared layout with the dense mask, and
the shared layout with the prefix-attention kernel -- or the kernel is refused with a reason.

Tiny random-weight models are built from each family's config, with the features that break naive
batching switched on: sliding windows shorter than the sequences (Mistral, Qwen2 mixed layers,
Gemma2/3), attention and final-logit soft-capping (Gemma2/3), ``logits_scaling`` (Granite), learned
absolute positions (GPT-2, OPT), partial rotary (GPT-NeoX). ``python tests/unit/test_architectures.py``
prints the table: architecture, paths chosen, max scaled error.
"""

import pytest
import torch
import transformers as tf

from pluralign.data.collate import Collator
from pluralign.data.tokenize import TokenizedDataset, TokenizedExample
from pluralign.logprobs import SequenceLogprobs
from pluralign.train.data import choose_layout
from logprob_reference import flat_grads, per_sequence
from tolerance import assert_close_scaled, max_scaled_diff

VOCAB, PAD, WINDOW = 300, 299, 8
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
GEMMA = dict(SMALL, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
             layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0)

ARCHITECTURES = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)),
    "qwen2 (sliding layer)": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(
        **SMALL, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, head_dim=16)),
    "mistral (sliding window)": lambda: tf.MistralForCausalLM(tf.MistralConfig(**SMALL, sliding_window=WINDOW)),
    "gemma2 (window, soft-caps)": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**GEMMA, attn_logit_softcapping=50.0)),
    "gemma3 (window, soft-cap)": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**GEMMA)),
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**SMALL)),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                                                  num_attention_heads=4, word_embed_proj_dim=64,
                                                  max_position_embeddings=256, pad_token_id=0)),
    "granite (logits_scaling)": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(
        **SMALL, logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2)),
    "gpt-neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.25, max_position_embeddings=256)),
}
# Shared-layout modes: SequenceLogprobs' prefix_attention (False: dense mask, True: kernel, None: auto).
MODES = {"plain": ("plain", None), "dense": ("shared", False), "kernel": ("shared", True), "auto": ("shared", None)}


def build(name):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    impl = "sdpa" if model._supports_sdpa else "eager"  # Gemma2 soft-caps attention, so no SDPA
    model.config._attn_implementation = impl
    return model.eval()  # dropout off: OPT and GPT-2 configs enable it


def examples():
    g = torch.Generator().manual_seed(5)

    def rand(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return tuple(torch.randint(1, VOCAB - 1, (n,), generator=g).tolist())

    # Prompts and responses longer than the window, so a mask that ignores it changes the result.
    return [TokenizedExample(rand(6, 20), tuple(rand(2, 14) for _ in range(k)), tuple(range(k))) for k in (2, 3, 2)]


def batched(model, exs, weights, mode):
    layout, prefix_attention = MODES[mode]
    scorer = SequenceLogprobs(model, chunk_tokens=11, prefix_attention=prefix_attention)
    model.zero_grad()
    sums, _ = scorer(Collator(PAD, layout, 40 if layout == "shared" else None)(exs))
    (sums * weights).sum().backward()
    return scorer, sums.detach(), flat_grads(model)


def run(name):
    """{mode: (scorer, (log-probs, expected), (gradients, expected))}, or (None, reason) where the
    kernel is refused."""
    model = build(name)
    exs = examples()
    weights = torch.arange(1.0, 1.0 + 3 * len(exs)).view(len(exs), 3) / 10
    weights[0, 2] = weights[2, 2] = 0.0  # no third response there
    want_values, want_grads = per_sequence(model, exs, weights)
    results = {}
    for mode in MODES:
        try:
            scorer, values, grads = batched(model, exs, weights, mode)
        except ValueError as refused:
            if mode != "kernel":
                raise
            results[mode] = (None, str(refused))
            continue
        results[mode] = (scorer, (values, want_values), (grads, want_grads))
    return results


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_logprobs_and_gradients_equal_per_sequence(name):
    for mode, (scorer, *result) in run(name).items():
        if scorer is None:  # the kernel refuses this model, and says why
            assert "cannot serve this model" in result[0]
            continue
        (values, want_values), (grads, want_grads) = result
        assert_close_scaled(values, want_values, what=f"{name} {mode} log-probs")
        assert_close_scaled(grads, want_grads, what=f"{name} {mode} gradients")


def test_logit_postprocessing_is_detected_by_the_start_up_check():
    """The fast path (lm_head on picked hidden states) is used only where it equals the model's
    logits: Granite divides by logits_scaling and Gemma soft-caps, so they take the full forward."""
    fast = {name: SequenceLogprobs(build(name)).fast_head for name in ARCHITECTURES}
    slow = {name for name, ok in fast.items() if not ok}
    assert slow == {"granite (logits_scaling)", "gemma2 (window, soft-caps)", "gemma3 (window, soft-cap)"}


def test_kernel_refusals_name_the_reason():
    reasons = {name: SequenceLogprobs(build(name)).attention_path for name in
               ("mistral (sliding window)", "qwen2 (sliding layer)", "gemma2 (window, soft-caps)", "llama")}
    assert "sliding_attention" in reasons["mistral (sliding window)"]
    assert "sliding_attention" in reasons["qwen2 (sliding layer)"]
    # transformers releases differ: SDPA is refused for Gemma2 (eager) or allowed, then soft-capping is the reason
    assert any(w in reasons["gemma2 (window, soft-caps)"] for w in ("eager", "softcapping"))
    assert reasons["llama"].startswith("prefix-shared attention kernel")


def _dataset(exs):
    return TokenizedDataset(examples=list(exs))


@pytest.mark.parametrize("name", ["mistral (sliding window)", "granite (logits_scaling)"])
def test_auto_layout_keeps_shared_where_it_is_exact(name):
    scorer = SequenceLogprobs(build(name))
    assert choose_layout("auto", scorer, _dataset(examples()), PAD, 2, "cpu") == "shared"


def test_auto_layout_falls_back_when_shared_is_wrong(monkeypatch):
    """A model whose shared-layout log-probs differ from plain ones (here: a mask builder that
    forgets the sliding window) gets the plain layout, checked on the longest examples."""
    import pluralign.logprobs as lp

    def windowless(config, batch, dtype):
        return lp.shared_prefix_mask(batch.doc_ids, batch.part_ids, dtype)

    monkeypatch.setattr(lp, "dense_shared_mask", windowless)
    scorer = SequenceLogprobs(build("mistral (sliding window)"))
    short = [TokenizedExample((1, 2, 3), ((4, 5), (6,)), (0, 1))] * 6  # shorter than the window
    data = _dataset(short + examples())
    assert choose_layout("auto", scorer, data, PAD, 2, "cpu") == "plain"


if __name__ == "__main__":
    print(f"{'architecture':28s} {'logits':7s} {'attention path (auto)':40s} " + " ".join(f"{m:>9s}" for m in MODES))
    for arch in ARCHITECTURES:
        results = run(arch)
        errors = [f"{max_scaled_diff(*r[1]):.1e}" if r[0] is not None else "refused" for r in results.values()]
        auto = results["auto"][0]
        print(f"{arch:28s} {'fast' if auto.fast_head else 'full':7s} {auto.attention_path[:40]:40s} "
              + " ".join(f"{e:>9s}" for e in errors))
