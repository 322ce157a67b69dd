"""Rollout scoring in the shared-prefix layout equals the generator's own log-probs."""

import torch

from pluralign.data.collate import Collator
from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import build_tiny_model, load_tokenizer
from pluralign.rl.scoring import rollout_batch, token_logprobs
from tolerance import assert_close_scaled


def test_shared_prefix_token_logprobs_equal_generation_logprobs():
    tok = load_tokenizer("byte")
    model = build_tiny_model(tok, seed=1).eval()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("Q: one?\nA:", "Two")]
    out = TransformersGenerator(model, tok).generate(prompts, SamplingParams(max_new_tokens=7, num_completions=3, seed=2))
    width = out.token_ids.shape[1]
    for layout in ("shared", "plain"):
        batch = rollout_batch(out, Collator(tok.pad_token_id, layout))
        with torch.no_grad():
            lp = token_logprobs(SequenceLogprobs(model, prefix_attention=False), batch, width)
        assert_close_scaled(lp, out.logprobs, rel=1e-4, what=f"{layout} per-token log-probs")
        assert float(lp[~out.mask].abs().sum()) == 0.0
