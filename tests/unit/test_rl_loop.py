"""The reward-model and RL loops end to end on the tiny model: both CLIs, metrics, resume."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pluralign.cli import main
from pluralign.reward_model import load_reward_model
from pluralign.rl.config import RLRunConfig
from pluralign.rl.training import train_rl
from pluralign.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
TRL_METRICS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio")


def _rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def prefers_letter_a(prompts, completions, **columns):
    """A reward function for tests: the share of 'a' characters in the completion."""
    return [c.count("a") / max(1, len(c)) for c in completions]


@pytest.fixture(scope="module")
def reward_model_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    rc = main(["rm", str(ROOT / "recipes/rm_tiny.yaml"), f"train.output_dir={out}", "train.max_steps=6",
               "train.batch_size=8", "train.eval_every=6", "train.save_every=6", "data.world.num_records=128",
               "train.progress_bar=false", "reward_model.head=value"])
    assert rc == 0
    return out


def test_rm_cli_trains_and_saves_a_loadable_reward_model(reward_model_run):
    rows = _rows(reward_model_run)
    last = rows[-1]
    for key in ("loss", "rewards/accuracies", "rewards/ranking_accuracy", "eval_rewards/accuracies",
                "eval_rewards/accuracies/majority", "eval_rewards/accuracies/minority"):
        assert key in last and math.isfinite(last[key]), key
    assert rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-3)  # zero-initialised value head: r = 0
    tok_dir = reward_model_run / "checkpoints/step-000006/model"
    from pluralign.models import load_tokenizer

    rm = load_reward_model(tok_dir, load_tokenizer("byte"))
    assert rm.kind == "value" and float(rm.head.weight.detach().abs().sum()) > 0


def test_rl_cli_end_to_end_with_the_trained_reward_model(reward_model_run, tmp_path):
    rm_dir = reward_model_run / "checkpoints/step-000006/model"
    rc = main(["rl", str(ROOT / "recipes/rl_tiny.yaml"), f"train.output_dir={tmp_path / 'rl'}", "train.max_steps=2",
               "train.batch_size=2", "rl.max_new_tokens=4", "train.log_every=1", "train.progress_bar=false",
               f"rl.reward_model={rm_dir}", "rl.penalty=conditional_pm", "rl.alpha=0.01"])
    assert rc == 0
    rows = _rows(tmp_path / "rl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in TRL_METRICS + ("loss", "pm_divergence", "rewards/reward_model", "world/minority_mass", "world/tv_to_target"):
        assert key in rows[-1] and math.isfinite(rows[-1][key]), key
    assert rows[-1]["completions/mean_length"] <= 4
    assert (tmp_path / "rl/checkpoints/step-000002/model/model.safetensors").exists()


def _rl_cfg(out, *extra):
    return load_config(ROOT / "recipes/rl_tiny.yaml", [
        f"train.output_dir={out}", "train.max_steps=4", "train.batch_size=2", "train.save_every=2",
        "train.log_every=1", "train.progress_bar=false", "rl.reward=functions", "rl.max_new_tokens=4",
        "rl.reward_functions=[test_rl_loop:prefers_letter_a]", "rl.penalty=kl", "optim.lr=1e-3", *extra],
        cls=RLRunConfig)


class _Interrupt(Exception):
    pass


PPO = ("rl.estimator=ppo", "rl.ppo_epochs=2", "rl.num_minibatches=2")
# estimator variants: overrides, the file of the policy's weights in model/, the critic's file in critic/
VARIANTS = {
    "rloo": ((), "model.safetensors", None),
    "ppo": (PPO, "model.safetensors", "value_head.safetensors"),  # critic auto: a head, gradient stopped
    "ppo_reward_model_critic": (("rl.estimator=ppo", "rl.critic=reward_model"), "model.safetensors", "model.safetensors"),
    "ppo_lora": (("rl.estimator=ppo", "model.lora={r: 4, alpha: 8}", "rl.critic=shared"), "adapter_model.safetensors",
                 "value_head.safetensors"),
}


def _assert_same_tensors(a_path, b_path):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    return a


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rl_resume_equals_an_uninterrupted_run(tmp_path, variant, request):
    extra, model_file, critic_file = VARIANTS[variant]
    if variant == "ppo_reward_model_critic":
        rm_dir = request.getfixturevalue("reward_model_run") / "checkpoints/step-000006/model"
        extra = extra + (f"rl.reward_model={rm_dir}",)
    full = train_rl(_rl_cfg(tmp_path / "full", *extra))

    def stop_at_3(step, model):
        if step == 3:
            raise _Interrupt
    with pytest.raises(_Interrupt):  # killed during step 3, after the checkpoint of step 2
        train_rl(_rl_cfg(tmp_path / "cut", *extra), on_log=stop_at_3)
    resumed = train_rl(_rl_cfg(tmp_path / "cut", "train.resume=true", *extra))
    final = "checkpoints/step-000004"
    weights = _assert_same_tensors(tmp_path / "full" / final / "model" / model_file,
                                   tmp_path / "cut" / final / "model" / model_file)
    assert not any(k.startswith("value_head") for k in weights)  # model/ is the policy alone
    assert (tmp_path / "full" / final / "critic").is_dir() == (critic_file is not None)
    if critic_file is not None:  # the critic is saved and resumed beside the policy
        critic = _assert_same_tensors(tmp_path / "full" / final / "critic" / critic_file,
                                      tmp_path / "cut" / final / "critic" / critic_file)
        if variant == "ppo_reward_model_critic":  # it started as the reward model and trained
            start = load_file(str(rm_dir / "model.safetensors"))
            assert start.keys() == critic.keys()
            assert any(not torch.equal(start[k], critic[k]) for k in start)
    ra, rb = _rows(tmp_path / "full"), [r for r in _rows(tmp_path / "cut") if r["step"] > 0]
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        keys = ("reward", "kl", "loss", "completions/mean_length")
        for key in keys + (("loss/value_avg", "policy/clipfrac_avg") if critic_file else ()):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert resumed.history[-1]["step"] == full.history[-1]["step"] == 4


def test_rl_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rl.penalty"):
        _rl_cfg(tmp_path / "x", "rl.penalty=entropy")
    with pytest.raises(ConfigError, match="rl.num_completions"):
        _rl_cfg(tmp_path / "x", "rl.num_completions=1")
    with pytest.raises(ConfigError, match="rl.num_minibatches"):
        _rl_cfg(tmp_path / "x", "rl.estimator=ppo", "rl.num_minibatches=3")
    with pytest.raises(ConfigError, match="rl.estimator"):
        _rl_cfg(tmp_path / "x", "rl.estimator=ppo_typo")
    with pytest.raises(ConfigError, match="rl.critic"):
        _rl_cfg(tmp_path / "x", "rl.estimator=ppo", "rl.critic=reward_model", "rl.reward_model=null")  # none to start from
    with pytest.raises(ConfigError, match="rl.reward_functions"):
        train_rl(_rl_cfg(tmp_path / "y", "rl.reward_functions=[nowhere:nothing]"))


@pytest.mark.parametrize("recipe", ["rm_tiny", "rm_hh", "rm_smollm2", "rl_tiny", "rl_hh", "rl_smollm2"])
def test_recipes_load(recipe):
    from pluralign.rl.config import RMRunConfig

    cfg = load_config(ROOT / f"recipes/{recipe}.yaml", cls=RMRunConfig if recipe.startswith("rm") else RLRunConfig)
    assert cfg.train.output_dir == f"runs/{recipe}"


def test_prompts_from_preference_and_prompt_only_files(tmp_path):
    from pluralign.models import load_tokenizer
    from pluralign.rl.training import load_prompts

    pairs, only = tmp_path / "pairs.jsonl", tmp_path / "prompts.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i % 2}", "chosen": " a", "rejected": " b"}) + "\n" for i in range(4)))
    only.write_text(json.dumps({"prompt": "Hello"}) + "\n" + json.dumps({"prompt": [{"role": "user", "content": "Hi"}]}) + "\n")
    tok = load_tokenizer("byte")
    cfg = _rl_cfg(tmp_path / "x", f"data.path={pairs}", "data.world=null")
    assert load_prompts(cfg, None, tok) == ["Q0", "Q1"]
    cfg = _rl_cfg(tmp_path / "x", f"data.path={only}", "data.world=null")
    assert load_prompts(cfg, None, tok) == ["Hello", "<|user|>Hi\n<|assistant|>"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(ConfigError, match="row 1"):
        load_prompts(_rl_cfg(tmp_path / "x", f"data.path={tmp_path / 'bad.jsonl'}", "data.world=null"), None, tok)
