"""PPO-RLHF with a value head: the critic, the rollout targets and the update of ``rl.estimator=ppo``.

As in the first seed paper's PPO (Xiao et al. 2405.16455, DeepSpeed-Chat's ``ppo_trainer.py``;
PAPERS.md section 2.3), per rollout:

1. one no-grad forward of :class:`ActorCritic` gives the old per-token log-probs log pi_old(a_t|s_t)
   and values V_old(s_t) of the sampled completions;
2. per-token rewards ``-c_t`` (the penalty of :mod:`pluralign.objectives.penalties`), plus the
   sequence score clipped to +-``score_clip`` at the last response token
   (:func:`~pluralign.rl.estimators.token_rewards`);
3. GAE(gamma, lambda) on those rewards and V_old gives advantages A_t and returns R_t
   (:func:`~pluralign.rl.estimators.gae`; the authors: gamma = 1, lambda = 0.95);
4. ``ppo_epochs`` passes over the rollout in ``num_minibatches`` minibatches of prompts (a
   prompt's k completions stay together), each one optimizer step through the shared step
   driver of

       loss = mean_i ppo_policy_loss_i + vf_coef * mean_i ppo_value_loss_i

   (clipped surrogate with ``cliprange``, clipped value loss with ``cliprange_value``; each a
   mean over a completion's tokens, then over completions).

The critic (:mod:`pluralign.rl.critic`, ``rl.critic``) is a value head on the policy's last
hidden state (``shared``, or ``head`` with the value loss's gradient stopped there) or a separate
model initialised from the reward model (``reward_model``); one call of :class:`ActorCritic`
gives log-probs and values, the critic's parameters are in the optimizer, and checkpoints hold it
in ``critic/`` beside the policy's ``model/`` (full weights or LoRA adapters). The penalty's direct
term (:func:`pluralign.objectives.penalties.direct_weight`) is subtracted from each token's
advantage. Metrics use TRL's PPO names: ``loss/policy_avg``, ``loss/value_avg``,
``policy/clipfrac_avg``, ``policy/approxkl_avg``, ``val/clipfrac_avg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pluralign.models import unwrap_peft
from pluralign.rl.estimators import gae, ppo_policy_loss, ppo_statistics, ppo_value_loss, token_rewards, with_direct_term
from pluralign.rl.scoring import unflatten_tokens


class ActorCritic(nn.Module):
    """A :class:`~pluralign.logprobs.SequenceLogprobs` scorer and a critic
    (:mod:`pluralign.rl.critic`). ``forward(batch, width)`` -> (log pi(a_t|s_t) [N, width],
    V(s_t) [N, width]), rows in the rollout's prompt-major order; V(s_t) is read at the position
    that predicts a_t."""

    def __init__(self, scorer: nn.Module, critic: nn.Module):
        super().__init__()
        self.scorer, self.critic = scorer, critic

    @property
    def model(self) -> nn.Module:
        return self.scorer.model

    def forward(self, batch, width: int):
        if self.critic.reads_policy_hidden:
            captured = {}

            def keep_hidden(module, args, out):
                captured["hidden"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

            # The decoder's output is the hidden state both logit paths of SequenceLogprobs start from.
            handle = unwrap_peft(self.scorer.model).base_model.register_forward_hook(keep_hidden)
            try:
                flat_logp = self.scorer(batch, per_token=True)
            finally:
                handle.remove()
            flat_values = self.critic(captured["hidden"][batch.gather_row, batch.gather_pos])
        else:
            flat_logp = self.scorer(batch, per_token=True)
            flat_values = self.critic(batch)
        n = batch.num_examples * batch.max_responses
        return (unflatten_tokens(flat_logp, batch.gather_seq, n, width),
                unflatten_tokens(flat_values, batch.gather_seq, n, width))


@dataclass(frozen=True)
class PPOSettings:
    epochs: int
    minibatches: int
    cliprange: float
    cliprange_value: float
    vf_coef: float
    gamma: float
    lam: float
    score_clip: float | None
    whiten_advantages: bool

    @classmethod
    def of(cls, rl) -> "PPOSettings":
        return cls(rl.ppo_epochs, rl.num_minibatches, rl.cliprange, rl.cliprange_value, rl.vf_coef, rl.gamma, rl.lam,
                   rl.score_clip, rl.whiten_advantages)


@torch.no_grad()
def ppo_targets(module: ActorCritic, batch, mask, score, token_penalty, direct, s: PPOSettings) -> dict:
    """Steps 1-3 of the module docstring for one micro-batch: old log-probs and values, advantages
    (minus the penalty's direct term ``direct`` at each token, before whitening) and returns, all
    [N, T] and detached."""
    width = mask.shape[1]
    old_logp, old_values = module(batch, width)
    maskf = mask.to(old_values.dtype)
    old_values = old_values * maskf
    rewards = token_rewards(score, token_penalty, mask, s.score_clip)
    advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
    advantages = with_direct_term(advantages, direct, mask)
    if s.whiten_advantages:
        n = maskf.sum().clamp_min(1)
        mean = (advantages * maskf).sum() / n
        std = (((advantages - mean) * maskf) ** 2).sum().div(n).sqrt()
        advantages = (advantages - mean) / (std + 1e-8) * maskf
    return dict(old_logp=old_logp * maskf, old_values=old_values, advantages=advantages, returns=returns)


@dataclass
class Minibatch:
    batch: object
    mask: torch.Tensor
    targets: dict


def split_rollout(rollout, collator, prompts_idx: list[int], k: int, device) -> Minibatch:
    """The completions of the rollout's prompts ``prompts_idx``, re-collated into their own batch."""
    rows = torch.tensor([b * k + j for b in prompts_idx for j in range(k)], device=device)
    batch = collator([rollout.examples[b] for b in prompts_idx]).to(device)
    return Minibatch(batch, rollout.mask[rows], {name: t[rows] for name, t in rollout.targets.items()})


class PPOUpdate:
    """``epochs x minibatches`` optimizer steps per rollout (step 4 of the module docstring)."""

    def __init__(self, settings: PPOSettings, collator, seed: int):
        self.s, self.collator, self.seed = settings, collator, seed

    @property
    def updates_per_step(self) -> int:
        return self.s.epochs * self.s.minibatches

    def targets(self, module, batch, mask, score, token_penalty, direct, k) -> dict:
        return ppo_targets(module, batch, mask, score, token_penalty, direct, self.s)

    def update(self, run, step: int, rollouts: list, module, rank: int):
        s, k = self.s, rollouts[0].k
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 4096 + rank) % (1 << 62))
        device = rollouts[0].mask.device
        sums: dict[str, float] = {}
        count = 0
        losses, outcome = [], None

        def loss_fn(mb: Minibatch):
            nonlocal count
            t = mb.targets
            logp, values = module(mb.batch, mb.mask.shape[1])
            policy = ppo_policy_loss(logp, t["old_logp"], t["advantages"], mb.mask, s.cliprange).mean()
            value = ppo_value_loss(values, t["old_values"], t["returns"], mb.mask, s.cliprange_value).mean()
            stats = ppo_statistics(logp, t["old_logp"], t["advantages"], values, t["old_values"], t["returns"],
                                   mb.mask, s.cliprange, s.cliprange_value)
            stats.update({"loss/policy_avg": policy, "loss/value_avg": value})
            for name, v in stats.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            count += 1
            return policy + s.vf_coef * value

        for _ in range(s.epochs):
            orders = [torch.randperm(r.num_prompts, generator=gen).tolist() for r in rollouts]
            for j in range(s.minibatches):
                micro = [split_rollout(r, self.collator, sorted(o[j :: s.minibatches]), k, device)
                         for r, o in zip(rollouts, orders)]
                outcome = run.driver.step(step, micro, loss_fn)
                losses.append(outcome.loss_sum / len(micro))
        stats = {name: v / max(1, count) for name, v in sums.items()}
        stats["loss"] = sum(losses) / len(losses)
        return outcome, stats
