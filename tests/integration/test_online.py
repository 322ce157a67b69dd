"""The online loop on a one-prompt bandit of the tiny LM (three one-token candidates).

* alpha = 0, lambda = 0: one round is offline IPO on that round's data (losses and weights);
* every round reaches the exact IPO optimum of its own labelled pairs, and the trajectory tracks
  the lab's exact MRS-IPO iteration, for a stable and an oscillating setting;
* resuming from a checkpoint in the middle of a round, or at a round boundary, repeats the
  uninterrupted run.
"""

import json

import numpy as np
import pytest
import torch

from pluralign.data.records import PreferenceRecord
from pluralign.lab.dynamics import mrs_ipo_step
from pluralign.logprobs import score_candidates
from pluralign.models import load_tokenizer
from pluralign.online.demo_study import MOVES, PROMPT, bandit_config, lab_trajectory, rps_problem
from pluralign.online.problem import MatrixLabeler
from pluralign.online.reference import geometric_reference
from pluralign.online.rounds import RoundData, train_online
from pluralign.train.config import DataConfig, ObjectiveConfig, RunConfig, TrainConfig
from pluralign.train.offline import train
from tolerance import assert_close_scaled


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 3-candidate bandit is faster on one thread
    yield
    torch.set_num_threads(threads)


def _round(out, r) -> RoundData:
    return RoundData.load(out / "online" / f"round-{r:06d}.json")


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def empirical_ipo_optimum(log_ref_t: np.ndarray, rankings: np.ndarray, tau: float) -> np.ndarray:
    """argmin over pi of sum_pairs (h_w - h_l - 1/(2 tau))^2, h = log pi - log ref_t: the normal
    equations D^T D h = D^T c of the least-squares problem, D the +1/-1 pair incidence matrix."""
    K = log_ref_t.size
    D = np.zeros((len(rankings), K))
    np.add.at(D, (np.arange(len(rankings)), rankings[:, 0]), 1.0)
    np.add.at(D, (np.arange(len(rankings)), rankings[:, 1]), -1.0)
    h = np.linalg.lstsq(D.T @ D, D.T @ np.full(len(rankings), 0.5 / tau), rcond=None)[0]
    return _softmax(log_ref_t + h)


def test_alpha_0_lambda_0_one_round_is_offline_ipo(tmp_path):
    beta, steps, responses = 4.0, 8, 400
    cfg = bandit_config(tmp_path / "online", alpha=0.0, beta=beta, lam=0.0, rounds=1, steps=steps,
                        responses=responses, seed=0, lr=0.005)
    cfg.train.log_every = 1
    online = train_online(cfg, problem=rps_problem())
    data = _round(tmp_path / "online", 0)
    # The data layer skips pairs of identical responses (no preference in them); the round trains on
    # all N draws, where each such pair adds the constant IPO loss (1/(2 tau))^2 and no gradient.
    # Weighting the n distinct pairs by n / N gives the offline step exactly the round's gradient.
    n, N, constant = sum(w != l for w, l in data.rankings), len(data.rankings), (beta / 2) ** 2
    assert 0 < n < N
    records = [PreferenceRecord(PROMPT, (MOVES[w], MOVES[l]), (0, 1), weight=n / N) for w, l in data.rankings if w != l]
    off_cfg = RunConfig(model=cfg.model, data=DataConfig(max_length=32, max_prompt_length=24, layout="shared"),
                        objective=ObjectiveConfig(name="ipo", beta=1.0 / beta), optim=cfg.optim,
                        train=TrainConfig(output_dir=str(tmp_path / "offline"), batch_size=len(records), max_steps=steps,
                                          seed=0, log_every=1, progress_bar=False))
    offline = train(off_cfg, tokenizer=load_tokenizer("byte"), records=records)
    on_loss = [row["loss"] for row in online.history]
    off_loss = [row["loss"] for row in offline.history]
    assert len(on_loss) == len(off_loss) == steps
    assert on_loss[-1] < on_loss[0] - 0.01  # it trained (identical pairs add a constant (1/(2 tau))^2 each)
    # float32 sums in another order and row layout (3 candidates in one row vs pairs), through Adam
    # the round's loss is the mean over all N draws: the weighted distinct pairs plus the constants
    assert_close_scaled(np.array(on_loss), np.array(off_loss) + (N - n) / N * constant, rel=1e-4)
    tok = load_tokenizer("byte")
    on_logp = score_candidates(online.model, tok, PROMPT, MOVES)
    assert_close_scaled(on_logp, score_candidates(offline.model, tok, PROMPT, MOVES), rel=1e-4)
    # Adam turns float noise in near-zero gradients into updates of up to lr: weights agree to ~lr / 5
    # (measured 1.0e-3 of the largest weight with both sides' rows packed, data.max_row_tokens=auto)
    for (name, a), (_, b) in zip(online.model.state_dict().items(), offline.model.state_dict().items()):
        assert_close_scaled(a, b, rel=2e-3, what=name)


