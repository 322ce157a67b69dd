"""The MMRA regret matrix on LMs (sampled and exact on a world) and its LP / Hedge weights."""

import numpy as np
import pytest
import torch
from mixture_runs import build_em_run

from pluralign.generation import SamplingParams
from pluralign.lab.mmra import payoff_matrix, regret_matrix
from pluralign.logprobs import score_candidates
from pluralign.mixture import MixturePolicy, mmra_weights, regret_from_log_ratios, sampled_log_ratios, world_log_ratios
from pluralign.rl.scoring import encode_prompt
from pluralign.worlds import renormalise, tiny_world

PROMPTS = ["Q: Tea or coffee?\nA:", "Q: Cat or dog?\nA:", "Pick:", "Say:"]


@pytest.fixture(scope="module")
def full3(tmp_path_factory):
    """Three full-copy type policies (perturbed copies of one tiny base, far enough apart for O(1) regrets)."""
    run = build_em_run(tmp_path_factory.mktemp("em3"), kind="full", n_types=3, weights=(0.5, 0.3, 0.2),
                       noise=0.15)
    return MixturePolicy.from_em_run(run)


@pytest.fixture(scope="module")
def sampled(full3):
    ids = [encode_prompt(full3.tokenizer, p) for p in PROMPTS]
    return sampled_log_ratios(full3, ids, SamplingParams(max_new_tokens=8, num_completions=4, seed=0))


def test_regret_kinds_by_hand():
    L = np.array([[1.0, 0.25], [-0.5, 2.0]])
    np.testing.assert_array_equal(regret_from_log_ratios(L, "reward"), [[0.0, 0.75], [2.5, 0.0]])
    np.testing.assert_array_equal(regret_from_log_ratios(L, "kl"), [[0.0, 1.75], [1.5, 0.0]])
    with pytest.raises(ValueError, match="regret kind"):
        regret_from_log_ratios(L, "both")


def test_lp_and_hedge_agree_on_the_lm_regret_matrix_and_mmra_beats_every_type(sampled):
    for kind, steps in (("reward", 100_000), ("kl", 2_000)):  # the paper's T for the agreement check
        regret = sampled.regret(kind)
        assert np.abs(regret).max() > 0.5  # a real game, not a matrix of noise around zero
        out = mmra_weights(regret, hedge_steps=steps)
        worst = out["worst_case_regret"]
        scale = max(abs(v) for v in worst.values())
        if kind == "reward":
            np.testing.assert_allclose(out["weights"]["hedge"], out["weights"]["lp"], atol=2e-3)
            assert worst["mmra_hedge"] == pytest.approx(worst["mmra_lp"], abs=2e-3 * scale)
        assert worst["mmra_lp"] == pytest.approx(out["lp_value"], abs=1e-9 * scale)
        for name in ("type_0", "type_1", "type_2", "uniform"):
            assert worst["mmra_lp"] <= worst[name] + 1e-12 * scale


def test_importance_weights_follow_the_two_type_closed_form(sampled):
    """Two types with regrets a = R[0, 1] > 0, b = R[1, 0] > 0: the LP equalises c_0 a w_1 = c_1 b w_0."""
    regret = sampled.regret("kl")[:2, :2]
    a, b = regret[0, 1], regret[1, 0]
    assert a > 0 and b > 0
    for c in ([1.0, 1.0], [1.0, 4.0], [8.0, 1.0]):
        out = mmra_weights(regret, importance=c, hedge_steps=20_000)
        w0 = c[0] * a / (c[0] * a + c[1] * b)
        np.testing.assert_allclose(out["weights"]["lp"], [w0, 1 - w0], rtol=1e-7)
        np.testing.assert_allclose(out["payoff"], payoff_matrix(regret, c))


def test_sampled_estimate_matches_exact_enumeration_of_one_token_completions(full3):
    """With one new token the completion distribution is the next-token softmax, so L is an exact
    sum over the vocabulary; the Monte Carlo L must lie within 4.5 standard errors of it."""
    ids = [encode_prompt(full3.tokenizer, p) for p in PROMPTS[:2]]
    est = sampled_log_ratios(full3, ids, SamplingParams(max_new_tokens=1, num_completions=100, seed=3))

    def next_token_logp(module):
        with torch.no_grad():
            return torch.stack([module(input_ids=torch.tensor([p])).logits[0, -1].double().log_softmax(-1) for p in ids])

    types = [next_token_logp(m) for _, m in full3.type_policies()]
    with full3.reference() as ref:
        base = next_token_logp(ref)
    exact = np.array([[float((types[j].exp() * (types[i] - base)).sum(-1).mean()) for j in range(3)] for i in range(3)])
    assert np.abs(exact).max() > 5 * est.stderr.max()  # the check has power
    assert np.all(np.abs(est.L - exact) <= 4.5 * est.stderr), (est.L, exact, est.stderr)


def test_world_regret_of_lm_policies_equals_the_labs_exact_one(full3):
    """On a world the LM regret matrix is exact: the lab's regret_matrix on the stacked renormalised
    candidate distributions [K, X, Y] (computed here from independent scoring) gives the same numbers."""
    world = tiny_world()
    got = world_log_ratios(full3, world)
    assert got.method == "world" and got.stderr is None
    pols = np.stack([[renormalise(score_candidates(m, full3.tokenizer, p, c).double().numpy())
                      for p, c in zip(world.prompts, world.candidates)] for _, m in full3.type_policies()])
    with full3.reference() as ref:
        base = np.stack([renormalise(score_candidates(ref, full3.tokenizer, p, c).double().numpy())
                         for p, c in zip(world.prompts, world.candidates)])
    want = regret_matrix(pols, base)
    # float64 arithmetic on the same float32 log-probs: only the order of the sums differs
    np.testing.assert_allclose(got.regret("reward"), want, rtol=0, atol=1e-12 * np.abs(want).max())
    kl = np.array([[np.mean([np.sum(pols[j, x] * np.log(pols[j, x] / pols[i, x])) for x in range(2)])
                    for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(got.regret("kl"), kl, rtol=0, atol=1e-12 * np.abs(kl).max())
