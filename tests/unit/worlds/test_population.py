"""Population data sets of a world, and the exact optimum of each objective trained on them.

The check is the first-order condition of the data set's own loss: with a free softmax policy over
each prompt's candidates (policy log-probs = log pi, reference log-probs = log pi_ref), the weighted
loss of the registered objective on the population records has zero gradient at
``population_optimum`` (and not at pi_ref)."""

import math

import numpy as np
import pytest
import torch

from pluralign import lab
from pluralign.objectives import PreferenceLogps, compute_objective
from pluralign.worlds import World, tiny_world
from pluralign.worlds.population import (pl_prefix_optimum, population_optimum, population_pairs,
                                         population_rankings, ranking_probability)


def _world():
    # 2 prompts, K = 3 and K = 4, two groups: the population P is not Bradley-Terry
    return World(prompts=["a?", "b?"], candidates=[[" x", " y", " z"], [" p", " q", " r", " s"]],
                 group_names=["maj", "min"], group_weights=np.array([0.65, 0.35]),
                 rewards=[np.array([[1.0, 0.0, -0.5], [-1.0, 1.5, 0.2]]),
                          np.array([[0.5, -0.3, 1.2, 0.0], [1.0, 0.8, -1.5, 0.4]])],
                 minority_group=1, annotators_per_group=5)


SAMPLER = [np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.4, 0.3, 0.2])]
REFS = [np.array([0.2, 0.5, 0.3]), np.array([0.25, 0.15, 0.4, 0.2])]
LENGTHS = [np.array([2.0, 3.0, 2.0]), np.array([2.0, 2.0, 2.0, 2.0])]


def _batch(world, records, probs):
    """PreferenceLogps of a free policy (probs[x] over candidates, requires_grad) on records."""
    rows = [world.record_indices(r) for r in records]
    K = max(len(r.responses) for r in records)
    B = len(records)
    policy = torch.zeros(B, K, dtype=torch.float64)
    ref = torch.zeros(B, K, dtype=torch.float64)
    tokens = torch.ones(B, K, dtype=torch.float64)
    mask = torch.zeros(B, K, dtype=torch.bool)
    ranking = torch.full((B, K), -1)
    pieces = []
    for b, ((x, _), rec) in enumerate(zip(rows, records)):
        cand = [world.candidates[x].index(resp) for resp in rec.responses]
        logp = torch.log(probs[x])[cand]
        pieces.append((b, logp))
        ref[b, : len(cand)] = torch.log(torch.tensor(REFS[x]))[cand]
        tokens[b, : len(cand)] = torch.tensor(LENGTHS[x])[cand]
        mask[b, : len(cand)] = True
        ranking[b, : len(rec.ranking)] = torch.tensor(rec.ranking)
    policy = torch.stack([torch.cat([lp, torch.zeros(K - lp.numel(), dtype=torch.float64)]) for _, lp in pieces])
    return PreferenceLogps(policy, ref, tokens, ranking, torch.tensor([len(r.ranking) for r in records]), mask,
                           torch.tensor([r.preference for r in records], dtype=torch.float64))


def _gradient(world, records, pis, objective, beta, args):
    theta = [torch.tensor(np.log(p), dtype=torch.float64, requires_grad=True) for p in pis]
    probs = [torch.softmax(t, 0) for t in theta]
    x = _batch(world, records, probs)
    losses, _ = compute_objective(objective, x, beta, args)
    weights = torch.tensor([r.weight for r in records], dtype=torch.float64)
    grads = torch.autograd.grad((weights * losses).sum() / len(records), theta)
    return max(float(g.abs().max()) for g in grads)


CASES = [("dpo", {}, None), ("dpo", {"label_smoothing": 0.1}, None), ("ipo", {}, None), ("rpo", {"eta": 0.8}, None),
         ("sft", {}, None), ("plackett_luce", {}, None), ("plackett_luce", {}, 1), ("plackett_luce", {}, 2)]


@pytest.mark.parametrize("objective, args, k", CASES)
def test_population_optimum_is_stationary_for_the_population_data(objective, args, k):
    world = _world()
    beta = 0.7
    pairwise = objective != "plackett_luce"
    records = population_pairs(world, SAMPLER) if pairwise else population_rankings(world, k)
    sampler = SAMPLER if pairwise else "uniform"
    opt = [population_optimum(world, x, objective, REFS[x], beta, sampler=sampler, k=k, args=args,
                              num_tokens=LENGTHS[x]) for x in range(world.n_prompts)]
    at_opt = _gradient(world, records, opt, objective, beta, args)
    at_ref = _gradient(world, records, REFS, objective, beta, args)
    assert at_ref > 1e-2
    assert at_opt < 1e-8 * max(1.0, at_ref)


