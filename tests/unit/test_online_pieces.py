"""Online loop pieces: the geometric reference, the samplers' proportions, labels, the monitor."""

import numpy as np
import pytest
import torch

from pluralign.lab.dynamics import contraction_bound, cycle_instability
from pluralign.online.monitor import CYCLE, PreferenceCounts, cyclic_component, round_metrics, stability
from pluralign.online.problem import MatrixLabeler, OnlineProblem, draw_labels
from pluralign.online.reference import geometric_reference
from pluralign.online.samplers import (FROM_INITIAL, FROM_POLICY, InstanceSampler, MixtureSampler, SamplingContext,
                                       UniformSampler)
from tolerance import assert_close_scaled


def _log_normalise(z):
    return z - torch.logsumexp(z, -1, keepdim=True)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_geometric_reference_is_the_normalised_geometric_mixture(alpha):
    gen = torch.Generator().manual_seed(0)
    pi_t = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1)
    pi_ref = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1)
    # Sequence log-probs of a model are unnormalised over a candidate set: add a per-prompt offset.
    off_t, off_r = torch.randn(4, 1, generator=gen, dtype=torch.float64), torch.randn(4, 1, generator=gen, dtype=torch.float64)
    got = geometric_reference(pi_t.log() + off_t, pi_ref.log() + off_r, alpha)
    mix = pi_t**alpha * pi_ref ** (1 - alpha)  # the definition, in probability space
    expected = (mix / mix.sum(-1, keepdim=True)).log()
    assert_close_scaled(_log_normalise(got), expected, rel=1e-12)
    # pairwise differences (all a pairwise or listwise loss reads) equal those of the normalised reference
    assert_close_scaled(got[:, :, None] - got[:, None, :], expected[:, :, None] - expected[:, None, :], rel=1e-12)


def test_geometric_reference_ends_do_not_mix_minus_infinity():
    a, b = torch.tensor([0.0, -float("inf")]), torch.tensor([-1.0, -2.0])
    assert torch.equal(geometric_reference(a, b, 0.0), b)
    assert torch.equal(geometric_reference(b, a, 1.0), b)
    with pytest.raises(ValueError, match="alpha"):
        geometric_reference(a, b, 1.5)


def _ctx():
    return SamplingContext(pi_t=[np.array([0.7, 0.2, 0.1])], pi_0=[np.array([0.1, 0.3, 0.6])],
                           p_hat=[0.5 + 0.3 * CYCLE])


def test_mixture_sampler_draws_each_source_in_proportion():
    """n = 60000 draws, lambda = 0.3 (fixed seed). Bounds are 5 standard deviations: the policy
    fraction within 5 sqrt(lambda (1 - lambda) / n) = 0.0094 of lambda, and within each source
    every candidate's frequency within 5 sqrt(p (1 - p) / n_source) of that source's probability."""
    lam, n = 0.3, 60000
    idx, src = MixtureSampler(lam).draw(0, n, _ctx(), np.random.default_rng(0))
    frac = np.mean(src == FROM_POLICY)
    assert abs(frac - lam) < 5 * np.sqrt(lam * (1 - lam) / n)
    assert np.all((src == FROM_POLICY) | (src == FROM_INITIAL))
    for code, p in ((FROM_POLICY, _ctx().pi_t[0]), (FROM_INITIAL, _ctx().pi_0[0])):
        chosen = idx[src == code]
        freq = np.bincount(chosen, minlength=3) / chosen.size
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / chosen.size))
    mu = MixtureSampler(lam).distribution(0, _ctx())
    freq = np.bincount(idx, minlength=3) / n
    assert np.all(np.abs(freq - mu) < 5 * np.sqrt(mu * (1 - mu) / n))


@pytest.mark.parametrize("lam, code", [(0.0, FROM_INITIAL), (1.0, FROM_POLICY)])
def test_mixture_ends_use_one_source(lam, code):
    _, src = MixtureSampler(lam).draw(0, 500, _ctx(), np.random.default_rng(1))
    assert np.all(src == code)


def test_uniform_and_instance_samplers():
    n = 30000
    idx, _ = UniformSampler().draw(0, n, _ctx(), np.random.default_rng(2))
    assert np.all(np.abs(np.bincount(idx, minlength=3) / n - 1 / 3) < 5 * np.sqrt(2 / 9 / n))
    rule = lambda P, pi0: np.array([1.0, 0.0, 0.0]) if P[0, 1] > 0.5 else np.array([0.0, 0.0, 1.0])  # noqa: E731
    sampler = InstanceSampler(rule, floor=0.1)
    assert_close_scaled(sampler.distribution(0, _ctx()), np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]), rel=1e-12)
    idx, _ = sampler.draw(0, n, _ctx(), np.random.default_rng(3))
    mu = sampler.distribution(0, _ctx())
    assert np.all(np.abs(np.bincount(idx, minlength=3) / n - mu) < 5 * np.sqrt(mu * (1 - mu) / n))
    with pytest.raises(ValueError, match="prompt 0"):
        InstanceSampler(lambda P, pi0: np.array([1.0, -1.0, 0.0]), 0.0).distribution(0, _ctx())


