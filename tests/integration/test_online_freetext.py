"""The online loop on free text (``online.responses = generate``) with the tiny LM and world.

* a round stores its drawn texts with log pi_t (the policy at the round's start) and log pi_ref (the
  frozen initial model: a copy, or with LoRA the adapters off), each equal to scoring the texts
  again; draws from the initial model are what that model generates, draws from the policy what
  the round's starting weights generate; the monitor's state is the probe's renormalised scores;
* resuming in the middle of a round or at a round boundary repeats the uninterrupted run;
* alpha = 0, lambda = 0: one round is offline IPO on the stored texts (losses and weights).
"""

import json

import numpy as np
import pytest
import torch

from pluralign.data.records import PreferenceRecord
from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.logprobs import score_candidates
from pluralign.models import load_model, load_tokenizer
from pluralign.online.candidates import renormalised
from pluralign.online.config import OnlineConfig, OnlineRunConfig
from pluralign.online.freetext import draw_seed
from pluralign.online.problem import JudgeLabeler, OnlineProblem
from pluralign.online.rounds import RoundData, train_online
from pluralign.online.samplers import FROM_INITIAL, FROM_POLICY
from pluralign.rl.scoring import encode_prompt
from pluralign.train.config import (DataConfig, LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig, RunConfig,
                                    TrainConfig)
from pluralign.train.offline import train
from pluralign.worlds import tiny_world
from tolerance import assert_close_scaled

TOK = load_tokenizer("byte")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny LM is faster on one thread
    yield
    torch.set_num_threads(threads)
PROBLEM = OnlineProblem.from_world(tiny_world())


def longer_wins(prompt, a, b):
    """A deterministic judge on text: the longer response wins (ties: a coin)."""
    return 0.5 if len(a) == len(b) else float(len(a) > len(b))


def freetext_config(out, *, alpha=0.5, lam=0.5, rounds=2, steps=2, responses=8, seed=0, lora=False,
                    max_new_tokens=6, lr=1e-3, save_every=None):
    return OnlineRunConfig(
        model=ModelConfig(name="tiny", tokenizer="byte", seed=seed, lora=LoraConfig() if lora else None),
        data=DataConfig(max_length=64, max_prompt_length=32),
        objective=ObjectiveConfig(name="ipo", beta=0.5),
        optim=OptimConfig(lr=lr, scheduler="constant", max_grad_norm=None),
        train=TrainConfig(output_dir=str(out), batch_size=responses // 2, seed=seed, log_every=1,
                          save_every=save_every, progress_bar=False, overwrite=True),
        online=OnlineConfig(responses="generate", rounds=rounds, steps_per_round=steps, responses_per_prompt=responses,
                            alpha=alpha, lam=lam, labels="judge", judge="unused:judge", max_new_tokens=max_new_tokens,
                            window=2, plot=False))


@torch.no_grad()
def score_texts(model, prompt, texts, max_prompt_length=32):
    """Summed log pi(text + EOS | prompt) of each text, alone in a plain row (generated text may hold
    bytes such as NUL that preference records refuse, so no record is built)."""
    model.eval()
    prompt_ids = encode_prompt(TOK, prompt)[-max_prompt_length:]
    out = []
    for t in texts:
        ids = TOK(t, add_special_tokens=False)["input_ids"] + [TOK.eos_token_id]
        logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].float()
        out.append(float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum()))
    return np.array(out)


def _round(out, r) -> RoundData:
    return RoundData.load(out / "online" / f"round-{r:06d}.json")


def _group_texts(data):
    return [(PROBLEM.prompts[x], [data.texts[x][i] for i in g]) for x, g in zip(data.prompts, data.rankings)]


def _regenerate(model, data, x, code, cfg):
    n = int(np.sum(data.sources.reshape(len(PROBLEM.prompts), -1)[x] == code))
    ids = encode_prompt(TOK, PROBLEM.prompts[x])[-cfg.data.max_prompt_length:]
    params = SamplingParams(max_new_tokens=cfg.online.max_new_tokens, num_completions=n,
                            seed=draw_seed(cfg.train.seed, data.round, x, code))
    return TransformersGenerator(model, TOK).generate([ids], params).texts(TOK)