def _check_tracks_lab(tmp_path, alpha, beta, rounds, tol_step, tol_lab, tol_traj):
    steps, responses = 60, 20000
    cfg = bandit_config(tmp_path, alpha, beta, 1.0, rounds, steps, responses, seed=0)
    result = train_online(cfg, problem=rps_problem())
    loop = result.trajectory(0)
    P = rps_problem().preference(0)
    pi_ref = loop[0]
    gaps = []
    for r in range(rounds):
        data = _round(tmp_path, r)
        log_ref_t = geometric_reference(torch.as_tensor(data.logp[0]), torch.log(torch.as_tensor(pi_ref)), alpha).numpy()
        # (1) the round reached the IPO optimum of its own pairs (optimisation error only)
        gaps.append(np.abs(loop[r + 1] - empirical_ipo_optimum(log_ref_t, data.rankings, 1.0 / beta)).max())
        # (2) one exact MRS-IPO step from the loop's state (one round of sampling noise)
        gaps.append(np.abs(loop[r + 1] - mrs_ipo_step(loop[r], P, pi_ref, pi_ref, alpha, beta, 1.0)).max())
        print(f"round {r}: to own optimum {gaps[-2]:.4f}, to one exact step {gaps[-1]:.4f}")
        assert gaps[-2] < tol_step and gaps[-1] < tol_lab
    # (3) the whole trajectory against the lab's from the same start (noise compounds by |eig| per round)
    lab = lab_trajectory(P, pi_ref, alpha, beta, 1.0, rounds)
    print(f"trajectory gap {np.abs(loop - lab).max():.4f}")
    assert np.abs(loop - lab).max() < tol_traj
    return loop, lab


def test_loop_tracks_the_lab_in_the_stable_regime(tmp_path):
    """alpha 0.5, beta 4, a 0.3: alpha^2 + a^2 beta^2 / 3 = 0.73 < 1 (converges). Tolerances: 0.01
    per round against the round's own IPO optimum; 0.04 against one exact step (10000 pairs per
    round give win-rate errors of about 0.015, times beta); 0.05 over the trajectory."""
    loop, lab = _check_tracks_lab(tmp_path, 0.5, 4.0, rounds=4, tol_step=0.01, tol_lab=0.04, tol_traj=0.05)
    assert np.abs(lab[-1] - 1 / 3).max() < np.abs(lab[1] - 1 / 3).max()  # the lab contracts towards the fixed point


def test_loop_tracks_the_lab_beyond_the_oscillation_threshold(tmp_path):
    """alpha 0.5, beta 8: 2.17 > 1, the uniform fixed point is unstable: |eig| = 1.47 per round
    amplifies each round's sampling error (<= 0.06 at beta 8), so over 4 rounds the trajectory
    tolerance is 0.06 (1 + 1.47 + 1.47^2) ~= 0.2 (measured: 0.11); both move away from it together."""
    loop, lab = _check_tracks_lab(tmp_path, 0.5, 8.0, rounds=4, tol_step=0.01, tol_lab=0.06, tol_traj=0.2)
    spread = lambda traj: np.abs(traj - 1 / 3).max(axis=1)  # noqa: E731
    assert spread(lab)[-1] > 2 * spread(lab)[0] and spread(loop)[-1] > 2 * spread(loop)[0]


class FailingLabeler:
    """Raises on its n-th call (one call per prompt per round): an interruption between rounds."""

    def __init__(self, inner, fail_at: int):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def matrix(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return self.inner.matrix(x)


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_seconds"} for row in rows]


@pytest.mark.parametrize("save_every", [5, 6])  # resume at step 10 (inside round 1) or 12 (round 2 starts)
def test_resume_mid_loop_equals_uninterrupted(tmp_path, save_every):
    def cfg(name, resume=False):
        c = bandit_config(tmp_path / name, alpha=0.5, beta=6.0, lam=0.5, rounds=3, steps=6, responses=200, seed=1)
        c.train.save_every, c.train.log_every, c.online.window = save_every, 1, 2
        c.train.resume, c.train.overwrite = resume, not resume
        return c

    problem = rps_problem()
    whole = train_online(cfg("whole"), problem=problem)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_online(cfg("cut"), problem=problem, labeler=FailingLabeler(MatrixLabeler(problem), fail_at=3))
    resumed = train_online(cfg("cut", resume=True), problem=problem)
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert [r["online/pi"] for r in resumed.rounds] == [r["online/pi"] for r in whole.rounds]
    for (name, a), (_, b) in zip(resumed.model.state_dict().items(), whole.model.state_dict().items()):
        assert torch.equal(a, b), name
