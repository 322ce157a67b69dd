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
from pluralign.online.candidates import CandidateTable, renormalised
from pluralign.online.config import OnlineRunConfig, check_online_config
from pluralign.online.monitor import PreferenceCounts, round_metrics
from pluralign.online.problem import (JudgeLabeler, MatrixLabeler, OnlineProblem, RewardLabeler, draw_labels,
                                      import_callable)
from pluralign.online.reference import geometric_reference
from pluralign.online.samplers import FROM_POLICY, SamplingContext, build_sampler
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


@dataclass
class RoundData:
    round: int
    logp: list[np.ndarray]  # snapshot log pi_t per prompt
    prompts: np.ndarray  # [N] prompt index of each ranked group
    rankings: np.ndarray  # [N, m] candidate indices, best first
    sources: np.ndarray  # [X * n] source code of every draw

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"round": self.round, "logp": [v.tolist() for v in self.logp],
                                   "prompts": self.prompts.tolist(), "rankings": self.rankings.tolist(),
                                   "sources": self.sources.tolist()}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "RoundData":
        d = json.loads(path.read_text())
        return cls(d["round"], [np.array(v) for v in d["logp"]], np.array(d["prompts"], dtype=np.int64),
                   np.array(d["rankings"], dtype=np.int64), np.array(d["sources"], dtype=np.int64))


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


def draw_round(r: int, cfg: OnlineRunConfig, sampler, labeler, logp, pi_0, counts, seed: int) -> RoundData:
    """Sample and label round r's groups (depends only on the seed, r, the snapshot and counts)."""
    o = cfg.online
    rng = np.random.default_rng([seed, r])
    ctx = SamplingContext([renormalised(v) for v in logp], pi_0, [counts.p_hat(x) for x in range(len(logp))])
    prompts, rankings, sources = [], [], []
    for x in range(len(logp)):
        idx, src = sampler.draw(x, o.responses_per_prompt, ctx, rng)
        ranked, _ = draw_labels(labeler, x, idx.reshape(-1, o.group_size), rng)
        prompts.append(np.full(ranked.shape[0], x))
        rankings.append(ranked)
        sources.append(src)
    return RoundData(r, logp, np.concatenate(prompts), np.concatenate(rankings), np.concatenate(sources))


def _padded(values: list[np.ndarray], device) -> torch.Tensor:
    out = torch.zeros(len(values), max(v.size for v in values), dtype=torch.float32)
    for x, v in enumerate(values):
        out[x, : v.size] = torch.as_tensor(v, dtype=torch.float32)
    return out.to(device)


