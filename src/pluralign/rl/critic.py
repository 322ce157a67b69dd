"""The critic of ``rl.estimator=ppo``: V(s_t) at every response token, chosen by ``rl.critic``.

* ``shared``: a linear value head (zero-initialised: every value starts at 0) on the policy's last
  hidden state, TRL's ``AutoModelForCausalLMWithValueHead`` shape; the value loss trains the head
  and, scaled by ``rl.vf_coef``, the policy's own weights.
* ``head``: the same head with its input detached: the value loss trains the head alone, so the
  policy's weights see the policy loss only and the value fit cannot pull the policy away from the
  optimum of its own objective.
* ``reward_model``: a separate model initialised from the reward model ``rl.reward_model`` (its
  backbone and score head, all of its weights trained, with their own parameters in the optimizer):
  V(s_t) is the head at the position that predicts a_t, so it starts as the reward model's score
  r(x, y_<t) of the response so far. This is the first seed paper's authors' PPO (DeepSpeed-Chat
  initialises the critic from the reward model) and TRL's PPOTrainer. The critic reads the policy's
  token ids, so the reward model must share the policy's vocabulary.
* ``auto`` (the default): ``reward_model`` when the rewards come from a reward model with the
  policy's vocabulary (the authors' choice: the critic starts knowing the score it must predict),
  else ``head`` (exact: the value loss leaves the policy's gradient alone).

Checkpoints hold the critic in ``checkpoints/step-N/critic/`` beside ``model/`` (LoRA adapters or
the full policy): ``value_head.safetensors`` for a head, the reward model's ``save_pretrained``
folder for ``reward_model`` (:func:`pluralign.reward_model.load_reward_model` reads it). It is
written and read by accelerate save/load-state hooks, so it lands inside the checkpoint's temporary
folder and a resumed run continues the critic it stopped with. Under FSDP / DeepSpeed accelerate's
sharded state already holds it, and ``critic/`` is not written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pluralign.errors import PluralignError
from pluralign.models import unwrap_peft
from pluralign.reward_model import RewardModel, load_reward_model, load_reward_tokenizer, same_vocabulary, zero_value_head
from pluralign.train.checkpoint import SHARDED, load_exported_weights
from pluralign.train.config import ConfigError

log = logging.getLogger(__name__)

CRITIC_DIR = "critic"


class ValueHeadCritic(nn.Module):
    """``shared`` / ``head``: V = w . h + b on the policy's hidden state h (detached for ``head``)."""

    reads_policy_hidden = True

    def __init__(self, hidden_size: int, detach: bool):
        super().__init__()
        self.head = zero_value_head(hidden_size, torch.float32)  # float32 even on a bf16 LoRA base
        self.detach = detach

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.detach() if self.detach else hidden
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def save(self, folder: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(folder / "value_head.safetensors"))

    def load(self, folder: Path) -> None:
        self.head.load_state_dict(load_file(str(folder / "value_head.safetensors")))


class RewardModelCritic(nn.Module):
    """``reward_model``: a trainable copy of a reward model, V(s_t) = its head at the position
    predicting a_t (:meth:`pluralign.reward_model.RewardModel.token_values`)."""

    reads_policy_hidden = False

    def __init__(self, reward_model: RewardModel):
        super().__init__()
        self.reward_model = reward_model

    def forward(self, batch) -> torch.Tensor:
        return self.reward_model.token_values(batch)

    def save(self, folder: Path) -> None:
        self.reward_model.save_pretrained(folder, safe_serialization=True)

    def load(self, folder: Path) -> None:
        load_exported_weights(self.reward_model.source, folder)


def critic_kind(rl, tokenizer) -> str:
    """The critic ``rl.critic`` names (``auto`` resolved); an error if a reward-model critic cannot
    read the policy's token ids."""
    if rl.critic in ("shared", "head"):
        return rl.critic
    wanted = rl.critic == "reward_model" or rl.reward == "model"
    fits = wanted and rl.reward_model is not None and same_vocabulary(
        load_reward_tokenizer(rl.reward_model, tokenizer), tokenizer)
    if rl.critic == "reward_model" and not fits:
        raise ConfigError(f"rl.critic = 'reward_model': the reward model {rl.reward_model} has another vocabulary than "
                          "the policy, and a critic reads the policy's token ids; use rl.critic=head")
    kind = "reward_model" if fits else "head"
    log.info("PPO critic: %s", kind)
    return kind


def build_critic(rl, policy_model: nn.Module, tokenizer) -> nn.Module:
    """The configured critic for ``policy_model`` (float32 weights)."""
    kind = critic_kind(rl, tokenizer)
    if kind == "reward_model":
        return RewardModelCritic(load_reward_model(rl.reward_model, tokenizer).train())
    return ValueHeadCritic(unwrap_peft(policy_model).config.hidden_size, detach=kind == "head")


def checkpoint_critic(accelerator, critic: nn.Module) -> None:
    """Save ``critic`` into every checkpoint's ``critic/`` folder and restore it on resume
    (register before the run resumes, i.e. before :func:`pluralign.train.wiring.wire_training`)."""
    if accelerator.distributed_type in SHARDED:
        return

    def save(models, weights, output_dir):
        if accelerator.is_main_process:
            folder = Path(output_dir).parent / CRITIC_DIR
            folder.mkdir(parents=True, exist_ok=True)
            critic.save(folder)

    def load(models, input_dir):
        folder = Path(input_dir).parent / CRITIC_DIR
        if not folder.is_dir():
            raise PluralignError(f"{folder}: missing; this checkpoint holds no PPO critic (written by an older "
                                 "version, or by another estimator)")
        critic.load(folder)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
