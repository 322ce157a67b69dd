"""Reward-model losses (Bradley-Terry, Plackett-Luce, centring) against hand values."""

import math

import pytest
import torch

from pluralign.objectives.reward import bradley_terry_loss, plackett_luce_reward_loss, reward_centering, reward_stats


def test_bradley_terry_hand_values():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    loss = bradley_terry_loss(rc, rr)
    assert float(loss[0]) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert float(loss[1]) == pytest.approx(math.log(2), rel=1e-6)
    # margin shifts the difference: d = 1 - 1 = 0 -> ln 2
    assert float(bradley_terry_loss(rc, rr, margin=torch.tensor([1.0, 0.0]))[0]) == pytest.approx(math.log(2), rel=1e-6)
    # soft label p = 0.25 at d = 1: -0.25 log s(1) - 0.75 log s(-1)
    p = torch.tensor([0.25, 1.0])
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    soft = bradley_terry_loss(rc, rr, preference=p)
    assert float(soft[0]) == pytest.approx(-0.25 * math.log(s(1)) - 0.75 * math.log(s(-1)), rel=1e-6)
    assert float(soft[1]) == pytest.approx(math.log(2), rel=1e-6)


def test_plackett_luce_reward_hand_values_and_pairs_equal_bt():
    r = torch.tensor([[2.0, 0.0, 1.0]])
    ranking = torch.tensor([[0, 2, 1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss = plackett_luce_reward_loss(r, ranking, torch.tensor([3]), mask)
    e = math.exp
    expected = -(2 - math.log(e(2) + e(0) + e(1))) - (1 - math.log(e(1) + e(0)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    pair = torch.tensor([[0.3, 1.1]])
    pl = plackett_luce_reward_loss(pair, torch.tensor([[1, 0]]), torch.tensor([2]), torch.ones(1, 2, dtype=torch.bool))
    assert float(pl) == pytest.approx(float(bradley_terry_loss(pair[:, 1], pair[:, 0])), rel=1e-6)


def test_centering_and_stats():
    r = torch.tensor([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    assert float(reward_centering(r, mask)) == pytest.approx(9.0)
    stats = reward_stats(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0, 1, 2]]), torch.tensor([3]),
                         torch.ones(1, 3, dtype=torch.bool))
    assert float(stats["rewards/accuracies"]) == 1.0
    assert float(stats["rewards/ranking_accuracy"]) == pytest.approx(2 / 3)  # (1 > 2) is wrong
    assert float(stats["rewards/margins"]) == pytest.approx(2.0 - 0.5)
