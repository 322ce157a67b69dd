"""PPO with GAE and a value head: the actor-critic forward against direct computations, and PPO on
a bandit (prompt -> one of K tokens) converging to the closed-form optima of the penalties
(PM: softmax(r / beta); KL: pi_ref exp(r / beta) / Z; conditional PM with separate coefficients,
its direct term in the advantages: the lab's exact optimum) within TV 0.02; the critics.

The bandit's policy and critic are tables (one logit per prompt and token, one value per prompt);
every step draws k completions per prompt, shapes per-token rewards with the penalty and the
clipped score, runs GAE and several epochs of minibatched clipped-surrogate + clipped-value steps:
the PPO functions of the RL loop, on a problem whose answer is known.
"""

import pytest
import torch

from pluralign.objectives.penalties import compute_penalty, direct_weight
from pluralign.rl.estimators import gae, ppo_policy_loss, ppo_value_loss, token_rewards, with_direct_term

from test_rl_bandit import REF, R, _tv, conditional_pm_bandit_optimum  # the bandit of the RLOO convergence tests


def _ppo_bandit(penalty: str, args: dict, steps: int = 150, k: int = 256, epochs: int = 2, minibatches: int = 4,
                seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = REF.log().clone().requires_grad_(True)
    values = torch.zeros(R.shape[0], requires_grad=True)  # V(s_0) per prompt: the tabular critic
    opt = torch.optim.Adam([logits, values], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s / (50 * epochs * minibatches)))
    B = R.shape[0]
    prompt = torch.arange(B).repeat_interleave(k)  # [N]
    mask = torch.ones(B * k, 1, dtype=torch.bool)
    for _ in range(steps):
        with torch.no_grad():
            logp_all = torch.log_softmax(logits, -1)
            actions = torch.multinomial(logp_all.exp(), k, replacement=True, generator=gen).reshape(-1)  # [N]
            old_logp = logp_all[prompt, actions][:, None]
            old_v = values[prompt][:, None]
            ref = REF.log()[prompt, actions][:, None]
            c = compute_penalty(penalty, old_logp, ref, mask, args)
            rewards = token_rewards(R[prompt, actions], c, mask, clip=5.0)
            adv, ret = gae(rewards, old_v, mask, gamma=1.0, lam=0.95)
            adv = with_direct_term(adv, direct_weight(penalty, ref, mask, args), mask)
        for _ in range(epochs):
            order = torch.randperm(B * k, generator=gen)
            for mb in order.chunk(minibatches):
                logp = torch.log_softmax(logits, -1)[prompt[mb], actions[mb]][:, None]
                v = values[prompt[mb]][:, None]
                loss = (ppo_policy_loss(logp, old_logp[mb], adv[mb], mask[mb]).mean()
                        + 0.5 * ppo_value_loss(v, old_v[mb], ret[mb], mask[mb]).mean())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return torch.softmax(logits.detach(), -1)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_ppo_with_pm_penalty_converges_to_softmax_r_over_beta(beta):
    pi = _ppo_bandit("pm", {"beta": beta})
    assert _tv(pi, torch.softmax(R / beta, -1)) < 0.02


def test_ppo_with_kl_penalty_converges_to_reference_tilted_by_reward():
    pi = _ppo_bandit("kl", {"beta": 1.0, "estimator": "k1"})
    target = REF * torch.exp(R)
    assert _tv(pi, target / target.sum(-1, keepdim=True)) < 0.02
    assert _tv(pi, torch.softmax(R, -1)) > 0.1  # the reference's bias stays


def test_ppo_with_conditional_pm_and_separate_coefficients_reaches_the_exact_optimum():
    args = {"alpha": 0.2, "beta_pm": 1.0, "beta_kl": 0.3}
    assert _tv(_ppo_bandit("conditional_pm", args), conditional_pm_bandit_optimum(**args)) < 0.02


