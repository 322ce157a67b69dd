"""Advantage estimators, GAE and PPO losses against hand values."""

import pytest
import torch

from pluralign.rl.estimators import (
    gae,
    group_normalized_advantages,
    last_token_index,
    policy_gradient_loss,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    token_rewards,
    with_direct_term,
)


def test_rloo_hand_values():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # A_0 = 1 - (2+3+6)/3 = -8/3, A_3 = 6 - 2 = 4
    torch.testing.assert_close(rloo_advantages(r), torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0]]))
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.ones(3, 1))


def test_per_token_advantages_and_the_direct_term():
    logp = torch.tensor([[-1.0, -2.0, -5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    adv = with_direct_term(torch.tensor([2.0]), torch.tensor([[0.0, 0.5, 0.5]]), mask)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 1.5, 0.0]]))  # A - w at each token, 0 off the mask
    loss = policy_gradient_loss(logp, adv, mask)
    assert float(loss.detach()) == pytest.approx(2.0 * 1.0 + 1.5 * 2.0)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -1.5, 0.0]]))
    assert with_direct_term(torch.tensor([2.0]), None, mask).shape == (1,)  # no direct term: unchanged


def test_the_direct_term_makes_the_estimator_the_exact_gradient_of_conditional_pm():
    """One state, pi = softmax(theta), J = sum_a pi_a (r_a - c_a) with the conditional-PM penalty
    c_a (beta_pm != beta_kl). The score-function estimator taken in exact expectation over
    a ~ pi (each action weighted by pi_a, a state baseline subtracted) equals grad J only with the
    direct term -E[w grad log pi]."""
    from pluralign.objectives.penalties import compute_penalty, direct_weight, sequence_penalty

    theta = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.1, 0.5, 0.3, 0.1], dtype=torch.float64).log()[:, None]
    r = torch.tensor([1.0, 0.2, -0.5, 0.0], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.bool)
    args = {"alpha": 0.2, "beta_pm": 1.0, "beta_kl": 0.3}
    logp = torch.log_softmax(theta, -1)[:, None]  # action a as a one-token response
    pi = logp.detach().exp()[:, 0]
    objective = logp.exp()[:, 0] @ (r - sequence_penalty(compute_penalty("conditional_pm", logp, ref, mask, args), mask))
    exact = torch.autograd.grad(objective, theta, retain_graph=True)[0]
    shaped = r - sequence_penalty(compute_penalty("conditional_pm", logp.detach(), ref, mask, args), mask)
    adv = shaped - pi @ shaped
    w = direct_weight("conditional_pm", ref, mask, args)
    assert w is not None
    estimates = {}
    for name, weight in (("with", w), ("without", None)):
        loss = pi @ policy_gradient_loss(logp, with_direct_term(adv, weight, mask), mask)
        estimates[name] = -torch.autograd.grad(loss, theta, retain_graph=True)[0]
    torch.testing.assert_close(estimates["with"], exact, rtol=1e-10, atol=1e-12)
    assert float((estimates["without"] - exact).abs().max()) > 0.05  # the detached penalty alone is biased


def test_group_normalized_hand_values():
    r = torch.tensor([[1.0, 3.0]])
    std = 2 ** 0.5  # Bessel: sqrt(((1-2)^2 + (3-2)^2) / 1)
    torch.testing.assert_close(group_normalized_advantages(r, eps=0.0), torch.tensor([[-1 / std, 1 / std]]))
    torch.testing.assert_close(group_normalized_advantages(r, scale=False), torch.tensor([[-1.0, 1.0]]))


def test_policy_gradient_loss_and_gradient():
    logp = torch.tensor([[-1.0, -2.0, -5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = policy_gradient_loss(logp, torch.tensor([2.0]), mask)
    assert float(loss.detach()) == pytest.approx(6.0)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -2.0, 0.0]]))


def test_token_rewards_clip_at_last_token():
    pen = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = token_rewards(torch.tensor([9.0, -1.0]), pen, mask, clip=5.0)
    torch.testing.assert_close(out, torch.tensor([[-0.1, -0.2 + 5.0, 0.0], [-0.5, -0.5, -1.5]]))
    assert last_token_index(mask).tolist() == [1, 2]


def test_gae_hand_values():
    r = torch.tensor([[0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.2, 9.0]])
    mask = torch.tensor([[True, True, False]])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.5)
    # delta_1 = 1 + 0 - 0.2 = 0.8 (V after the last token is 0); delta_0 = 0 + 0.2 - 0.5 = -0.3
    # A_1 = 0.8, A_0 = -0.3 + 0.5 * 0.8 = 0.1
    torch.testing.assert_close(adv, torch.tensor([[0.1, 0.8, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.6, 1.0, 0.0]]))
    # lambda = 1, gamma = 1: returns are the reward-to-go
    _, ret1 = gae(r, v, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret1, torch.tensor([[1.0, 1.0, 0.0]]))


def test_ppo_policy_loss_clipping_hand_values():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    # A > 0 at ratio 1.5: min(1.5, 1.2) * A -> loss -1.2; A < 0 at ratio 0.5: max(-0.5 A..., ) -> clip 0.8
    adv = torch.tensor([[1.0, -1.0]])
    loss = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2, rel=1e-6)
    # inside the trust region the surrogate is -A * ratio
    near = torch.log(torch.tensor([[1.1, 0.9]]))
    assert float(ppo_policy_loss(near, old, adv, mask)) == pytest.approx((-1.1 + 0.9) / 2, rel=1e-6)


def test_ppo_value_loss_hand_values():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.1]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24; token 1: 0.5 * 0.01
    assert float(ppo_value_loss(v, old, ret, mask, clip=0.2)) == pytest.approx((1.62 + 0.005) / 2, rel=1e-6)


def test_ppo_statistics_hand_values():
    from pluralign.rl.estimators import ppo_statistics

    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.tensor([[True, True, True]])
    # token 0: ratio 1.5 > 1.2 with A > 0 -> clipped; token 1: ratio 0.5 < 0.8 with A < 0 -> clipped; token 2 inside
    values, old_v, ret = torch.tensor([[1.0, 0.1, 0.0]]), torch.zeros(1, 3), torch.tensor([[2.0, 0.0, 0.0]])
    s = ppo_statistics(logp, old, adv, values, old_v, ret, mask, clip=0.2, clip_value=0.2)
    assert float(s["policy/clipfrac_avg"]) == pytest.approx(2 / 3)
    want_kl = 0.5 * (torch.log(torch.tensor([1.5, 0.5, 1.1])) ** 2).mean()
    assert float(s["policy/approxkl_avg"]) == pytest.approx(float(want_kl), rel=1e-6)
    # value token 0: clipped 0.2 is farther from 2 than 1.0 -> counted; token 1: 0.1 inside the clip; token 2 equal
    assert float(s["val/clipfrac_avg"]) == pytest.approx(1 / 3)
