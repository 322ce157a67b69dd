"""The two update rules of ``pluralign rl``, picked once by ``rl.estimator``.

Both expose ``targets(module, batch, mask, score, token_penalty, direct, k)`` (what a rollout needs
for its loss, computed under no-grad when the rollout is made), ``update(run, step, rollouts,
module, rank) -> (last StepOutcome, metrics)`` and ``updates_per_step`` (optimizer steps per
loop step, for the schedule):

* :class:`ScoreFunctionUpdate` (``rloo``, ``group_normalized``): the k1 penalty enters the
  sequence reward R = s - sum_t c_t, advantages over each prompt's k samples
  (:data:`pluralign.rl.estimators.ADVANTAGES`), minus the penalty's direct term ``direct``
  (w_t [N, T] or None; :func:`pluralign.objectives.penalties.direct_weight`) at each token, one
  optimizer step of ``policy_gradient_loss``;
* :class:`pluralign.rl.ppo.PPOUpdate` (``ppo``): per-token rewards, GAE with a value head,
  ``ppo_epochs x num_minibatches`` clipped-surrogate steps.
"""

from __future__ import annotations

from pluralign.objectives.penalties import sequence_penalty
from pluralign.rl.estimators import get_advantage_estimator, policy_gradient_loss, with_direct_term
from pluralign.rl.scoring import token_logprobs


class ScoreFunctionUpdate:
    updates_per_step = 1

    def __init__(self, estimator: str):
        self.advantages = get_advantage_estimator(estimator)

    def targets(self, module, batch, mask, score, token_penalty, direct, k) -> dict:
        shaped = score - sequence_penalty(token_penalty, mask)
        advantages = self.advantages(shaped.view(-1, k)).reshape(-1)
        return {"advantages": with_direct_term(advantages, direct, mask)}

    def update(self, run, step: int, rollouts: list, module, rank: int):
        def micro_loss(r):
            logp = token_logprobs(module, r.batch, r.mask.shape[1])
            return policy_gradient_loss(logp, r.targets["advantages"], r.mask).mean()

        outcome = run.driver.step(step, rollouts, micro_loss)
        return outcome, {"loss": outcome.loss_sum / len(rollouts)}


def build_update(rl, collator, seed: int):
    """The update rule of ``rl.estimator`` (ppo, or a sequence-level advantage estimator)."""
    if rl.estimator == "ppo":
        from pluralign.rl.ppo import PPOSettings, PPOUpdate

        return PPOUpdate(PPOSettings.of(rl), collator, seed)
    return ScoreFunctionUpdate(rl.estimator)
