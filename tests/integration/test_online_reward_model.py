"""Reward-model labels in the online loop, end to end: a tiny reward model trained with ``pluralign rm``
on the tiny world labels ``pluralign online`` runs, on candidates and on free text.

* labels agree with the model's Bradley-Terry probabilities sigma(r_a - r_b) (statistical tests at a
  fixed seed, |z| < 4 per pair and over all groups), and the monitor's ||P - 1/2|| on the probe is the
  reward model's;
* alpha = 0, lambda = 0: one free-text round labelled by the reward model is offline IPO on the
  round's stored texts.
"""

import json

import numpy as np
import pytest
import torch

from pluralign.cli import main
from pluralign.data.records import PreferenceRecord
from pluralign.models import load_tokenizer
from pluralign.online.rounds import RoundData, train_online
from pluralign.reward_model import load_reward_model
from pluralign.rl.rewards import ModelReward
from pluralign.train.config import DataConfig, ObjectiveConfig, RunConfig, TrainConfig
from pluralign.train.offline import train
from pluralign.worlds import tiny_world
from test_online_freetext import PROBLEM, freetext_config, one_thread  # noqa: F401 (one thread, autouse)
from tolerance import assert_close_scaled

TOK = load_tokenizer("byte")
WORLD = tiny_world()


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A classifier reward model trained 20 steps on Bradley-Terry pairs of the tiny world."""
    out = tmp_path_factory.mktemp("rm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["rm", "recipes/rm_tiny.yaml", "data.world.name=tiny", "data.world.num_records=256",
                     "data.eval_fraction=0", "train.max_steps=20", "train.eval_every=null", "train.save_every=20",
                     "optim.lr=3e-3", f"train.output_dir={out}", "train.progress_bar=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    path = out / "checkpoints" / "step-000020" / "model"
    return path, ModelReward(load_reward_model(path, TOK).eval(), TOK)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_candidate_labels_follow_the_reward_models_bradley_terry_probabilities(tmp_path, reward_model):
    path, score = reward_model
    out = tmp_path / "run"
    assert main(["online", "recipes/online_tiny.yaml", "data.world.name=tiny", "online.labels=reward_model",
                 f"online.reward_model={path}", "online.rounds=1", "online.steps_per_round=1",
                 "online.responses_per_prompt=3000", "online.sampler=uniform", "train.batch_size=500",
                 "online.plot=false",
                 f"train.output_dir={out}"]) == 0
    data = RoundData.load(out / "online" / "round-000000.json")
    z_all = []
    for x, (prompt, cands) in enumerate(zip(WORLD.prompts, WORLD.candidates)):
        r = np.array(score([prompt] * len(cands), cands))
        assert np.ptp(r) > 0.5  # the reward model separates the candidates: the test can fail
        ranked = data.rankings[data.prompts == x]
        for i in range(3):
            for j in range(i + 1, 3):
                wins = np.sum((ranked[:, 0] == i) & (ranked[:, 1] == j))
                n = wins + np.sum((ranked[:, 0] == j) & (ranked[:, 1] == i))
                p = _sigmoid(r[i] - r[j])
                z_all.append((wins - n * p) / np.sqrt(n * p * (1 - p)))
    print("z per pair", np.round(z_all, 2))
    assert np.all(np.abs(z_all) < 4) and abs(np.sum(z_all)) / np.sqrt(len(z_all)) < 4


def test_free_text_labels_follow_the_reward_model_and_the_probe_reads_it(tmp_path, reward_model):
    path, score = reward_model
    out = tmp_path / "run"
    assert main(["online", "recipes/online_freetext_tiny.yaml", f"online.reward_model={path}", "online.rounds=1",
                 "online.steps_per_round=2", "online.responses_per_prompt=400", "train.batch_size=100",
                 "online.max_new_tokens=4", "online.plot=false", f"train.output_dir={out}"]) == 0
    data = RoundData.load(out / "online" / "round-000000.json")
    p_first, first_higher = [], []
    for x, prompt in enumerate(WORLD.prompts):
        r = np.array(score([prompt] * len(data.texts[x]), data.texts[x]))
        for w, l in data.rankings[data.prompts == x]:
            p_first.append(_sigmoid(abs(r[w] - r[l])))  # Pr(the higher-scored text is ranked first)
            first_higher.append(r[w] > r[l])
    p_first = np.array(p_first)
    z = (np.sum(first_higher) - p_first.sum()) / np.sqrt(np.sum(p_first * (1 - p_first)))
    print(f"mean Pr(higher first) {p_first.mean():.3f}, observed {np.mean(first_higher):.3f}, z {z:.2f}")
    assert p_first.mean() > 0.55 and abs(z) < 4
    # the monitor's stability criteria read the reward model's matrix on the probe (the world's candidates)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    monitor = [row for row in rows if "online/pi" in row]
    norms = []
    for prompt, cands in zip(WORLD.prompts, WORLD.candidates):
        r = np.array(score([prompt] * len(cands), cands))
        norms.append(np.linalg.norm(_sigmoid(r[:, None] - r[None, :]) - 0.5, 2))
    assert monitor[0]["online/p_hat_norm"] == pytest.approx(np.mean(norms), rel=1e-5)


def test_alpha_0_lambda_0_free_text_round_is_offline_ipo_on_the_stored_texts(tmp_path, reward_model):
    path, _ = reward_model
    steps = 4
    cfg = freetext_config(tmp_path / "online", alpha=0.0, lam=0.0, rounds=1, steps=steps, responses=16, lr=2e-4,
                          max_new_tokens=5)
    cfg.online.labels, cfg.online.reward_model, cfg.online.judge = "reward_model", str(path), None
    cfg.train.batch_size = 16  # all 2 x 8 pairs in every step, as the offline run's full batch
    online = train_online(cfg, problem=PROBLEM)
    data = RoundData.load(tmp_path / "online" / "online" / "round-000000.json")
    records = [PreferenceRecord(PROBLEM.prompts[x], (data.texts[x][w], data.texts[x][l]), (0, 1))
               for x, (w, l) in zip(data.prompts, data.rankings)]  # (raises on a NUL byte: not at this seed)
    assert len({r.responses for r in records}) == len(records) == 16
    off_cfg = RunConfig(model=cfg.model, data=DataConfig(max_length=64, max_prompt_length=32, layout="shared"),
                        objective=cfg.objective, optim=cfg.optim,
                        train=TrainConfig(output_dir=str(tmp_path / "offline"), batch_size=len(records),
                                          max_steps=steps, seed=0, log_every=1, progress_bar=False))
    offline = train(off_cfg, tokenizer=TOK, records=records)
    on_loss, off_loss = [row["loss"] for row in online.history], [row["loss"] for row in offline.history]
    print("online", on_loss, "offline", off_loss)
    assert len(on_loss) == len(off_loss) == steps and on_loss[-1] < on_loss[0]
    assert_close_scaled(np.array(on_loss), np.array(off_loss), rel=1e-4)
    # Adam turns float noise in near-zero gradients into updates of up to lr: weights agree to ~lr / 10
    for (name, a), (_, b) in zip(online.model.state_dict().items(), offline.model.state_dict().items()):
        assert_close_scaled(a, b, rel=1e-3, what=name)
