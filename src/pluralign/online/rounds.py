"""The online loop (``pluralign online RECIPE.yaml``): rounds of sample -> label -> train.

    result = train_online(load_config("recipes/online_tiny.yaml", cls=OnlineRunConfig))

Round t (``online.steps_per_round`` optimizer steps each, ``online.rounds`` rounds):

1. snapshot ``log pi_t`` on every prompt's candidate set (exact, :mod:`.candidates`); round 0's
   snapshot is also the fixed ``log pi_ref`` and (``online.initial = policy``) the sampler pi_0;
2. draw ``online.responses_per_prompt`` responses per prompt from the sampler (:mod:`.samplers`),
   group them consecutively into groups of ``online.group_size`` and rank each group with labels
   drawn from the labeler (:mod:`.problem`);
3. train ``objective.name`` on those groups against ``alpha log pi_t + (1 - alpha) log pi_ref``
   (:mod:`.reference`), ``train.batch_size`` groups per micro-batch, cycling through a per-round
   permutation; each step's loss is ``sum_i l_i / batch_size`` per micro-batch (the offline loop's
   reduction), so alpha = 0, lambda = 0 and one round is offline training on that round's data;
4. the monitor row of the state (:mod:`.monitor`) goes to ``metrics.jsonl`` with the step rows.

Everything a round needs to continue is in ``online/round-NNNNNN.json`` (its snapshot and its
ranked groups), and ``online/initial.json`` holds ``log pi_ref``; the draws depend only on
(train.seed, round) and the snapshot, so resuming from any checkpoint (``train.resume``, also in the
middle of a round) repeats the uninterrupted run. The LR schedule restarts every round
(``online.per_round_schedule``): each round is a fresh one-shot problem.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler

from pluralign.logprobs import SequenceLogprobs
from pluralign.models import load_tokenizer
from pluralign.objectives import PreferenceLogps, compute_objective
from pluralign.online.candidates import CandidateTable
from pluralign.online.config import OnlineRunConfig, check_online_config
from pluralign.online.freetext import FreeTextSource, ProbeSet, load_prompt_responses
from pluralign.online.monitor import round_metrics
from pluralign.online.problem import JudgeLabeler, MatrixLabeler, OnlineProblem, RewardLabeler, import_callable
from pluralign.online.samplers import FROM_POLICY, build_sampler
from pluralign.online.sources import CandidateSource, RoundData
from pluralign.train.checkpoint import latest_checkpoint
from pluralign.train.config import ConfigError
from pluralign.train.offline import TrainResult
from pluralign.train.optim import warmup_steps
from pluralign.train.setup import build_policy
from pluralign.train.wiring import start_run, wire_training

log = logging.getLogger(__name__)

STAT_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class OnlineResult(TrainResult):
    rounds: list[dict] = field(default_factory=list)  # monitor rows, rounds 0..T (T = the final state)

    def trajectory(self, x: int = 0) -> np.ndarray:
        """[T + 1, K] candidate distribution of prompt x at the start of every round and at the end."""
        return np.array([row["online/pi"][x] for row in self.rounds])


def load_problem(cfg: OnlineRunConfig) -> OnlineProblem:
    if cfg.online.problem is not None:
        problem = import_callable(cfg.online.problem, "online.problem")()
        if not isinstance(problem, OnlineProblem):
            raise ConfigError(f"online.problem = {cfg.online.problem!r} returned {type(problem).__name__}; "
                              "expected an OnlineProblem")
        return problem
    from pluralign.rl.training import world_of

    return OnlineProblem.from_world(world_of(cfg))


def build_labeler(cfg: OnlineRunConfig, problem: OnlineProblem, tokenizer, device):
    o = cfg.online
    if o.labels == "preference":
        return MatrixLabeler(problem)
    if o.labels == "judge":
        return JudgeLabeler(problem, import_callable(o.judge, "online.judge"))
    from pluralign.reward_model import load_reward_model
    from pluralign.rl.rewards import ModelReward, WeightedRewards

    model = load_reward_model(o.reward_model, tokenizer).to(device).eval()
    return RewardLabeler(problem, WeightedRewards([ModelReward(model, tokenizer)]))


def restart_schedule_each_round(scheduler, optimizer, ocfg, steps_per_round: int) -> None:
    """Make the (already restored) LambdaLR follow ``optim.scheduler`` over each round: the lr at
    step s is the one-round schedule's lr at s mod steps_per_round."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    one_round = get_scheduler(ocfg.scheduler, probe, num_warmup_steps=warmup_steps(ocfg, steps_per_round),
                              num_training_steps=steps_per_round).lr_lambdas[0]
    scheduler.lr_lambdas = [lambda s: one_round(s % steps_per_round)] * len(optimizer.param_groups)
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _drop_round_rows(out: Path, from_step: int) -> None:
    """Before a resume: monitor rows at or after the resumed step are written again by this run."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not ("online/pi" in row and row.get("step", math.inf) >= from_step):  # monitor rows carry online/pi
            kept.append(line)
    path.write_text("".join(kept))


def _resume_step(out: Path) -> int:
    ckpt = latest_checkpoint(out)
    return json.loads((ckpt / "trainer_state.json").read_text())["step"] if ckpt is not None else 0


def train_online(cfg: OnlineRunConfig, *, model=None, tokenizer=None, problem: OnlineProblem | None = None,
                 labeler=None, instance_rule=None) -> OnlineResult:
    """Run the online loop as configured. ``problem`` (prompts, candidates, preferences), ``labeler``
    (candidates: an object with ``matrix(x)``; free text: with ``probabilities(prompt, texts, i, j)``)
    and ``instance_rule`` (``(P_hat, pi_0) -> mu``) replace the configured ones;
    ``model``/``tokenizer`` replace ``model.name``/``model.tokenizer``."""
    if problem is None:
        check_online_config(cfg)
    else:
        check_online_config_without_source(cfg)
    o, S = cfg.online, cfg.online.steps_per_round
    total_steps = o.rounds * S
    if cfg.train.resume:
        _drop_round_rows(Path(cfg.train.output_dir), _resume_step(Path(cfg.train.output_dir)))
    config, accelerator, out = start_run(cfg)
    device, is_main = accelerator.device, accelerator.is_main_process
    tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    problem = problem or load_problem(cfg)
    labeler = labeler or build_labeler(cfg, problem, tokenizer, device)
    beta_pref = 1.0 / cfg.objective.beta  # the lab's preference strength (IPO: 1/tau)
    sampler = build_sampler(o, beta_pref, instance_rule)
    generate = o.responses == "generate"
    probe = pool = None
    if generate:  # every file and table is checked before the model is built
        probe, pool = free_text_inputs(cfg, problem, tokenizer, labeler)
    else:
        table = CandidateTable(tokenizer, problem.prompts, problem.candidates, cfg.data.max_length,
                               cfg.data.max_prompt_length)

    model = build_policy(cfg.model, tokenizer, model).to(device)
    scorer = SequenceLogprobs(model, chunk_tokens=cfg.train.chunk_tokens, prefix_attention=cfg.model.prefix_attention)
    state_dir = out / "online"
    if generate:
        reference = frozen_initial_model(cfg, accelerator, model, tokenizer, out)
    else:
        logp_ref = initial_snapshot(cfg, table, scorer, device, state_dir, is_main)
    run = wire_training(accelerator, cfg, scorer, out, total_steps, config, f"online/{cfg.objective.name}",
                        export=lambda m: m.model, prefix="model.")
    if o.per_round_schedule:
        restart_schedule_each_round(run.scheduler, run.optimizer, cfg.optim, S)
    scorer = run.module
    if generate:
        source = FreeTextSource(cfg, tokenizer, problem.prompts, sampler, labeler, accelerator.unwrap_model(scorer).model,
                                reference, probe, pool)
    else:
        source = CandidateSource(cfg, table, sampler, labeler, logp_ref)
    trajectory, rounds = [], []
    # uniform and instance samplers do not read pi_t: no sampler feedback, lambda = 0 in the lab's criteria
    monitor = dict(alpha=o.alpha, beta=beta_pref, lam=o.lam if o.sampler == "mixture" else 0.0, window=o.window,
                   collapse_entropy=o.collapse_entropy, oscillation_threshold=o.oscillation_threshold)

    def observe(data: RoundData, log_row: bool) -> None:
        state, p_hats, labelled = source.observe(data)
        trajectory.append(state)
        row, warnings = round_metrics(data.round, trajectory, p_hats, labelled, **monitor)
        if data.sources.size:  # the final state has no draws
            row["online/from_policy_fraction"] = float(np.mean(data.sources == FROM_POLICY))
        row = {"step": data.round * S, **row, **data.stats}
        rounds.append(row)
        if log_row:
            for w in warnings:
                log.warning("%s", w)
            if is_main:
                run.logger.log(row)

    start_round, mid = divmod(run.start_step, S)
    for r in range(start_round + (1 if mid else 0)):  # replay the monitor over the finished rounds
        observe(RoundData.load(state_dir / f"round-{r:06d}.json"), log_row=False)
    data, view = None, None
    if mid:
        data = RoundData.load(state_dir / f"round-{start_round:06d}.json")
    bs, accum, world, rank = cfg.train.batch_size, cfg.train.grad_accum, accelerator.num_processes, accelerator.process_index
    gb = bs * accum * world
    order = None
    for step in range(run.start_step, total_steps):
        r, j = divmod(step, S)
        if data is None or data.round != r:
            data = source.draw(r, scorer, device)
            if is_main:
                state_dir.mkdir(parents=True, exist_ok=True)
                data.save(state_dir / f"round-{r:06d}.json")
            accelerator.wait_for_everyone()
            observe(data, log_row=True)
        if view is None or order is None or order[0] != r:
            view = source.view(data, device)
            n = data.num_groups
            order = (r, torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + r)).numpy())
        perm, n = order[1], len(order[1])
        micro = [perm[(j * gb + (m * world + rank) * bs + np.arange(bs)) % n] for m in range(accum)]
        sums = {k: 0.0 for k in STAT_KEYS}

        def micro_loss(idx):
            rows = view.rows[idx]
            uniq, inv = np.unique(rows, return_inverse=True)
            logp, ntok = view.table.logps(scorer, uniq.tolist(), device)
            inv_t = torch.as_tensor(inv, device=device)
            cols = torch.as_tensor(np.ascontiguousarray(view.columns[idx]), device=device)
            B, m_size = cols.shape
            inputs = PreferenceLogps(policy=logp[inv_t].gather(1, cols),
                                     reference=view.reference[torch.as_tensor(rows, device=device)].gather(1, cols),
                                     num_tokens=ntok[inv_t].gather(1, cols),
                                     ranking=torch.arange(m_size, device=device).expand(B, m_size),
                                     num_ranked=torch.full((B,), m_size, device=device),
                                     response_mask=torch.ones(B, m_size, dtype=torch.bool, device=device))
            losses, stats = compute_objective(cfg.objective.name, inputs, cfg.objective.beta, cfg.objective.args)
            for k in STAT_KEYS:
                sums[k] += float(stats[k].mean()) / accum
            return losses.sum() / bs

        t0 = time.perf_counter()
        outcome = run.driver.step(step + 1, micro, micro_loss)
        done = step + 1
        row = {"loss": outcome.loss_sum / accum, **sums, "online/round": r, "step_seconds": time.perf_counter() - t0,
               **run.step_fields(outcome, done, S)}
        logged = done % cfg.train.log_every == 0 or done == total_steps
        run.record(row, done, total_steps, logged, tokenizer, S)
    if not rounds or rounds[-1]["online/round"] < o.rounds:  # the final state
        observe(source.final(o.rounds, scorer, device), log_row=True)
    if o.plot and is_main:
        from pluralign.online.plots import plot_run

        plot_run(rounds, out / "online_dynamics.png", title=f"{cfg.objective.name}: alpha {o.alpha}, "
                 f"lambda {o.lam}, beta {beta_pref:g}")
    run.close()
    unwrapped = accelerator.unwrap_model(scorer).model
    return OnlineResult(out, total_steps, run.history, unwrapped, tokenizer, "shared", rounds=rounds)


def initial_snapshot(cfg, table: CandidateTable, scorer, device, state_dir: Path, is_main: bool) -> list[np.ndarray]:
    """log pi_ref (and pi_0) on the candidates: the initial weights', stored once for resumes."""
    path = state_dir / "initial.json"
    if cfg.train.resume and path.exists():
        return [np.array(v) for v in json.loads(path.read_text())["logp"]]
    logp_ref = table.snapshot(scorer, device)
    if is_main:
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"logp": [v.tolist() for v in logp_ref]}))
    return logp_ref


