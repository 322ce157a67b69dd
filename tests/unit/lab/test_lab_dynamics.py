"""MRS-IPO / MRS-DPO dynamics against PAPERS.md §5.3-5.6 and §8.4."""

import numpy as np
import pytest

from pluralign.lab import (contraction_bound, cycle_instability, cycle_strength, cyclic_matrix, entropy,
                           entropy_collapsed, ipo_optimum, logit_map_jacobian, mrs_dpo_run, mrs_ipo_run,
                           mrs_ipo_step, parameter_grid, sample_matrices)
from pluralign.lab.generators import TRANSITIVE_EXAMPLE, attribute_preference_matrices, classify_matrix
from pluralign.lab.tournament import copeland_ranking

CYCLE = cyclic_matrix(0.3)  # P = 11^T/2 + 0.3 S
START = [0.5, 0.3, 0.2]  # the uniform point is a fixed point of the cycle, so start off it


def test_cycle_thresholds_of_section_5_6():
    alphas, betas = np.array([0.5, 0.5, 0.9]), np.array([4.0, 6.0, 2.0])
    run = mrs_ipo_run(CYCLE, alphas, betas, 1.0, pi_init=START, steps=3000, window=1000)
    strength = run.cycle_strength[:, 0]
    assert [cycle_instability(0.3, a, b, 1.0) for a, b in zip(alphas, betas)] == pytest.approx([0.73, 1.33, 0.93])
    assert strength[0] < 1e-25 and strength[2] < 1e-25  # converge (paper: ~1e-30)
    assert strength[1] == pytest.approx(0.137, abs=1e-3)  # persistent oscillation
    np.testing.assert_allclose(run.final_pi[[0, 2], 0], np.full((2, 3), 1 / 3), atol=1e-12)
    # the sufficient contraction bound is conservative: above 1 in all three cases
    assert all(contraction_bound(CYCLE, a, b, 1.0) > 1 for a, b in zip(alphas, betas))


def test_cycle_strength_from_a_recorded_trajectory_matches_running_sums():
    run = mrs_ipo_run(CYCLE, 0.5, 6.0, 1.0, pi_init=START, steps=3000, window=1000, record=True)
    assert cycle_strength(run.trajectory[:, 0, 0], 1000) == pytest.approx(run.cycle_strength[0, 0], rel=1e-9)
    np.testing.assert_allclose(run.trajectory[-1000:, 0, 0].mean(axis=0), run.window_mean[0, 0], atol=1e-12)


def test_strongly_transitive_numbers_of_section_5_6():
    # P = TRANSITIVE_EXAMPLE = [[.5,.7,.8],[.3,.5,.6],[.2,.4,.5]], beta = 2, lambda = 1, uniform
    # pi_ref and start: reproduces [0.57, 0.26, 0.17] (H 0.97) and [0.98, 0.018, 0.002] (H 0.11).
    run = mrs_ipo_run(TRANSITIVE_EXAMPLE, [0.5, 0.9, 1.0], 2.0, 1.0, steps=3000)
    final = run.final_pi[:, 0]
    np.testing.assert_allclose(final[0], [0.57, 0.26, 0.17], atol=5e-3)
    assert run.final_entropy[0, 0] == pytest.approx(0.97, abs=5e-3)
    assert np.all(np.abs(final[1] - [0.98, 0.018, 0.002]) <= [1e-3, 1e-3, 5e-4])
    assert run.final_entropy[1, 0] == pytest.approx(0.11, abs=5e-3)
    np.testing.assert_allclose(final[2], [1.0, 0.0, 0.0], atol=1e-12)
    assert run.final_entropy[2, 0] < 1e-12
    # exact values of this P (the fixed point solves log pi = 4 P pi + c and 20 P pi + c)
    np.testing.assert_allclose(final[0], [0.57126, 0.25668, 0.17206], atol=1e-5)
    np.testing.assert_allclose(final[0], ipo_optimum(TRANSITIVE_EXAMPLE, np.full(3, 1 / 3), final[0], 4.0), atol=1e-12)
    # larger beta*lam/(1-alpha) concentrates more
    assert final[0, 0] < final[1, 0] < final[2, 0]


def test_alpha_one_collapses_to_the_top_with_monotone_entropy():
    run = mrs_ipo_run(TRANSITIVE_EXAMPLE, 1.0, 2.0, 1.0, steps=3000, record=True)
    H = entropy(run.trajectory[:, 0, 0])
    assert np.all(np.diff(H) <= 1e-12) and H[-1] < 1e-12
    assert run.last_entropy_increase[0, 0] == -1 and entropy_collapsed(run)[0, 0]
    rng = np.random.default_rng(2)
    Ps = sample_matrices("strongly_transitive", 40, rng)
    many = mrs_ipo_run(Ps, 1.0, 2.0, 1.0, steps=3000)
    tops = np.array([copeland_ranking(P)[0] for P in Ps])
    np.testing.assert_array_equal(many.final_pi[0].argmax(axis=-1), tops)
    assert np.all(many.final_entropy < 1e-4) and np.all(many.last_entropy_increase == -1)