def train_online(cfg: OnlineRunConfig, *, model=None, tokenizer=None, problem: OnlineProblem | None = None,
                 labeler=None, instance_rule=None) -> OnlineResult:
    """Run the online loop as configured. ``problem`` (prompts, candidates, preferences), ``labeler``
    (an object with ``matrix(x)``) and ``instance_rule`` (``(P_hat, pi_0) -> mu``) replace the
    configured ones; ``model``/``tokenizer`` replace ``model.name``/``model.tokenizer``."""
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
    table = CandidateTable(tokenizer, problem.prompts, problem.candidates, cfg.data.max_length, cfg.data.max_prompt_length)
    beta_pref = 1.0 / cfg.objective.beta  # the lab's preference strength (IPO: 1/tau)
    sampler = build_sampler(o, beta_pref, instance_rule)

    model = build_policy(cfg.model, tokenizer, model).to(device)
    scorer = SequenceLogprobs(model, chunk_tokens=cfg.train.chunk_tokens, prefix_attention=cfg.model.prefix_attention)
    state_dir = out / "online"
    initial_path = state_dir / "initial.json"
    if cfg.train.resume and initial_path.exists():
        logp_ref = [np.array(v) for v in json.loads(initial_path.read_text())["logp"]]
    else:
        logp_ref = table.snapshot(scorer, device)  # the initial weights: log pi_ref and pi_0
        if is_main:
            state_dir.mkdir(parents=True, exist_ok=True)
            initial_path.write_text(json.dumps({"logp": [v.tolist() for v in logp_ref]}))
    run = wire_training(accelerator, cfg, scorer, out, total_steps, config, f"online/{cfg.objective.name}",
                        export=lambda m: m.model, prefix="model.")
    if o.per_round_schedule:
        restart_schedule_each_round(run.scheduler, run.optimizer, cfg.optim, S)
    scorer = run.module
    pi_0 = [renormalised(v) if o.initial == "policy" else np.full(v.size, 1.0 / v.size) for v in logp_ref]
    counts = PreferenceCounts(table.sizes)
    trajectory, rounds = [], []
    # uniform and instance samplers do not read pi_t: no sampler feedback, lambda = 0 in the lab's criteria
    monitor = dict(alpha=o.alpha, beta=beta_pref, lam=o.lam if o.sampler == "mixture" else 0.0, window=o.window,
                   collapse_entropy=o.collapse_entropy, oscillation_threshold=o.oscillation_threshold)

    def observe(data: RoundData, log_row: bool) -> None:
        trajectory.append([renormalised(v) for v in data.logp])
        for x in range(len(table)):
            counts.add(x, data.rankings[data.prompts == x])
        row, warnings = round_metrics(data.round, trajectory, counts, **monitor)
        if data.sources.size:  # the final state has no draws
            row["online/from_policy_fraction"] = float(np.mean(data.sources == FROM_POLICY))
            row["online/identical_pairs"] = float(np.mean(data.rankings[:, 0] == data.rankings[:, 1]))
        row = {"step": data.round * S, **row}
        rounds.append(row)
        if log_row:
            for w in warnings:
                log.warning("%s", w)
            if is_main:
                run.logger.log(row)

    start_round, mid = divmod(run.start_step, S)
    for r in range(start_round + (1 if mid else 0)):  # replay the monitor over the finished rounds
        observe(RoundData.load(state_dir / f"round-{r:06d}.json"), log_row=False)
    data, ref_t = None, None
    if mid:
        data = RoundData.load(state_dir / f"round-{start_round:06d}.json")
    bs, accum, world, rank = cfg.train.batch_size, cfg.train.grad_accum, accelerator.num_processes, accelerator.process_index
    gb = bs * accum * world
    order = None
    for step in range(run.start_step, total_steps):
        r, j = divmod(step, S)
        if data is None or data.round != r:
            data = draw_round(r, cfg, sampler, labeler, table.snapshot(scorer, device), pi_0, counts, cfg.train.seed)
            if is_main:
                data.save(state_dir / f"round-{r:06d}.json")
            accelerator.wait_for_everyone()
            observe(data, log_row=True)
        if ref_t is None or order is None or order[0] != r:
            ref_t = _padded([geometric_reference(torch.as_tensor(a), torch.as_tensor(b), o.alpha).numpy()
                             for a, b in zip(data.logp, logp_ref)], device)
            n = len(data.prompts)
            order = (r, torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + r)).numpy())
        perm, n = order[1], len(order[1])
        micro = [perm[(j * gb + (m * world + rank) * bs + np.arange(bs)) % n] for m in range(accum)]
        sums = {k: 0.0 for k in STAT_KEYS}

        def micro_loss(idx):
            xs = data.prompts[idx]
            uniq, inv = np.unique(xs, return_inverse=True)
            logp, ntok = table.logps(scorer, uniq.tolist(), device)
            inv_t = torch.as_tensor(inv, device=device)
            ranked = torch.as_tensor(data.rankings[idx], device=device)
            B, m_size = ranked.shape
            inputs = PreferenceLogps(policy=logp[inv_t].gather(1, ranked),
                                     reference=ref_t[torch.as_tensor(xs, device=device)].gather(1, ranked),
                                     num_tokens=ntok[inv_t].gather(1, ranked),
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
        final = RoundData(o.rounds, table.snapshot(scorer, device), np.zeros(0, dtype=np.int64),
                          np.zeros((0, o.group_size), dtype=np.int64), np.zeros(0, dtype=np.int64))
        observe(final, log_row=True)
    if o.plot and is_main:
        from pluralign.online.plots import plot_run

        plot_run(rounds, out / "online_dynamics.png", title=f"{cfg.objective.name}: alpha {o.alpha}, "
                 f"lambda {o.lam}, beta {beta_pref:g}")
    run.close()
    unwrapped = accelerator.unwrap_model(scorer).model
    return OnlineResult(out, total_steps, run.history, unwrapped, tokenizer, "shared", rounds=rounds)


def check_online_config_without_source(cfg: OnlineRunConfig) -> None:
    """:func:`check_online_config` for a caller that passes the problem itself."""
    from dataclasses import replace

    check_online_config(replace(cfg, data=replace(cfg.data, world=None),
                                online=replace(cfg.online, problem="caller:problem")))