@pytest.mark.parametrize("lora", [False, True])
def test_free_text_round_stores_what_it_draws_and_both_snapshots(tmp_path, lora):
    cfg = freetext_config(tmp_path, lora=lora, save_every=2, lr=5e-3)
    result = train_online(cfg, problem=PROBLEM, labeler=JudgeLabeler(None, longer_wins))
    initial = load_model("tiny", TOK, seed=0)
    after_round_0 = None if lora else load_model(str(tmp_path / "checkpoints" / "step-000002" / "model"), TOK)
    for r in (0, 1):
        data = _round(tmp_path, r)
        assert [len(t) for t in data.texts] == [8, 8] and data.rankings.shape == (8, 2)
        for g, (prompt, texts) in enumerate(_group_texts(data)):
            assert len(texts[0]) >= len(texts[1])  # the judge's winner first (equal lengths: a coin)
            assert_close_scaled(data.logp_ref[g], score_texts(initial, prompt, texts), rel=1e-5)
            if after_round_0 is not None and r == 1:
                assert_close_scaled(data.logp[g], score_texts(after_round_0, prompt, texts), rel=1e-5)
        for x in range(2):
            drawn = np.array(data.texts[x], dtype=object)
            src = data.sources.reshape(2, -1)[x]
            assert list(drawn[src == FROM_INITIAL]) == _regenerate(initial, data, x, FROM_INITIAL, cfg)
            if after_round_0 is not None and r == 1:
                assert list(drawn[src == FROM_POLICY]) == _regenerate(after_round_0, data, x, FROM_POLICY, cfg)
    # round 0 starts at the initial weights (LoRA adapters start at zero); round 1's policy has moved
    zero, one = _round(tmp_path, 0), _round(tmp_path, 1)
    assert_close_scaled(np.concatenate(zero.logp), np.concatenate(zero.logp_ref), rel=1e-5)
    assert np.abs(np.concatenate(one.logp) - np.concatenate(one.logp_ref)).max() > 1e-3
    # the monitor's state: the probe (the world's candidates) renormalised under the current policy
    for x, (prompt, cands) in enumerate(zip(PROBLEM.prompts, PROBLEM.candidates)):
        want = renormalised(score_candidates(result.model, TOK, prompt, cands).double().numpy())
        assert_close_scaled(np.array(result.rounds[-1]["online/pi"][x]), want, rel=1e-5)
    row = result.rounds[0]
    assert row["online/from_policy_fraction"] == float(np.mean(zero.sources == FROM_POLICY))
    assert 0 <= row["online/clipped_ratio"] <= 1 and row["online/mean_text_length"] > 0


class FailingJudge:
    """Raises at its n-th call: an interruption while a round is being labelled."""

    def __init__(self, fail_at):
        self.fail_at, self.calls = fail_at, 0

    def __call__(self, prompt, a, b):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return longer_wins(prompt, a, b)


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_seconds"} for row in rows]


@pytest.mark.parametrize("save_every", [3, 4])
def test_free_text_resume_equals_uninterrupted(tmp_path, save_every):
    """Interrupted while labelling round 2, resumed at step 3 (inside round 1: from its stored texts and
    log-probs) or at step 4 (round 2 starts); round 2 is then generated by the restored weights."""

    def cfg(name, resume=False):
        c = freetext_config(tmp_path / name, rounds=3, steps=2, save_every=save_every, lr=5e-3)
        c.train.resume, c.train.overwrite = resume, not resume
        return c

    whole = train_online(cfg("whole"), problem=PROBLEM, labeler=JudgeLabeler(None, longer_wins))
    # judge calls: 6 for the probe's matrices, then 8 per round (2 prompts x 4 pairs): call 23 is round 2's first
    with pytest.raises(RuntimeError, match="interrupted"):
        train_online(cfg("cut"), problem=PROBLEM, labeler=JudgeLabeler(None, FailingJudge(fail_at=6 + 2 * 8 + 1)))
    resumed = train_online(cfg("cut", resume=True), problem=PROBLEM, labeler=JudgeLabeler(None, longer_wins))
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert [r["online/pi"] for r in resumed.rounds] == [r["online/pi"] for r in whole.rounds]
    assert _round(tmp_path / "cut", 2).texts == _round(tmp_path / "whole", 2).texts
    for (name, a), (_, b) in zip(resumed.model.state_dict().items(), whole.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_offline_pool_draws(tmp_path):
    """initial = pool: the draws not from the policy are the pool's texts, drawn uniformly."""
    from pluralign.online.samplers import FROM_POOL

    cfg = freetext_config(tmp_path, lam=0.25, rounds=1, steps=1, responses=40)
    cfg.online.initial = "pool"
    cfg.online.pool = [{"prompt": p, "responses": [" yes", " no"]} for p in PROBLEM.prompts]
    result = train_online(cfg, problem=PROBLEM, labeler=JudgeLabeler(None, longer_wins))
    data = _round(tmp_path, 0)
    src = data.sources.reshape(2, -1)
    assert set(np.unique(src)) == {FROM_POLICY, FROM_POOL}
    pooled = [t for x in range(2) for t, s in zip(data.texts[x], src[x]) if s == FROM_POOL]
    assert set(pooled) == {" yes", " no"} and abs(pooled.count(" yes") - len(pooled) / 2) < 4 * np.sqrt(len(pooled) / 4)
    assert result.rounds[0]["online/from_policy_fraction"] == float(np.mean(src == FROM_POLICY))
