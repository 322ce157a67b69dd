"""On-policy RLHF (``pluralign rl RECIPE.yaml``): a short script over the shared loop pieces.

    result = train_rl(load_config("recipes/rl_tiny.yaml", cls=RLRunConfig))

Each optimizer step, for ``train.batch_size`` prompts per micro-batch:

1. sample k completions per prompt from the current policy (one prefill per prompt, KV cache);
2. score them: sequence reward s(x, y) (world, reward model or functions; minus the missing-EOS
   penalty), per-token log-probs of the reference in the shared-prefix layout, and the per-token
   penalty c_t (KL k1/k2/k3, PM or conditional PM; :mod:`pluralign.objectives.penalties`) computed
   from the sampling-time log-probs, so it enters the *reward*: R(y) = s(x, y) - sum_t c_t; a
   reward model scores the decoded texts re-tokenized with its own tokenizer;
3. advantages over each prompt's k samples (RLOO by default, or group-normalised), minus the
   penalty's direct term w_t at each token (conditional PM with beta_pm != beta_kl, whose
   coefficient depends on the action; :func:`pluralign.objectives.penalties.direct_weight`);
4. loss = mean_i -sum_t (A_i - w_t) log pi(a_t|s_t) (score function), one optimizer step: the
   exact gradient of E[s - sum_t c_t] in expectation.

With ``rl.estimator=ppo`` steps 3-4 are PPO's (:mod:`pluralign.rl.ppo`): per-token rewards (the
penalty on every token, the score clipped at the last one), GAE with a critic (``rl.critic``),
then ``rl.ppo_epochs x rl.num_minibatches`` clipped-surrogate optimizer steps per rollout; the
schedule counts those optimizer steps, ``step`` in the metrics counts rollouts.

Rollouts are drawn with seeds that depend only on (train.seed, step, micro-batch, process), and the
prompt order only on (train.seed, epoch), so a resumed run repeats the uninterrupted one.
Metrics (TRL's names): ``reward`` (mean s), ``reward_std`` (mean over prompts of the std of s over
the k samples), ``rewards/<function>``, ``kl`` (mean of sum_t log pi/pi_ref, the k1 sequence KL),
``entropy`` (mean per-token entropy of the policy at sampling time), ``penalty`` (mean sum_t c_t),
``completions/mean_length``, ``completions/clipped_ratio``, ``loss``, ``time/generation``,
``time/scoring`` (rewards, reference log-probs, penalties, targets), ``time/update`` (seconds of
this process), ``pm_divergence`` (mean
Bernoulli KL between sigma(s_1 - s_2) and pi(y_1)/(pi(y_1) + pi(y_2)) over pairs of completions of
a prompt, :mod:`pluralign.rl.metrics`); with a world, the exact
``world/pm_divergence``, ``world/minority_mass``, ``world/tv_to_target`` of the policy's
renormalised candidate distribution.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from pluralign.data.collate import Collator
from pluralign.generation import SamplingParams, TransformersGenerator, missing_eos_penalty
from pluralign.logprobs import SequenceLogprobs
from pluralign.train.setup import build_tokenizer
from pluralign.objectives.penalties import compute_penalty, direct_weight, sequence_penalty
from pluralign.rl.config import RLRunConfig
from pluralign.rl.metrics import rollout_pm_divergence
from pluralign.rl.rewards import ModelReward, WeightedRewards, WorldReward
from pluralign.rl.scoring import encode_prompt, rollout_examples, token_logprobs
from pluralign.rl.updates import build_update
from pluralign.train.config import ConfigError, import_callable
from pluralign.train.offline import TrainResult, total_training_steps
from pluralign.train.reference import build_reference
from pluralign.train.wiring import start_run, wire_training
from pluralign.train.setup import build_policy

log = logging.getLogger(__name__)

NEEDS_REFERENCE = frozenset({"kl", "conditional_pm"})


@dataclass
class Rollout:
    """One micro-batch of scored completions, ready for the update's loss."""

    examples: list  # one TokenizedExample per prompt: the prompt and its k completions
    batch: object  # shared-prefix Batch of the completions
    mask: torch.Tensor  # [N, T]
    targets: dict  # what the update's loss reads (advantages; PPO: old log-probs, values, returns)
    stats: dict  # scalar metrics of this micro-batch
    k: int
    seconds: dict  # wall time of sampling ("generation") and of rewards, reference and targets ("scoring")

    @property
    def num_prompts(self) -> int:
        return len(self.examples)