def test_one_step_at_alpha_zero_lambda_zero_is_the_one_shot_ipo_optimum():
    rng = np.random.default_rng(4)
    P = attribute_preference_matrices(1, rng)[0]
    ref, pi0, start = (rng.dirichlet(np.ones(4)) for _ in range(3))
    run = mrs_ipo_run(P, 0.0, 3.0, 0.0, pi_ref=ref, pi0=pi0, pi_init=start, steps=1, window=1)
    expected = ipo_optimum(P, ref, pi0, 3.0)
    np.testing.assert_allclose(run.final_pi[0, 0], expected, atol=1e-14)
    np.testing.assert_allclose(mrs_ipo_step(start, P, ref, pi0, 0.0, 3.0, 0.0), expected, atol=1e-14)


def test_jacobian_eigenvalues_at_the_uniform_fixed_point():
    for alpha, beta, lam in [(0.5, 6.0, 1.0), (0.2, 3.0, 0.5), (0.9, 2.0, 0.8)]:
        J = logit_map_jacobian(CYCLE, np.full(3, 1 / 3), alpha, beta, lam)
        eig = np.sort_complex(np.linalg.eigvals(J))
        omega = beta * lam * 0.3 / np.sqrt(3)
        np.testing.assert_allclose(eig, [alpha - 1j * omega, alpha + 1j * omega], atol=1e-7)
        assert abs(eig[0]) ** 2 == pytest.approx(cycle_instability(0.3, alpha, beta, lam), abs=1e-7)


def test_vectorised_run_equals_the_per_matrix_loop():
    rng = np.random.default_rng(9)
    P = attribute_preference_matrices(6, rng)
    ref, pi0, start = rng.dirichlet(np.ones(4), 6), rng.dirichlet(np.ones(4), 6), rng.dirichlet(np.ones(4), 6)
    alphas, betas, lams = parameter_grid([0.0, 0.7, 1.0], [1.0, 5.0], [0.3, 1.0])
    run = mrs_ipo_run(P, alphas, betas, lams, pi_ref=ref, pi0=pi0, pi_init=start, steps=150, window=50)
    for s in range(alphas.size):
        for m in range(6):
            pi = start[m]
            for _ in range(150):
                pi = mrs_ipo_step(pi, P[m], ref[m], pi0[m], alphas[s], betas[s], lams[s])
            np.testing.assert_allclose(run.final_pi[s, m], pi, atol=1e-11)


def test_mrs_dpo_runs_exact_dpo_rounds():
    # MRS-DPO: beta divides the implicit reward, so small beta drives oscillation on the cycle
    strong = mrs_dpo_run(CYCLE, 0.5, 0.5, 1.0, pi_init=START, steps=300, window=100)
    weak = mrs_dpo_run(CYCLE, 0.5, 6.0, 1.0, pi_init=START, steps=300, window=100)
    assert strong.cycle_strength[0, 0] > 0.1 and weak.cycle_strength[0, 0] < 1e-20
    collapse = mrs_dpo_run(TRANSITIVE_EXAMPLE, 1.0, 2.0, 1.0, steps=200, window=50)
    assert collapse.final_pi[0, 0, 0] == pytest.approx(1.0) and collapse.last_entropy_increase[0, 0] == -1


def test_generators_and_bad_arguments():
    rng = np.random.default_rng(0)
    assert all(classify_matrix(P) == "cyclic" for P in sample_matrices("cyclic", 10, rng))
    with pytest.raises(ValueError, match="alpha"):
        mrs_ipo_run(CYCLE, 1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="pi_ref must be strictly positive"):
        mrs_ipo_run(CYCLE, 0.5, 1.0, 1.0, pi_ref=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="cycle strength"):
        cyclic_matrix(0.7)


def test_classification_refuses_to_label_runs_that_have_not_settled():
    from pluralign.lab.dynamics import classify_runs

    P = cyclic_matrix(0.3)
    # alpha = 0.9, beta = 2 converges slowly (|eigenvalue| = 0.966): undetermined after 160 steps,
    # converged after 600; the unstable alpha = 0.5, beta = 6 oscillates at both lengths
    short = mrs_ipo_run(P, [0.9, 0.5], [2.0, 6.0], 1.0, pi_init=(0.5, 0.3, 0.2), steps=160, window=53)
    long = mrs_ipo_run(P, [0.9, 0.5], [2.0, 6.0], 1.0, pi_init=(0.5, 0.3, 0.2), steps=600, window=200)
    assert classify_runs(short)[:, 0].tolist() == ["undetermined", "oscillating"]
    assert classify_runs(long)[:, 0].tolist() == ["converged", "oscillating"]
    tiny = mrs_ipo_run(P, 0.5, 4.0, 1.0, steps=60, window=20)
    assert classify_runs(tiny)[0, 0] == "undetermined"  # too short a window for any label
    assert 0.4 < long.late_half_strength[1, 0] / long.cycle_strength[1, 0] < 2.5


def test_cycle_strength_sum_and_mean_readings():
    traj = np.array([[0.2, 0.3, 0.5], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4]])
    var = traj.var(axis=0)
    assert cycle_strength(traj, 3) == pytest.approx(var.sum(), rel=1e-15)
    assert cycle_strength(traj, 3, reduction="mean") == pytest.approx(var.mean(), rel=1e-15)