def frozen_initial_model(cfg, accelerator, model, tokenizer, out: Path):
    """The initial policy, frozen, scored live (a copy, or with LoRA the policy with adapters off)."""
    from dataclasses import replace

    from pluralign.train.reference import build_reference

    live_cfg = replace(cfg, reference=replace(cfg.reference, precompute=False))
    (reference,) = build_reference(live_cfg, accelerator, model, tokenizer, [[]], None, out)
    return reference


def free_text_inputs(cfg, problem: OnlineProblem, tokenizer, labeler):
    """(probe set, offline pool per prompt or None), from the recipe or the problem's candidate sets."""
    o = cfg.online
    if not hasattr(labeler, "probabilities"):
        raise ConfigError(f"online.responses = 'generate': the labeler ({type(labeler).__name__}) cannot label free "
                          "text (it needs probabilities(prompt, texts, i, j): a judge or a reward model)")
    items = (load_prompt_responses(o.probe, "online.probe", 2) if o.probe is not None
             else list(zip(problem.prompts, problem.candidates)))
    probe = ProbeSet(tokenizer, items, cfg.data.max_length, cfg.data.max_prompt_length, labeler)
    pool = None
    if o.initial == "pool":
        pairs = (load_prompt_responses(o.pool, "online.pool", 1) if o.pool is not None
                 else list(zip(problem.prompts, problem.candidates)))
        by_prompt: dict[str, list[str]] = {}
        for p, rs in pairs:
            by_prompt.setdefault(p, []).extend(rs)
        missing = [p for p in problem.prompts if p not in by_prompt]
        if missing:
            raise ConfigError(f"online.pool: no responses for {len(missing)} prompt(s), e.g. {missing[0][:60]!r}")
        pool = [by_prompt[p] for p in problem.prompts]
    return probe, pool


def check_online_config_without_source(cfg: OnlineRunConfig) -> None:
    """:func:`check_online_config` for a caller that passes the problem itself."""
    from dataclasses import replace

    check_online_config(replace(cfg, data=replace(cfg.data, world=None),
                                online=replace(cfg.online, problem="caller:problem")))