def world_of(cfg: RLRunConfig):
    from pluralign import worlds

    makers = {"default": worlds.default_world, "tiny": worlds.tiny_world, "bandit": worlds.bandit_world}
    if cfg.data.world is None:
        return None
    if cfg.data.world.name not in makers:
        raise ConfigError(f"data.world.name = {cfg.data.world.name!r}; expected one of {sorted(makers)}")
    return makers[cfg.data.world.name]()


def load_prompts(cfg: RLRunConfig, world, tokenizer) -> list[str]:
    """The prompts: the world's; or from ``data.path`` (any format of the data layer): the distinct
    prompts of a preference file (TRL pairs, HH's implicit prompt, rankings), or the ``prompt``
    field of a prompt-only file (message lists rendered with the chat template)."""
    if world is not None:
        return list(world.prompts)
    if cfg.data.path is None:
        raise ConfigError("rl: set data.world or data.path (a preference or prompt-only file)")
    from pluralign.data.loaders import _open_source, load_preferences

    rows = [(n, row) for n, row in _open_source(cfg.data.path)[2]]
    if any(isinstance(row, dict) and ("chosen" in row or "responses" in row) for _, row in rows[:1]):
        result = load_preferences(cfg.data.path, tokenizer=tokenizer, on_error=cfg.data.on_error,
                                  max_records=cfg.data.max_records, ties=cfg.data.ties)
        log.info("%s", result.report.summary())
        return list(dict.fromkeys(r.prompt for r in result.records))
    prompts = []
    for n, row in rows:
        item = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(item, list):
            item = tokenizer.apply_chat_template(item, tokenize=False, add_generation_prompt=True)
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{cfg.data.path}: row {n}: expected a non-empty 'prompt' (text or messages), got "
                              f"{str(row)[:80]}")
        prompts.append(item)
    return prompts[: cfg.data.max_records] if cfg.data.max_records else prompts


def build_rewards(cfg: RLRunConfig, world, tokenizer, device, functions=None) -> WeightedRewards:
    """The configured reward: ``functions`` (Python callables) override ``rl.reward``."""
    rl = cfg.rl
    if functions is None:
        if rl.reward == "world":
            if world is None:
                raise ConfigError("rl.reward = 'world' needs data.world")
            functions = [WorldReward(world, rl.world_reward, rl.off_candidate_reward)]
        elif rl.reward == "model":
            if rl.reward_model is None:
                raise ConfigError("rl.reward = 'model' needs rl.reward_model (a folder written by `pluralign rm`)")
            from pluralign.reward_model import load_reward_model, load_reward_tokenizer

            # The reward model reads its own tokens: the decoded completions are re-tokenized with its tokenizer.
            rm_tokenizer = load_reward_tokenizer(rl.reward_model, tokenizer)
            functions = [ModelReward(load_reward_model(rl.reward_model, rm_tokenizer).to(device).eval(), rm_tokenizer)]
        else:
            functions = [import_callable(spec, "rl.reward_functions") for spec in rl.reward_functions]
    return WeightedRewards(functions, rl.reward_weights)


