"""Tests for pluralign.worlds: exact quantities, samplers, the default world and evaluation."""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from pluralign.data.records import PreferenceRecord
from pluralign.worlds import World, default_world, evaluate_policy, lab_problem, renormalise, tiny_world


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def softmax(r) -> np.ndarray:
    e = np.exp(np.asarray(r, dtype=float))
    return e / e.sum()


def plackett_luce(order, r) -> float:
    """P(order) = prod_m exp(r_{order[m]}) / sum_{l >= m} exp(r_{order[l]}) (PAPERS.md §1.1)."""
    prob, rest = 1.0, list(order)
    for item in order:
        prob *= math.exp(r[item]) / sum(math.exp(r[j]) for j in rest)
        rest.remove(item)
    return prob


def log_odds_cycle_violation(P: np.ndarray) -> float:
    """max over triples |logit P_ij + logit P_jk - logit P_ik|; 0 exactly when P is Bradley-Terry."""
    logit = np.log(P / (1 - P))
    k = len(P)
    triples = [(i, j, m) for i in range(k) for j in range(k) for m in range(k)]
    return max(abs(logit[i, j] + logit[j, m] - logit[i, m]) for i, j, m in triples)


# ------------------------------------------------------------------------- exact quantities
def test_group_matrices_are_bradley_terry():
    world = default_world()
    for x in range(world.n_prompts):
        for g in range(world.n_groups):
            P = world.group_preference_matrix(g, x)
            r = world.rewards[x][g]
            np.testing.assert_allclose(P + P.T, 1.0, atol=1e-15)
            np.testing.assert_allclose(np.diag(P), 0.5)
            np.testing.assert_allclose(np.log(P / (1 - P)), r[:, None] - r[None, :], atol=1e-12)
            assert log_odds_cycle_violation(P) < 1e-12


def test_population_matrix_tiny_world_by_hand():
    P = tiny_world().preference_matrix(0)
    # majority r = [1, 0, -1], minority r = [-0.5, 1.5, -1], shares 0.7 / 0.3
    assert P[0, 1] == pytest.approx(0.7 * sigmoid(1.0) + 0.3 * sigmoid(-2.0), abs=1e-15)
    assert P[0, 1] == pytest.approx(0.5475019, abs=1e-7)
    assert P[0, 2] == pytest.approx(0.7 * sigmoid(2.0) + 0.3 * sigmoid(0.5), abs=1e-15)
    assert P[1, 2] == pytest.approx(0.7 * sigmoid(1.0) + 0.3 * sigmoid(2.5), abs=1e-15)
    np.testing.assert_allclose(P + P.T, 1.0, atol=1e-15)
    # Not Bradley-Terry: log-odds are not additive around the cycle 0 -> 1 -> 2.
    logit = np.log(P / (1 - P))
    assert logit[0, 1] + logit[1, 2] - logit[0, 2] == pytest.approx(0.1023700, abs=1e-6)


def test_population_matrix_of_default_world_is_not_bradley_terry():
    world = default_world()
    violations = [log_odds_cycle_violation(world.preference_matrix(x)) for x in range(world.n_prompts)]
    # Measured: 0.405 to 0.551 (seed 0); a BT matrix has 0 up to rounding.
    assert min(violations) > 0.4


def test_top_choice_target_and_minority_set_tiny_world():
    world = tiny_world()
    np.testing.assert_allclose(world.group_top_choice(0, 0), softmax([1.0, 0.0, -1.0]), atol=1e-15)
    target = world.population_target(0)
    expected = 0.7 * softmax([1.0, 0.0, -1.0]) + 0.3 * softmax([-0.5, 1.5, -1.0])
    np.testing.assert_allclose(target, expected, atol=1e-15)
    assert target.sum() == pytest.approx(1.0)
    assert world.minority_responses(0).tolist() == [1]  # " Coffee."
    assert world.minority_responses(1).tolist() == [0]  # " Cat."


