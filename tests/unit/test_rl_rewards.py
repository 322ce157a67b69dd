"""A reward model whose tokenizer differs from the policy's scores the RL loop's texts with its own."""

import pytest
import torch

from pluralign.models import _bytes_to_unicode, build_tiny_model, load_tokenizer
from pluralign.reward_model import RewardModel, same_vocabulary


def reversed_byte_tokenizer():
    """The byte tokenizer's bytes under other ids (byte b is id 255 - b): same texts, other tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: 255 - b for b, ch in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def other_rm(tmp_path_factory):
    """A value-head reward model on the reversed tokenizer, saved as `pluralign rm` saves one."""
    folder = tmp_path_factory.mktemp("rm_other_tokenizer")
    tok = reversed_byte_tokenizer()
    rm = RewardModel.with_value_head(build_tiny_model(tok, seed=5))
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    rm.save_pretrained(folder)
    tok.save_pretrained(str(folder))
    return folder, rm.eval(), tok


def test_the_reward_model_reads_the_completions_with_its_own_tokenizer(other_rm):
    from pluralign.rl.config import RLConfig, RLRunConfig
    from pluralign.rl.training import build_rewards
    from pluralign.train.config import DataConfig

    folder, rm, rm_tok = other_rm
    policy_tok = load_tokenizer("byte")
    assert not same_vocabulary(policy_tok, rm_tok)
    cfg = RLRunConfig(data=DataConfig(world=None), rl=RLConfig(reward="model", reward_model=str(folder)))
    rewards = build_rewards(cfg, None, policy_tok, "cpu")
    prompts, completions = ["Hello", "Hello", "Bye"], [" there", "!", " now"]
    got, _ = rewards(prompts, completions)
    # by hand: the reward model on its own ids of prompt + completion + its EOS, read at the EOS
    want = []
    for p, c in zip(prompts, completions):
        ids = rm_tok(p, add_special_tokens=False)["input_ids"] + rm_tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = rm.backbone(input_ids=torch.tensor([ids + [rm_tok.eos_token_id]])).last_hidden_state[0, -1]
            want.append(float(rm.head(hidden)))
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-5)
    # the policy's ids fed to this model (what the loop did before) give other numbers
    wrong = []
    for p, c in zip(prompts, completions):
        ids = policy_tok(p + c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = rm.backbone(input_ids=torch.tensor([ids + [rm_tok.eos_token_id]])).last_hidden_state[0, -1]
            wrong.append(float(rm.head(hidden)))
    assert float((torch.tensor(wrong) - got).abs().max()) > 1e-3


def test_a_critic_needs_the_policys_vocabulary(other_rm):
    from pluralign.rl.config import RLConfig
    from pluralign.rl.critic import critic_kind
    from pluralign.train.config import ConfigError

    folder, _, _ = other_rm
    policy_tok = load_tokenizer("byte")
    assert critic_kind(RLConfig(reward="model", reward_model=str(folder)), policy_tok) == "head"  # auto falls back
    with pytest.raises(ConfigError, match="rl.critic = 'reward_model'.*vocabulary"):
        critic_kind(RLConfig(reward="model", reward_model=str(folder), critic="reward_model"), policy_tok)