def train_rl(cfg: RLRunConfig, *, model=None, tokenizer=None, prompts=None, reward_functions=None,
             on_log=None) -> TrainResult:
    """Run on-policy RL as configured. ``prompts`` (strings) and ``reward_functions`` (callables)
    replace the configured ones; ``on_log(step, model)`` may return extra metrics at logged steps."""
    config, accelerator, out = start_run(cfg)
    is_main, device, world_size = accelerator.is_main_process, accelerator.device, accelerator.num_processes
    rl = cfg.rl

    tokenizer = tokenizer or build_tokenizer(cfg.model)
    world = world_of(cfg)
    prompts = list(prompts) if prompts is not None else load_prompts(cfg, world, tokenizer)
    prompt_ids = [encode_prompt(tokenizer, p)[-cfg.data.max_prompt_length:] for p in prompts]
    rewards = build_rewards(cfg, world, tokenizer, device, reward_functions)
    total_steps = total_training_steps(cfg, len(prompts), world_size)
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    per_epoch = len(prompts) // (bs * accum * world_size)

    model = build_policy(cfg.model, tokenizer, model).to(device)
    policy = SequenceLogprobs(model, chunk_tokens=cfg.train.chunk_tokens, prefix_attention=cfg.model.prefix_attention,
                              compile=cfg.model.compile)
    collator = Collator(tokenizer.pad_token_id, "plain" if cfg.data.layout == "plain" else "shared")
    reference = None
    if rl.penalty in NEEDS_REFERENCE:  # a live reference: rollouts change every step, nothing to cache
        live_cfg = dataclasses.replace(cfg, reference=dataclasses.replace(cfg.reference, precompute=False))
        (reference,) = build_reference(live_cfg, accelerator, model, tokenizer, [prompts], collator, out)

    update = build_update(rl, collator, cfg.train.seed)
    if rl.estimator == "ppo":  # the critic in the same module and optimizer, saved in each checkpoint's critic/
        from pluralign.rl.critic import build_critic, checkpoint_critic
        from pluralign.rl.ppo import ActorCritic

        critic = build_critic(rl, model, tokenizer).to(device)
        policy = ActorCritic(policy, critic)
        checkpoint_critic(accelerator, critic)
    prefix = "scorer.model." if rl.estimator == "ppo" else "model."
    run = wire_training(accelerator, cfg, policy, out, total_steps, config, f"rl/{rl.penalty}", export=lambda m: m.model,
                        prefix=prefix, schedule_steps=total_steps * update.updates_per_step)
    policy = run.module
    generator = TransformersGenerator(accelerator.unwrap_model(policy).model, tokenizer, compile=cfg.model.compile)
    sampling = dict(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                    num_completions=rl.num_completions)
    rank = accelerator.process_index
    order, order_epoch = None, -1
    if on_log is not None and run.start_step == 0 and is_main:
        extra = {"step": 0, **(on_log(0, generator.model) or {})}
        run.history.append(extra)
        run.logger.log(extra)
    for step in range(run.start_step, total_steps):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.train.seed + epoch)).tolist()
            order_epoch = epoch
        base = in_epoch * bs * accum * world_size
        t0 = time.perf_counter()
        rollouts = []
        for m in range(accum):
            lo = base + (m * world_size + rank) * bs
            idx = order[lo : lo + bs]
            seed = ((cfg.train.seed * 1_000_003 + step) * 64 + m) * 4096 + rank
            rollouts.append(make_rollout(cfg, generator, rewards, reference, collator, update, policy,
                                         [prompts[i] for i in idx], [prompt_ids[i] for i in idx],
                                         SamplingParams(seed=seed, **sampling), device))
        t_rollout = time.perf_counter() - t0
        outcome, update_stats = update.update(run, step + 1, rollouts, policy, rank)
        timing = {f"time/{part}": sum(r.seconds[part] for r in rollouts) for part in ("generation", "scoring")}
        timing["time/update"] = time.perf_counter() - t0 - t_rollout
        generator.sync_weights(accelerator.unwrap_model(policy).model)
        done = step + 1
        row = _reduce_stats(accelerator, [r.stats for r in rollouts])
        row.update(update_stats, **timing, rollout_seconds=t_rollout, step_seconds=time.perf_counter() - t0,
                   **run.step_fields(outcome, done, per_epoch))
        logged = done % cfg.train.log_every == 0 or done == total_steps
        if logged and is_main:
            if world is not None and rl.eval_world:
                row.update(world_metrics(generator.model, tokenizer, world))
            if on_log is not None:
                row.update(on_log(done, generator.model) or {})
        run.record(row, done, total_steps, logged, tokenizer, per_epoch)
    run.close()
    return TrainResult(out, total_steps, run.history, accelerator.unwrap_model(policy).model, tokenizer, collator.layout)