def test_labels_follow_the_preference_matrix_and_counts_estimate_it():
    P = 0.5 + 0.3 * CYCLE
    labeler = MatrixLabeler(OnlineProblem(["p"], [["a", "b", "c"]], lambda x: P))
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 3, size=(40000, 2))
    ranked, tied = draw_labels(labeler, 0, groups, rng)
    assert tied == 0 and np.all(np.sort(ranked, 1) == np.sort(groups, 1))
    counts = PreferenceCounts([3])
    counts.add(0, ranked)
    p_hat = counts.p_hat(0)
    n_pair = 40000 * 2 / 9  # comparisons per unordered pair
    assert np.all(np.abs(p_hat - P) < 5 * np.sqrt(0.25 / n_pair))
    assert_close_scaled(p_hat + p_hat.T, np.ones((3, 3)), rel=1e-12)
    # lists of 3: ranked by wins, every group a permutation of its draws
    ranked3, _ = draw_labels(labeler, 0, rng.integers(0, 3, size=(50, 3)), rng)
    assert ranked3.shape == (50, 3)


def test_bad_preference_matrix_is_named():
    labeler = MatrixLabeler(OnlineProblem(["p"], [["a", "b"]], lambda x: np.array([[0.5, 0.9], [0.9, 0.5]])))
    with pytest.raises(ValueError, match="prompt 0.*P\\[i, j\\] \\+ P\\[j, i\\] = 1"):
        labeler.matrix(0)


def test_stability_criteria_are_the_labs():
    a, alpha, beta, lam = 0.3, 0.5, 6.0, 1.0
    P = 0.5 + a * CYCLE
    assert cyclic_component(P) == pytest.approx(a, rel=1e-12)
    s = stability(P, alpha, beta, lam)
    assert s["cycle_instability"] == pytest.approx(cycle_instability(a, alpha, beta, lam), rel=1e-12)
    assert s["cycle_instability"] == pytest.approx(0.25 + 0.09 * 36 / 3, rel=1e-12)  # 1.33: unstable (PAPERS §5.6)
    assert s["contraction_bound"] == pytest.approx(contraction_bound(P, alpha, beta, lam), rel=1e-12)
    transitive = np.array([[0.5, 0.7, 0.9], [0.3, 0.5, 0.7], [0.1, 0.3, 0.5]])
    assert "cycle_instability" not in stability(transitive, alpha, beta, lam)


def test_round_metrics_flag_oscillation_collapse_and_instability():
    counts = PreferenceCounts([3])
    counts.add(0, np.array([[0, 1]] * 8 + [[1, 2]] * 8 + [[2, 0]] * 8 + [[1, 0]] * 2 + [[2, 1]] * 2 + [[0, 2]] * 2))
    rot = [np.roll([0.8, 0.15, 0.05], t) for t in range(6)]
    row, warnings = round_metrics(5, [[p] for p in rot], [counts.p_hat(0)], counts.labelled, alpha=0.5, beta=8.0, lam=1.0, window=5,
                                  collapse_entropy=0.05, oscillation_threshold=0.01)
    assert row["online/oscillating_prompts"] == 1 and row["online/cyclic_prompts"] == 1
    assert row["online/cycle_instability_max"] > 1
    assert any("persistent oscillation" in w for w in warnings)
    assert row["online/p_hat_norm"] == pytest.approx(np.linalg.norm(counts.p_hat(0) - 0.5, 2), rel=1e-12)
    shrinking = [np.array([1 - 2 * e, e, e]) for e in (0.1, 0.03, 0.01, 0.003, 0.001)]
    row, warnings = round_metrics(4, [[p] for p in shrinking], [counts.p_hat(0)], counts.labelled, alpha=1.0, beta=2.0, lam=1.0, window=5,
                                  collapse_entropy=0.05, oscillation_threshold=0.01)
    assert row["online/collapsed_prompts"] == 1 and any("collapsed" in w for w in warnings)
    assert row["online/oscillating_prompts"] == 0  # a monotone drift is no oscillation
    drifting = [np.array([1 - 2 * e, e, e]) for e in (0.3, 0.25, 0.2, 0.15, 0.1)]
    row, _ = round_metrics(4, [[p] for p in drifting], [counts.p_hat(0)], counts.labelled, alpha=1.0, beta=2.0, lam=1.0, window=5,
                           collapse_entropy=0.05, oscillation_threshold=0.01)
    assert (row["online/collapsing_prompts"], row["online/oscillating_prompts"], row["online/collapsed_prompts"]) == (1, 0, 0)
    row, _ = round_metrics(2, [[p] for p in shrinking[:3]], [counts.p_hat(0)], counts.labelled, alpha=1.0, beta=2.0, lam=1.0, window=5,
                           collapse_entropy=0.5, oscillation_threshold=0.01)
    assert row["online/collapsed_prompts"] == 0  # fewer rounds than the window: not yet judged


def test_judge_and_reward_labelers_build_the_label_matrix():
    from pluralign.online.problem import JudgeLabeler, RewardLabeler

    problem = OnlineProblem(["p"], [["short", "longer one", "the longest of all"]])
    judge = JudgeLabeler(problem, lambda prompt, a, b: len(a) > len(b))  # a deterministic judge (bool)
    assert_close_scaled(judge.matrix(0), np.array([[0.5, 0, 0], [1, 0.5, 0], [1, 1, 0.5]]), rel=1e-12)
    with pytest.raises(ValueError, match="responses 0 vs 1"):
        JudgeLabeler(problem, lambda prompt, a, b: 2.0).matrix(0)
    r = np.array([0.3, -1.0, 2.0])
    rewards = lambda prompts, completions: (r[[problem.candidates[0].index(c) for c in completions]], {})  # noqa: E731
    expected = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    assert_close_scaled(RewardLabeler(problem, rewards).matrix(0), expected, rel=1e-12)