def test_ipo_trl_optimum_uses_the_token_count():
    world = tiny_world()
    records = population_pairs(world)
    opt = [population_optimum(world, x, "ipo_trl", np.full(3, 1 / 3), 0.4, num_tokens=np.full(3, 3.0)) for x in range(2)]
    theta = [torch.tensor(np.log(p), dtype=torch.float64, requires_grad=True) for p in opt]
    x = _batch_equal(world, records, [torch.softmax(t, 0) for t in theta], 3.0)
    losses, _ = compute_objective("ipo_trl", x, 0.4)
    w = torch.tensor([r.weight for r in records], dtype=torch.float64)
    grads = torch.autograd.grad((w * losses).sum(), theta)
    assert max(float(g.abs().max()) for g in grads) < 1e-10
    with pytest.raises(ValueError, match="equal token counts"):
        population_optimum(world, 0, "ipo_trl", np.full(3, 1 / 3), 0.4, num_tokens=[2, 3, 2])


def _batch_equal(world, records, probs, length):
    B = len(records)
    pol, ref = torch.zeros(B, 2, dtype=torch.float64), torch.full((B, 2), math.log(1 / 3), dtype=torch.float64)
    rows = []
    for b, rec in enumerate(records):
        x, ranked = world.record_indices(rec)
        rows.append(torch.log(probs[x])[list(ranked)])
    pol = torch.stack(rows)
    return PreferenceLogps(pol, ref, torch.full((B, 2), length, dtype=torch.float64), torch.tensor([[0, 1]] * B),
                           torch.full((B,), 2), torch.ones(B, 2, dtype=torch.bool),
                           torch.tensor([r.preference for r in records], dtype=torch.float64))


def test_population_pairs_weights_labels_and_the_sampled_objective():
    world = _world()
    records = population_pairs(world, SAMPLER)
    assert len(records) == 3 + 6
    assert np.mean([r.weight for r in records]) == pytest.approx(1.0)
    for rec in records:
        x, (i, j) = world.record_indices(rec)
        assert rec.preference == pytest.approx(world.preference_matrix(x)[i, j]) and rec.preference >= 0.5
    # weights ∝ mu_i mu_j within a prompt, equal total per prompt
    per_prompt, ratios = {0: 0.0, 1: 0.0}, {0: [], 1: []}
    for rec in records:
        x, (i, j) = world.record_indices(rec)
        per_prompt[x] += rec.weight
        ratios[x].append(rec.weight / (SAMPLER[x][i] * SAMPLER[x][j]))
    for x in (0, 1):
        assert np.allclose(ratios[x], ratios[x][0], rtol=1e-12)
    assert per_prompt[0] == pytest.approx(per_prompt[1])
    # the weighted DPO loss equals the lab's population loss without its y1 = y2 draws:
    # L_lab = 2 S + ln2 sum mu^2 and the data's mean is S / Z with Z = (1 - sum mu^2) / 2 (one prompt)
    mu = SAMPLER[1]
    h = np.array([0.3, -0.2, 0.5, 0.1])
    beta = 0.6
    one = [r for r in records if r.prompt == "b?"]
    total = 0.0
    for rec in one:
        _, (i, j) = world.record_indices(rec)
        z = beta * (h[i] - h[j])
        total += rec.weight * (-rec.preference * math.log(1 / (1 + math.exp(-z))) - (1 - rec.preference) * math.log(1 / (1 + math.exp(z))))
    mean = total / sum(r.weight for r in one)
    L = lab.dpo_population_loss(h, world.preference_matrix(1), mu, beta)
    Z = (1 - mu @ mu) / 2
    assert mean == pytest.approx((L - math.log(2) * (mu @ mu)) / 2 / Z, rel=1e-12)


def test_population_rankings_probabilities_and_the_bradley_terry_case():
    world = _world()
    full = population_rankings(world)
    assert len(full) == 6 + 24
    for x in range(2):
        K = world.n_candidates(x)
        probs = [ranking_probability(world, x, world.record_indices(r)[1]) for r in full if r.prompt == world.prompts[x]]
        assert sum(probs) == pytest.approx(1.0, rel=1e-12)
    top1 = population_rankings(world, k=1)
    assert sum(ranking_probability(world, 1, (c,)) for c in range(4)) == pytest.approx(1.0)
    assert np.allclose([ranking_probability(world, 1, (c,)) for c in range(4)], world.population_target(1))
    assert len(top1) == 3 + 4
    # one Bradley-Terry group: the PL optimum is the KL-RLHF optimum softmax(log pi_ref + r / beta) for every k
    r = np.array([0.4, -1.0, 0.9, 0.0])
    bt = World(prompts=["q"], candidates=[["a", "b", "c", "d"]], group_names=["all"], group_weights=np.array([1.0]),
               rewards=[r[None, :]], minority_group=0, annotators_per_group=1)
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    for k in (None, 1, 2):
        got = population_optimum(bt, 0, "plackett_luce", ref, 0.5, k=k)
        assert np.allclose(got, lab.kl_rlhf_optimum(r, ref, 0.5), rtol=1e-8, atol=1e-10)


def test_pl_prefix_optimum_full_rankings_equals_the_lab_fit():
    world = _world()
    from itertools import permutations

    from pluralign.lab.plackett_luce import fit_weighted_pl

    orders = np.array(list(permutations(range(4))))
    probs = np.array([ranking_probability(world, 1, o) for o in orders])
    ours = pl_prefix_optimum(4, orders, probs)
    theirs = fit_weighted_pl(np.eye(4), orders, probs, np.zeros(4), gtol=1e-13)
    assert np.allclose(ours, theirs - theirs.mean(), atol=1e-8)