def test_minority_set_is_shift_invariant_and_empty_for_one_group():
    world = tiny_world()
    shifted = World(
        prompts=world.prompts,
        candidates=world.candidates,
        group_names=world.group_names,
        group_weights=world.group_weights,
        rewards=[r + np.array([[5.0], [-3.0]]) for r in world.rewards],
        minority_group=1,
        annotators_per_group=3,
    )
    assert [shifted.minority_responses(x).tolist() for x in range(2)] == [[1], [0]]
    single = World(["p"], [[" a", " b"]], ["all"], np.array([1.0]), [np.array([[0.0, 1.0]])], 0, 1)
    assert single.minority_responses(0).size == 0


# ------------------------------------------------------------------------- sampling
def test_sampled_pair_labels_follow_bradley_terry():
    world = tiny_world()
    records = world.sample_pairs(30000, seed=123)
    assert all(r.is_pair and r.ranking == (0, 1) for r in records)
    wins, totals = Counter(), Counter()
    groups = Counter()
    for record in records:
        group = world.group_names.index(record.annotator_id.split("/")[0])
        index = int(record.annotator_id.split("/a")[1])
        assert 0 <= index < world.annotators_per_group
        groups[group] += 1
        x, (winner, loser) = world.record_indices(record)
        i, j = min(winner, loser), max(winner, loser)
        totals[x, group, i, j] += 1
        wins[x, group, i, j] += winner == i
    assert groups[1] / len(records) == pytest.approx(0.3, abs=0.015)
    assert len(totals) == 2 * 2 * 3  # every (prompt, group, pair) cell is populated
    for (x, g, i, j), total in totals.items():
        p = sigmoid(world.rewards[x][g, i] - world.rewards[x][g, j])
        standard_error = math.sqrt(p * (1 - p) / total)
        assert abs(wins[x, g, i, j] / total - p) < 4.5 * standard_error


def test_pair_sampler_distribution_draws_pairs_proportional_to_mu():
    world = tiny_world()
    mu = [np.array([0.6, 0.3, 0.1]), np.array([1 / 3, 1 / 3, 1 / 3])]
    records = world.sample_pairs(20000, seed=5, sampler=mu)
    counts = Counter()
    for record in records:
        x, ranked = world.record_indices(record)
        if x == 0:
            counts[tuple(sorted(ranked))] += 1
    n0 = sum(counts.values())
    # P({i, j}) ∝ mu_i mu_j over unordered pairs i != j: 0.18, 0.06, 0.03 out of 0.27.
    for pair, expected in {(0, 1): 0.18 / 0.27, (0, 2): 0.06 / 0.27, (1, 2): 0.03 / 0.27}.items():
        assert counts[pair] / n0 == pytest.approx(expected, abs=0.02)
    with pytest.raises(ValueError, match="sampler"):
        world.sample_pairs(10, seed=0, sampler="on-policy")


def test_plackett_luce_rankings_have_the_right_frequencies():
    world = tiny_world()
    records = world.sample_rankings(24000, seed=7)
    counts, totals = Counter(), Counter()
    for record in records:
        x, ranked = world.record_indices(record)
        assert record.is_full_ranking and record.responses == tuple(world.candidates[x])
        group = world.group_names.index(record.annotator_id.split("/")[0])
        counts[x, group, ranked] += 1
        totals[x, group] += 1
    for (x, g), total in totals.items():
        r = world.rewards[x][g]
        for order in permutations(range(3)):
            p = plackett_luce(order, r)
            assert abs(counts[x, g, order] / total - p) < 4.5 * math.sqrt(p * (1 - p) / total) + 1e-3


