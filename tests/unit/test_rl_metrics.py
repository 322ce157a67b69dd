"""PM divergence on completion pairs: hand values and agreement with the lab's finite-set form."""

import math

import numpy as np
import pytest
import torch

from pluralign.lab import pm_divergence
from pluralign.rl.metrics import pairwise_pm_divergence, rollout_pm_divergence


def test_hand_values():
    # policy indifferent (p_pi = 1/2), reward prefers y_1 with p_r = sigma(1)
    kl, p_pi, p_r = pairwise_pm_divergence(torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([1.0]),
                                           torch.tensor([0.0]))
    p = 1 / (1 + math.exp(-1))
    assert float(p_pi) == 0.5 and float(p_r) == pytest.approx(p)
    assert float(kl) == pytest.approx(p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)), rel=1e-6)
    # policy log-ratio equal to the reward gap: PM, divergence 0
    kl0, _, _ = pairwise_pm_divergence(torch.tensor([-1.0]), torch.tensor([-3.5]), torch.tensor([2.5]), torch.tensor([0.0]))
    assert float(kl0) == pytest.approx(0.0, abs=1e-7)


def test_matches_lab_pm_divergence_on_a_finite_set():
    r = np.array([1.0, -0.3, 0.4, 0.0])
    pi = np.array([0.5, 0.1, 0.3, 0.1])
    P = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    a, b = (torch.tensor([p[n] for p in pairs]) for n in (0, 1))
    lp, rt = torch.tensor(np.log(pi)), torch.tensor(r)
    kl, _, _ = pairwise_pm_divergence(lp[a], lp[b], rt[a], rt[b])
    assert float(kl.mean()) == pytest.approx(float(pm_divergence(P, pi)), rel=1e-9)


def test_rollout_pairs_consecutive_completions():
    seq = torch.tensor([[0.0, -1.0, -2.0, 5.0, 9.0]])
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0, 9.0]])
    kl, p_pi, _ = rollout_pm_divergence(seq, r)
    assert kl.shape == (2,)  # (0, 1) and (2, 3); the fifth completion has no partner
    assert float(p_pi[1]) == pytest.approx(1 / (1 + math.exp(7.0)), rel=1e-6)
