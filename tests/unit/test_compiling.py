"""``model.compile``: the compiled decode step and scoring forward give the eager results up to float
rounding (fused kernels reduce in another order), follow weights updated in place, and an RL run
with it equals one without; a failed compile falls back to the eager call with a warning, and an
error of the call itself still reaches the caller.

The real compiles here take tens of seconds on 2 CPU cores (each graph once per process)."""

import logging

import pytest
import torch

from pluralign import compiling
from pluralign.compiling import CompiledOrEager
from pluralign.data.collate import Collator
from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import build_tiny_model, load_tokenizer
from pluralign.rl.scoring import rollout_examples, token_logprobs
from tolerance import FP32_REL, assert_close_scaled


def test_a_failed_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    attempts = []

    def broken_compile(fn, dynamic):
        def call(*args):
            attempts.append(args)
            raise RuntimeError("inductor: no working C++ compiler\n(details)")
        return call

    monkeypatch.setattr(compiling.torch, "compile", broken_compile)
    wrapped = CompiledOrEager(lambda x: x * 2, "the test function")
    with caplog.at_level(logging.WARNING, logger="pluralign.compiling"):
        assert wrapped(3) == 6
    assert wrapped.failed == "RuntimeError: inductor: no working C++ compiler"
    assert "compiling the test function failed" in caplog.text
    assert wrapped(4) == 8 and len(attempts) == 1  # eager from then on, no second attempt


def test_an_error_of_the_call_itself_propagates(monkeypatch):
    def eager(x):
        raise ValueError(f"bad input {x}")

    monkeypatch.setattr(compiling.torch, "compile", lambda fn, dynamic: fn)
    wrapped = CompiledOrEager(eager, "the test function")
    with pytest.raises(ValueError, match="bad input 1"):
        wrapped(1)
    assert wrapped.failed is None


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


PROMPTS = ["Q: why is the sky blue?\nA:", "Hi", "Tell me a story."]


def _generate(gen, tok, seed=0):
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return gen.generate(prompts, SamplingParams(max_new_tokens=12, num_completions=3, seed=seed))


def test_compiled_decode_and_scoring_equal_eager_and_follow_weight_updates(tok):
    model = build_tiny_model(tok, seed=3)
    eager_gen, compiled_gen = TransformersGenerator(model, tok), TransformersGenerator(model, tok, compile=True)
    eager_scorer, compiled_scorer = SequenceLogprobs(model), SequenceLogprobs(model, compile=True)
    collator = Collator(tok.pad_token_id, "shared")
    for round_ in range(2):  # the second round after an in-place update of every weight (an optimizer step)
        want, got = _generate(eager_gen, tok, round_), _generate(compiled_gen, tok, round_)
        assert compiled_gen.decode_step.failed is None
        assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.mask, want.mask)
        assert_close_scaled(got.logprobs, want.logprobs, what="sampling-time log-probs")
        assert_close_scaled(got.entropy, want.entropy, what="entropies")

        batch = collator(rollout_examples(want))
        width = want.mask.shape[1]
        grads = []
        for scorer in (eager_scorer, compiled_scorer):
            model.zero_grad(set_to_none=True)
            logp = token_logprobs(scorer, batch, width)
            (logp * torch.linspace(0.5, 1.5, logp.numel()).view_as(logp)).sum().backward()
            grads.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
        (lp_e, g_e), (lp_c, g_c) = grads
        assert_close_scaled(lp_c, lp_e, what="scored log-probs")
        for name, a, b in zip([n for n, _ in model.named_parameters()], g_c, g_e):
            assert_close_scaled(a, b, rel=10 * FP32_REL, what=f"gradient of {name}")
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.mul_(1.0 + 0.02 * (i % 3)).add_(0.003)
    assert compiled_gen.decode_step.failed is None


def test_an_rl_run_with_compile_equals_one_without(tmp_path, caplog):
    from test_rl_loop import _rl_cfg

    from pluralign.rl.training import train_rl

    # Adam's eps at 1: updates linear in the gradient (lr * g / (|g| + 1)), so the rounding-level
    # gradient differences of fused kernels stay rounding-level in the weights (with eps 1e-8 a
    # gradient near 0 has an arbitrary sign and moves its weight by lr either way)
    with caplog.at_level(logging.WARNING, logger="pluralign.compiling"):
        runs = [train_rl(_rl_cfg(tmp_path / name, "train.max_steps=2", "optim.eps=1.0", f"model.compile={flag}"))
                for name, flag in (("eager", "false"), ("compiled", "true"))]
    assert "model.compile" not in caplog.text  # compiled, not fallen back to eager
    (eager, compiled) = [r.history for r in runs]
    assert [r["step"] for r in compiled] == [1, 2]
    for x, y in zip(eager, compiled):
        for key in ("reward", "kl", "loss", "completions/mean_length"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    for (name, a), b in zip(runs[0].model.named_parameters(), runs[1].model.parameters()):
        assert_close_scaled(b.detach(), a.detach(), rel=10 * FP32_REL, what=name)
