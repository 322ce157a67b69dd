"""Per-token RLHF penalties against hand values and the released PM-RLHF code's reward."""

import math

import pytest
import torch

from pluralign.objectives.penalties import (
    compute_penalty,
    conditional_pm_direct_weight,
    conditional_pm_penalty,
    direct_weight,
    kl_estimate,
    kl_penalty,
    pm_penalty,
    sequence_penalty,
)
from pluralign.rl.estimators import token_rewards

LOGP = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.6, 0.3]]))
REF = torch.log(torch.tensor([[0.25, 0.4, 0.9], [0.05, 0.6, 0.6]]))
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_kl_estimators_hand_values():
    # token (0.5 vs 0.25): d = ln 2
    d = math.log(2)
    k = {e: float(kl_estimate(LOGP, REF, e)[0, 0]) for e in ("k1", "k2", "k3")}
    assert k["k1"] == pytest.approx(d, rel=1e-6)
    assert k["k2"] == pytest.approx(d * d / 2, rel=1e-6)
    assert k["k3"] == pytest.approx(0.5 - 1 + d, rel=1e-6)  # pi_ref/pi - 1 - log(pi_ref/pi)
    # equal probabilities: every estimator is 0
    for e in ("k1", "k2", "k3"):
        assert float(kl_estimate(LOGP, REF, e)[0, 2]) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(LOGP, REF, "k4")


def test_k1_and_k3_are_unbiased_for_kl_under_exact_expectation():
    pi, ref = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    kl = float((pi * (pi / ref).log()).sum())
    for e in ("k1", "k3"):
        assert float((pi * kl_estimate(pi.log(), ref.log(), e)).sum()) == pytest.approx(kl, rel=1e-6)


def test_kl_and_pm_penalties_mask_and_sum():
    beta = 0.1
    c = kl_penalty(LOGP, REF, beta, "k1", MASK)
    assert float(c[1, 2]) == 0.0
    seq = sequence_penalty(c, MASK)
    # row 1: ln(0.1/0.05) + ln(0.6/0.6); its third token (0.3 vs 0.6) is masked out
    assert float(seq[1]) == pytest.approx(beta * math.log(2), rel=1e-6)
    assert float(seq[0]) == pytest.approx(beta * (math.log(2) + math.log(0.5)), abs=1e-7)
    pm = pm_penalty(LOGP, 0.5, MASK)
    assert float(sequence_penalty(pm, MASK)[1]) == pytest.approx(0.5 * math.log(0.1 * 0.6), rel=1e-6)


def test_conditional_pm_alpha_zero_is_kl_on_every_token():
    cpm = conditional_pm_penalty(LOGP, REF, alpha=0.0, beta_pm=0.3, beta_kl=0.2, mask=MASK)
    torch.testing.assert_close(cpm, kl_penalty(LOGP, REF, 0.2, "k1", MASK), rtol=0, atol=0)


def test_conditional_pm_branches_hand_values():
    # alpha = 0.3: PM branch where pi_ref > 0.3 (0.4, 0.9, 0.6, 0.6), KL branch at 0.25 and 0.05
    c = conditional_pm_penalty(LOGP, REF, alpha=0.3, beta_pm=0.5, beta_kl=0.1, mask=MASK)
    expected = torch.tensor([
        [0.1 * math.log(0.5 / 0.25), 0.5 * math.log(0.2), 0.5 * math.log(0.9)],
        [0.1 * math.log(0.1 / 0.05), 0.5 * math.log(0.6), 0.0],
    ])
    torch.testing.assert_close(c, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="alpha"):
        conditional_pm_penalty(LOGP, REF, alpha=1.5, beta_pm=1, beta_kl=1)


def test_direct_weight_is_the_coefficient_gap_on_the_pm_branch():
    # alpha = 0.3: PM branch at pi_ref 0.4, 0.9, 0.6 (and the masked 0.6), KL branch at 0.25, 0.05
    w = conditional_pm_direct_weight(REF, alpha=0.3, beta_pm=0.5, beta_kl=0.1, mask=MASK)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.4, 0.4], [0.0, 0.4, 0.0]]), rtol=1e-6, atol=1e-7)
    args = {"alpha": 0.3, "beta_pm": 0.5, "beta_kl": 0.1}
    torch.testing.assert_close(direct_weight("conditional_pm", REF, MASK, args), w, rtol=0, atol=0)
    # constant coefficients: nothing to add (the released code, plain KL, PM)
    assert direct_weight("conditional_pm", REF, MASK, {**args, "beta_kl": 0.5}) is None
    assert direct_weight("conditional_pm", REF, MASK, {**args, "alpha": 0.0}) is None
    assert direct_weight("kl", REF, MASK, {"beta": 0.1, "estimator": "k1"}) is None
    assert direct_weight("pm", REF, MASK, {"beta": 0.1}) is None


def _released_code_rewards(logp, ref, score, alpha, kl_ctl, mask, clip=5.0):
    """The released PM-RLHF trainer's compute_rewards, written out loop by loop."""
    out = torch.zeros_like(logp)
    for i in range(logp.shape[0]):
        last = int(mask[i].nonzero().max())
        for t in range(last + 1):
            if alpha > 0 and float(ref[i, t]) > math.log(alpha):
                pen = float(logp[i, t])
            else:
                pen = float(logp[i, t] - ref[i, t])
            out[i, t] = -kl_ctl * pen
        out[i, last] += min(max(float(score[i]), -clip), clip)
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5])
def test_equal_coefficients_reproduce_released_code_reward(alpha):
    score = torch.tensor([7.5, -0.8])  # the first is clipped to 5
    c = compute_penalty("conditional_pm", LOGP, REF, MASK, {"alpha": alpha, "beta_pm": 0.1, "beta_kl": 0.1})
    ours = token_rewards(score, c, MASK, clip=5.0)
    torch.testing.assert_close(ours, _released_code_rewards(LOGP, REF, score, alpha, 0.1, MASK), rtol=1e-6, atol=1e-7)


def test_penalty_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown penalty 'entropy'"):
        compute_penalty("entropy", LOGP, REF, MASK, {})
    with pytest.raises(ValueError, match="penalty 'kl'"):
        compute_penalty("kl", LOGP, REF, MASK, {"bta": 0.1})
