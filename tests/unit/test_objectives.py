"""Objectives against hand-derived values."""

import math

import pytest
import torch

from pluralign.objectives import (
    PreferenceLogps,
    compute_objective,
    dpo_loss,
    ipo_loss,
    plackett_luce_loss,
    rpo_loss,
    rpo_mean_loss,
)


def _pairs(pc, pr, rc, rr, n=None):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    B = len(pc)
    return PreferenceLogps(
        policy=torch.stack([t(pc), t(pr)], 1),
        reference=torch.stack([t(rc), t(rr)], 1),
        num_tokens=torch.tensor(n if n is not None else [[3.0, 5.0]] * B, dtype=torch.float64),
        ranking=torch.tensor([[0, 1]] * B),
        num_ranked=torch.full((B,), 2),
        response_mask=torch.ones(B, 2, dtype=torch.bool),
    )


def test_dpo_is_ln2_when_policy_equals_reference():
    x = torch.tensor([-3.0, -10.0, -0.5])
    y = torch.tensor([-4.0, -2.0, -7.0])
    loss = dpo_loss(x, y, x, y, beta=0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))
    assert torch.allclose(dpo_loss(x, y, x, y, beta=0.1, label_smoothing=0.2), torch.full((3,), math.log(2.0)))


def test_dpo_hand_value():
    # h = (-1 - -2) - (-3 - -2.5) = 1.5 ; beta h = 0.3 ; loss = log(1 + e^-0.3)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.2)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), abs=1e-7)
    smoothed = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.2, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.3)) + 0.1 * math.log1p(math.exp(0.3))
    assert smoothed.item() == pytest.approx(expected, abs=1e-7)


def test_ipo_hand_values_and_conventions():
    # paper convention, summed: h = 1.5, tau = 0.5 -> (1.5 - 1)^2 = 0.25
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5], n=[[2.0, 4.0]])
    losses, _ = compute_objective("ipo", x, beta=0.5)
    assert losses.item() == pytest.approx(0.25)
    # TRL convention, per-token means: h = (-0.5 + 1) - (-0.75 + 0.625) = 0.625 -> (0.625 - 1)^2
    losses, _ = compute_objective("ipo_trl", x, beta=0.5)
    assert losses.item() == pytest.approx((0.625 - 1.0) ** 2)
    assert ipo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), tau=0.25).item() == pytest.approx(4.0)


def test_rpo_eta_zero_is_dpo_and_adds_scaled_nll():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-4.0, -9.0], [-6.0, -8.0], [-5.0, -9.5], [-5.5, -7.0]))
    dpo = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert torch.equal(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=0.0), dpo)
    # cumulative: + eta * beta * (-sum log pi(chosen))
    assert torch.allclose(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=2.0), dpo + 2.0 * 0.1 * torch.tensor([4.0, 9.0]))
    # token mean: + coef * (-sum / n)
    n = torch.tensor([2.0, 3.0])
    assert torch.allclose(rpo_mean_loss(pc, pr, rc, rr, n, beta=0.1, nll_coef=0.5), dpo + 0.5 * torch.tensor([2.0, 3.0]))


def test_rpo_sft_gradient_only_touches_chosen():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-6.0], requires_grad=True)
    rc, rr = torch.tensor([-4.0]), torch.tensor([-6.0])
    g_rpo = torch.autograd.grad(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=3.0).sum(), (pc, pr))
    g_dpo = torch.autograd.grad(dpo_loss(pc, pr, rc, rr, beta=0.1).sum(), (pc, pr))
    assert g_rpo[0].item() == pytest.approx(g_dpo[0].item() - 0.3)  # d/dpc of -eta*beta*pc
    assert g_rpo[1].item() == pytest.approx(g_dpo[1].item())