def test_actor_critic_reads_log_probs_and_values_at_the_positions_that_predict_each_token():
    """One shared-prefix forward gives log pi(a_t|s_t) (equal to the sampler's) and V(s_t) equal to
    the value head on the hidden state of each sequence computed alone."""
    from pluralign.data.collate import Collator
    from pluralign.generation import SamplingParams, TransformersGenerator
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.models import load_model, load_tokenizer
    from pluralign.rl.critic import ValueHeadCritic
    from pluralign.rl.ppo import ActorCritic
    from pluralign.rl.scoring import encode_prompt, rollout_batch

    tok = load_tokenizer("byte")
    model = load_model("tiny", tok, seed=0)
    prompts = [encode_prompt(tok, "Hello"), encode_prompt(tok, "A longer prompt")]
    out = TransformersGenerator(model, tok).generate(prompts, SamplingParams(max_new_tokens=5, num_completions=3, seed=1))
    ac = ActorCritic(SequenceLogprobs(model), ValueHeadCritic(model.config.hidden_size, detach=False))
    head = ac.critic.head
    assert float(head.weight.detach().abs().sum()) == 0.0  # zero-initialised: every value starts at 0
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(0))
        head.bias.fill_(0.3)
    width = out.mask.shape[1]
    with torch.no_grad():
        logp, values = ac(rollout_batch(out, Collator(tok.pad_token_id, "shared")), width)
    mask = out.mask
    torch.testing.assert_close(logp * mask, out.logprobs, rtol=1e-4, atol=1e-5)
    for n, ids in enumerate(out.completion_ids()):
        prompt = list(prompts[n // 3])
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([prompt + ids])).last_hidden_state[0]
            want = head(hidden[len(prompt) - 1 : len(prompt) - 1 + len(ids)]).squeeze(-1)
        torch.testing.assert_close(values[n, : len(ids)], want, rtol=1e-4, atol=1e-5)
        assert float(values[n, len(ids):].abs().sum()) == 0.0


def _rollout(tok, model, seed=1):
    from pluralign.data.collate import Collator
    from pluralign.generation import SamplingParams, TransformersGenerator
    from pluralign.rl.scoring import encode_prompt, rollout_batch

    prompts = [encode_prompt(tok, "Hello"), encode_prompt(tok, "A longer prompt")]
    out = TransformersGenerator(model, tok).generate(prompts, SamplingParams(max_new_tokens=5, num_completions=3, seed=seed))
    return prompts, out, rollout_batch(out, Collator(tok.pad_token_id, "shared"))


def test_the_reward_model_critic_starts_at_the_reward_models_scores(tmp_path):
    """rl.critic=reward_model: V(s_t) of the initial critic is the reward model's head at the
    position predicting a_t, i.e. its score r(x, y_<t) of the response so far (for t >= 1 the RM's
    score with y_<t as the response, read at that response's last token)."""
    from pluralign.data.collate import Collator
    from pluralign.data.tokenize import TokenizedExample
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.models import load_model, load_tokenizer
    from pluralign.reward_model import RewardModel, load_reward_model
    from pluralign.rl.config import RLConfig
    from pluralign.rl.critic import RewardModelCritic, build_critic
    from pluralign.rl.ppo import ActorCritic

    tok = load_tokenizer("byte")
    rm = RewardModel.with_value_head(load_model("tiny", tok, seed=3))
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
        rm.head.bias.fill_(-0.2)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(str(tmp_path / "rm"))
    policy = load_model("tiny", tok, seed=0)
    critic = build_critic(RLConfig(reward="model", reward_model=str(tmp_path / "rm")), policy, tok)  # critic=auto
    assert isinstance(critic, RewardModelCritic)
    prompts, out, batch = _rollout(tok, policy)
    with torch.no_grad():
        _, values = ActorCritic(SequenceLogprobs(policy), critic)(batch, out.mask.shape[1])
    fresh = load_reward_model(tmp_path / "rm", tok).eval()  # the saved reward model, scored by hand
    collator = Collator(tok.pad_token_id, "shared")
    for n, ids in enumerate(out.completion_ids()):
        prompt = list(prompts[n // 3])
        with torch.no_grad():
            hidden = fresh.backbone(input_ids=torch.tensor([prompt + ids])).last_hidden_state[0]
            want = fresh.head(hidden[len(prompt) - 1 : len(prompt) - 1 + len(ids)]).squeeze(-1)
            partial = fresh(collator([TokenizedExample(tuple(prompt), tuple(tuple(ids[:t]) for t in range(1, len(ids))),
                                                       tuple(range(len(ids) - 1)))]))[0] if len(ids) > 1 else None
        torch.testing.assert_close(values[n, : len(ids)], want, rtol=1e-4, atol=1e-5)
        if partial is not None:
            torch.testing.assert_close(values[n, 1 : len(ids)], partial, rtol=1e-4, atol=1e-5)
    assert float(values.abs().sum()) > 0


@pytest.mark.parametrize("kind", ["shared", "head"])
def test_the_head_critic_stops_the_value_gradient_at_the_policy(kind):
    """rl.critic=head: the value loss trains the head alone; shared: it reaches the policy too."""
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.models import load_model, load_tokenizer
    from pluralign.rl.config import RLConfig
    from pluralign.rl.critic import build_critic
    from pluralign.rl.ppo import ActorCritic

    tok = load_tokenizer("byte")
    policy = load_model("tiny", tok, seed=0)
    critic = build_critic(RLConfig(critic=kind), policy, tok)
    with torch.no_grad():
        critic.head.weight.fill_(0.1)  # a non-zero head, so the value has a gradient to pass on
    _, out, batch = _rollout(tok, policy)
    _, values = ActorCritic(SequenceLogprobs(policy), critic)(batch, out.mask.shape[1])
    (values * out.mask).pow(2).sum().backward()
    assert float(critic.head.weight.grad.abs().sum()) > 0
    policy_grad = sum(float(p.grad.abs().sum()) for p in policy.parameters() if p.grad is not None)
    assert (policy_grad > 0) == (kind == "shared")