def test_top1_frequencies_on_default_world_and_partial_rankings():
    world = default_world()
    records = world.sample_rankings(16000, seed=11, k=1)
    assert all(r.num_ranked == 1 and r.num_responses == 4 for r in records)
    top, totals = Counter(), Counter()
    for record in records:
        x, (best,) = world.record_indices(record)
        group = world.group_names.index(record.annotator_id.split("/")[0])
        top[x, group, best] += 1
        totals[x, group] += 1
    for (x, g), total in totals.items():
        expected = world.group_top_choice(g, x)
        for k in range(4):
            se = math.sqrt(expected[k] * (1 - expected[k]) / total)
            assert abs(top[x, g, k] / total - expected[k]) < 4.5 * se + 1e-3
    assert all(r.num_ranked == 2 for r in world.sample_rankings(50, seed=0, k=2))


def test_shown_subsets_of_two_are_bradley_terry_pairs():
    world = tiny_world()
    records = world.sample_rankings(6000, seed=3, n_shown=2)
    wins, totals = Counter(), Counter()
    for record in records:
        assert record.num_responses == 2
        x, (winner, loser) = world.record_indices(record)
        i, j = sorted((winner, loser))
        totals[x, i, j] += 1
        wins[x, i, j] += winner == i
    P = [world.preference_matrix(x) for x in range(2)]
    for (x, i, j), total in totals.items():
        p = P[x][i, j]  # annotators are a population draw, so the pooled rate is the mixture P
        assert abs(wins[x, i, j] / total - p) < 4.5 * math.sqrt(p * (1 - p) / total)


def test_per_annotator_rows_are_grouped_with_population_shares():
    world = tiny_world()
    records = world.sample_rankings(10 * 6, seed=2, n_per_annotator=6)
    ids = [r.annotator_id for r in records]
    blocks = [ids[i : i + 6] for i in range(0, 60, 6)]
    assert all(len(set(block)) == 1 for block in blocks)
    annotators = [block[0] for block in blocks]
    assert len(set(annotators)) == 10
    assert Counter(a.split("/")[0] for a in annotators) == {world.group_names[0]: 7, world.group_names[1]: 3}
    pairs = world.sample_pairs(40, seed=2, n_per_annotator=4)
    assert len({r.annotator_id for r in pairs}) == 10
    with pytest.raises(ValueError, match="annotators_per_group"):
        world.sample_rankings(100, seed=0, n_per_annotator=1)  # 70 majority annotators > pool of 20
    with pytest.raises(ValueError, match="n_per_annotator"):
        world.sample_pairs(10, seed=0, n_per_annotator=3)


def test_sampling_is_deterministic_in_the_seed():
    world = default_world()
    assert world.sample_pairs(200, seed=4) == world.sample_pairs(200, seed=4)
    assert world.sample_pairs(200, seed=4) != world.sample_pairs(200, seed=5)
    assert world.sample_rankings(200, seed=4, k=2) == world.sample_rankings(200, seed=4, k=2)


# ------------------------------------------------------------------------- the default world
def test_default_world_construction():
    world = default_world()
    assert world.n_prompts == 8 and world.group_names == ["majority", "minority"]
    np.testing.assert_allclose(world.group_weights, [0.7, 0.3])
    assert world.group_weights[world.minority_group] == pytest.approx(0.3)
    for x in range(world.n_prompts):
        prompt, cands = world.prompts[x], world.candidates[x]
        assert not prompt.endswith(" ") and len(cands) == 4 and len(set(cands)) == 4
        assert all(c.startswith(" ") and not c.startswith("  ") for c in cands)
        assert np.abs(world.rewards[x]).max() <= 3.0
        # Contested pair: majority favourite M vs minority favourite N, pooled P only mildly above 1/2.
        majority_top, minority_top = np.argmax(world.rewards[x], axis=1)
        assert world.minority_responses(x).tolist() == [minority_top]
        assert 0.5 < world.preference_matrix(x)[majority_top, minority_top] < 0.65


def test_default_world_population_target_keeps_minority_mass():
    world = default_world()
    masses = [
        world.population_target(x)[world.minority_responses(x)].sum() for x in range(world.n_prompts)
    ]
    # Exact value for seed 0: 0.332754383... (per prompt 0.315 to 0.353).
    assert np.mean(masses) == pytest.approx(0.33275438321674167, rel=1e-12)
    assert 0.31 < min(masses) and max(masses) < 0.36