def test_plackett_luce_with_two_responses_equals_dpo():
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(5, 2, generator=g) * 3, torch.randn(5, 2, generator=g) * 3
    ranking = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [1, -1]])  # top-1 of 2 is a full ranking
    num_ranked = torch.tensor([2, 2, 2, 2, 1])
    pl = plackett_luce_loss(pol, ref, ranking, num_ranked, torch.ones(5, 2, dtype=torch.bool), beta=0.3)
    w, l = ranking[:, 0], torch.tensor([1, 0, 1, 0, 0])
    take = lambda t, i: t.gather(1, i[:, None]).squeeze(1)  # noqa: E731
    dpo = dpo_loss(take(pol, w), take(pol, l), take(ref, w), take(ref, l), beta=0.3)
    assert torch.allclose(pl, dpo, atol=1e-6)


def test_plackett_luce_hand_value_full_partial_and_padding():
    r = torch.tensor([[1.0, 2.0, 0.5]])  # beta * (pol - ref) with ref = 0, beta = 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    # ranking 1 > 0 > 2: -[2 - lse(1,2,.5)] - [1 - lse(1,.5)]
    lse = lambda *v: math.log(sum(math.exp(a) for a in v))  # noqa: E731
    full = -(2 - lse(1, 2, 0.5)) - (1 - lse(1, 0.5))
    got = plackett_luce_loss(r, torch.zeros_like(r), torch.tensor([[1, 0, 2]]), torch.tensor([3]), mask, beta=1.0)
    assert got.item() == pytest.approx(full, abs=1e-6)
    top1 = -(2 - lse(1, 2, 0.5))
    got = plackett_luce_loss(r, torch.zeros_like(r), torch.tensor([[1, -1, -1]]), torch.tensor([1]), mask, beta=1.0)
    assert got.item() == pytest.approx(top1, abs=1e-6)
    # a padded 4th response is ignored
    r4 = torch.tensor([[1.0, 2.0, 0.5, 9.0]])
    mask4 = torch.tensor([[True, True, True, False]])
    got = plackett_luce_loss(r4, torch.zeros_like(r4), torch.tensor([[1, 0, 2, -1]]), torch.tensor([3]), mask4, beta=1.0)
    assert got.item() == pytest.approx(full, abs=1e-6)


def test_weights_scale_losses_linearly_in_the_reduction():
    x = _pairs([-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.5, -1.5])
    losses, _ = compute_objective("dpo", x, beta=0.2)
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert torch.allclose((w * losses), torch.stack([2 * losses[0], 0.5 * losses[1]]))


def test_stats_use_trl_names_and_values():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5])
    _, stats = compute_objective("dpo", x, beta=0.2)
    assert stats["rewards/chosen"].item() == pytest.approx(0.2)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.1)
    assert stats["rewards/margins"].item() == pytest.approx(0.3)
    assert stats["rewards/accuracies"].item() == 1.0
    assert stats["rewards/ranking_accuracy"].item() == 1.0
    assert stats["logps/chosen"].item() == -1.0 and stats["logps/rejected"].item() == -3.0


def test_ranking_accuracy_counts_implied_pairs():
    pol = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    x = PreferenceLogps(pol, torch.zeros_like(pol), torch.ones_like(pol), torch.tensor([[0, 2, 1, 3]]), torch.tensor([4]), torch.ones(1, 4, dtype=torch.bool))
    _, stats = compute_objective("plackett_luce", x, beta=1.0)
    # 6 implied pairs: (0>2) ok, (0>1) ok, (0>3) ok, (2>1) wrong, (2>3) ok, (1>3) ok
    assert stats["rewards/ranking_accuracy"].item() == pytest.approx(5 / 6)


def test_unknown_objective_and_argument_errors_name_them():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5])
    with pytest.raises(ValueError, match="unknown objective 'dpoo'"):
        compute_objective("dpoo", x, beta=0.1)
    with pytest.raises(ValueError, match="etta"):
        compute_objective("rpo", x, beta=0.1, args={"etta": 1.0})
    with pytest.raises(ValueError, match="eta"):
        compute_objective("rpo", x, beta=0.1)