@torch.no_grad()
def make_rollout(cfg: RLRunConfig, generator, rewards, reference, collator, update, module, prompts, prompt_ids, params,
                 device) -> Rollout:
    """Sample, score and shape one micro-batch (steps 1 to 3 of the module docstring)."""
    rl, k = cfg.rl, params.num_completions
    t0 = time.perf_counter()
    completions = generator.generate(prompt_ids, params)
    t_generation = time.perf_counter() - t0
    texts = completions.texts(generator.tokenizer)
    repeated = [p for p in prompts for _ in range(k)]
    score, parts = rewards(repeated, texts)
    if rl.missing_eos_penalty is not None:
        score = missing_eos_penalty(score, completions.finish_reasons, rl.missing_eos_penalty)
    examples = rollout_examples(completions)
    batch = collator(examples).to(device)
    mask = completions.mask.to(device)
    logp = completions.logprobs.to(device)
    width = mask.shape[1]
    ref = torch.zeros_like(logp)
    if reference is not None:
        peft = reference.peft_policy
        with peft.disable_adapter() if peft is not None else nullcontext():
            ref = token_logprobs(reference.module, batch, width)
    token_penalty = compute_penalty(rl.penalty, logp, ref, mask, rl.penalty_args())
    direct = direct_weight(rl.penalty, ref, mask, rl.penalty_args())  # the loss's share of the penalty's gradient
    penalty = sequence_penalty(token_penalty, mask)
    score = score.to(device)
    targets = update.targets(module, batch, mask, score, token_penalty, direct, k)
    maskf = mask.float()
    stats = {
        "reward": score.mean(),
        "reward_std": score.view(-1, k).std(-1).mean(),
        "penalty": penalty.mean(),
        "entropy": (completions.entropy.to(device) * maskf).sum() / maskf.sum(),
        "completions/mean_length": maskf.sum(-1).mean(),
        "completions/clipped_ratio": torch.tensor(completions.clipped_ratio, device=device),
    }
    if reference is not None:
        stats["kl"] = ((logp - ref) * maskf).sum(-1).mean()
    pm_div, _, _ = rollout_pm_divergence((logp * maskf).sum(-1).view(-1, k), score.view(-1, k))
    stats["pm_divergence"] = pm_div.mean()
    for name, values in parts.items():
        stats[f"rewards/{name}"] = values.mean().to(device)
    seconds = {"generation": t_generation, "scoring": time.perf_counter() - t0 - t_generation}
    return Rollout(examples, batch, mask, targets, stats, k, seconds)


def _reduce_stats(accelerator, stats: list[dict]) -> dict:
    """Means over micro-batches and processes (every micro-batch has the same number of completions)."""
    names = sorted(stats[0])
    flat = torch.stack([torch.stack([s[n].float() for s in stats]).mean() for n in names])
    if accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="mean")
    return {n: float(v) for n, v in zip(names, flat)}


def world_metrics(model, tokenizer, world) -> dict:
    """Exact metrics of the policy's renormalised candidate distribution on the world."""
    from pluralign.eval.world_eval import evaluate_lm

    mean = evaluate_lm(model, tokenizer, world)["mean"]
    return {f"world/{k}": mean[k] for k in ("pm_divergence", "minority_mass", "tv_to_target", "entropy")}