def test_default_world_is_deterministic_in_the_seed():
    assert default_world(0).to_dict() == default_world(0).to_dict()
    assert default_world(0).to_dict() != default_world(1).to_dict()
    shares = default_world(0, minority_share=0.2).group_weights
    np.testing.assert_allclose(shares, [0.8, 0.2])
    with pytest.raises(ValueError, match="minority_share"):
        default_world(0, minority_share=0.6)


# ------------------------------------------------------------------------- serialisation and validation
def test_json_round_trip(tmp_path):
    world = default_world(3)
    path = tmp_path / "world.json"
    world.save_json(path)
    loaded = World.load_json(path)
    assert loaded.to_dict() == world.to_dict()
    for a, b in zip(loaded.rewards, world.rewards):
        np.testing.assert_array_equal(a, b)  # exact: JSON floats round-trip
    assert World.from_dict(world.to_dict()).prompts == world.prompts
    bad = world.to_dict() | {"colour": "blue"}
    with pytest.raises(ValueError, match="unknown keys"):
        World.from_dict(bad)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid world file"):
        World.load_json(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"group_weights": np.array([0.6, 0.3])}, "summing to 1"),
        ({"rewards": [np.zeros((2, 2)), np.zeros((2, 3))]}, r"rewards\[0\]: expected shape \(2, 3\)"),
        ({"candidates": [[" a", " a", " b"], [" c", " d", " e"]]}, "distinct candidates"),
        ({"prompts": ["same", "same"]}, "distinct prompts"),
        ({"minority_group": 2}, "minority_group"),
        ({"annotators_per_group": 0}, "annotators_per_group"),
        ({"rewards": [np.full((2, 3), np.nan), np.zeros((2, 3))]}, "finite"),
    ],
)
def test_validation_errors(change, message):
    fields = tiny_world().to_dict()
    del fields["format"]
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        World(**fields)


def test_index_errors_and_record_lookup():
    world = tiny_world()
    with pytest.raises(ValueError, match="prompt index"):
        world.preference_matrix(2)
    with pytest.raises(ValueError, match="group index"):
        world.group_top_choice(-1, 0)
    record = PreferenceRecord.from_pair(world.prompts[1], " Fish.", " Cat.")
    assert world.record_indices(record) == (1, (2, 0))
    with pytest.raises(ValueError, match="not a prompt"):
        world.record_indices(PreferenceRecord.from_pair("other", " a", " b"))


# ------------------------------------------------------------------------- evaluation
def test_renormalise_is_a_stable_softmax():
    np.testing.assert_allclose(renormalise([math.log(0.2), math.log(0.3)]), [0.4, 0.6])
    np.testing.assert_allclose(renormalise([-1000.0, -1001.0]), softmax([0.0, -1.0]))
    np.testing.assert_allclose(renormalise([0.0, -np.inf]), [1.0, 0.0])
    with pytest.raises(ValueError):
        renormalise([-np.inf, -np.inf])
    with pytest.raises(ValueError):
        renormalise([np.nan, 0.0])


def test_evaluate_uniform_policy_on_tiny_world_by_hand():
    world = tiny_world()
    uniform = [np.full(3, 1 / 3)] * 2
    result = evaluate_policy(world, uniform, reference_probs=uniform)
    first = result["per_prompt"][0]
    assert first["win_rate"] == pytest.approx({"majority": 0.5, "minority": 0.5})  # P_g + P_g^T = 1
    assert first["entropy"] == pytest.approx(math.log(3))
    assert first["kl_to_reference"] == pytest.approx(0.0, abs=1e-15)
    assert first["minority_mass"] == pytest.approx(1 / 3)
    assert first["expected_reward"] == pytest.approx({"majority": 0.0, "minority": 0.0})
    assert first["regret"] == pytest.approx({"majority": 1.0, "minority": 1.5})
    target = world.population_target(0)
    assert first["tv_to_target"] == pytest.approx(0.5 * np.abs(target - 1 / 3).sum())
    assert result["mean"]["minority_mass"] == pytest.approx(1 / 3)


def test_win_rate_against_uniform_base_by_hand():
    world = tiny_world()
    policy = [np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])]
    first = evaluate_policy(world, policy)["per_prompt"][0]
    # Against a uniform opponent each response wins (1/2 + sum of its BT win probabilities) / 3.
    # Majority r = [1, 0, -1]: Tea (1/2 + s(1) + s(2)), Coffee (s(-1) + 1/2 + s(1)),
    # Water (s(-2) + s(-1) + 1/2).
    s = sigmoid
    majority = (0.6 * (0.5 + s(1) + s(2)) + 0.3 * (s(-1) + 0.5 + s(1)) + 0.1 * (s(-2) + s(-1) + 0.5)) / 3
    # Minority r = [-0.5, 1.5, -1].
    minority = (
        0.6 * (0.5 + s(-2) + s(0.5)) + 0.3 * (s(2) + 0.5 + s(2.5)) + 0.1 * (s(-0.5) + s(-2.5) + 0.5)
    ) / 3
    assert first["win_rate"]["majority"] == pytest.approx(majority, abs=1e-14)
    assert first["win_rate"]["minority"] == pytest.approx(minority, abs=1e-14)
    assert first["expected_reward"]["majority"] == pytest.approx(0.6 - 0.1)
    assert first["regret"]["minority"] == pytest.approx(1.5 - (-0.3 + 0.45 - 0.1))
    pooled = 0.7 * first["win_rate"]["majority"] + 0.3 * first["win_rate"]["minority"]
    assert first["population_win_rate"] == pytest.approx(pooled)
    assert "kl_to_reference" not in first
    with pytest.raises(ValueError, match=r"policy_probs\[1\]"):
        evaluate_policy(world, [policy[0], np.array([0.5, 0.2, 0.2])])


def test_target_beats_collapsed_policy_on_default_world():
    world = default_world()
    target = [world.population_target(x) for x in range(world.n_prompts)]
    # KL-regularised alignment on the majority's reward with beta = 0.1: pi ∝ exp(r_majority / 0.1).
    collapsed = [renormalise(world.rewards[x][0] / 0.1) for x in range(world.n_prompts)]
    on_target = evaluate_policy(world, target)["mean"]
    on_collapsed = evaluate_policy(world, collapsed)["mean"]
    # Measured (seed 0): PM divergence 0.0199 vs 3.09; minority mass 0.333 vs 5.7e-7.
    assert on_target["pm_divergence"] < 0.03
    assert on_collapsed["pm_divergence"] > 100 * on_target["pm_divergence"]
    assert on_target["minority_mass"] == pytest.approx(0.33275438321674167, rel=1e-9)
    assert on_collapsed["minority_mass"] < 1e-4
    assert on_target["tv_to_target"] == pytest.approx(0.0, abs=1e-12)
    assert on_collapsed["regret"]["minority"] > on_target["regret"]["minority"]


def test_lab_problem_matches_world():
    world = default_world()
    problem = lab_problem(world, 2)
    np.testing.assert_array_equal(problem["P"], world.preference_matrix(2))
    assert problem["group_P"].shape == (2, 4, 4)
    pooled = np.tensordot(problem["weights"], problem["group_P"], axes=1)
    np.testing.assert_allclose(pooled, problem["P"], atol=1e-15)
    top_choice = np.stack([softmax(r) for r in problem["rewards"]])
    np.testing.assert_allclose(problem["target"], problem["weights"] @ top_choice)
    assert problem["minority_set"].tolist() == world.minority_responses(2).tolist()
    assert problem["candidates"] == world.candidates[2]
