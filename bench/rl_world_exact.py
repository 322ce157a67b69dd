"""KL-, PM- and conditional-PM-RLHF of the tiny LM on the default world, against the exact optima.

    PYTHONPATH=src python bench/rl_world_exact.py [--sft-steps 600] [--rl-steps 150] [--out runs/rl_world]

1. SFT the tiny model on every candidate of the default world (so it emits candidates).
2. From that SFT model, on-policy RL (RLOO, k completions per prompt) with the world's true
   population reward r(x, y_k) = log sum_g w_g softmax(r_g)_k (``WorldReward("population")``;
   completions that are no candidate get ``--off-candidate`` reward), with each penalty.
3. The LM's renormalised candidate distribution against the closed forms on the same finite
   problem: PM-RLHF -> softmax(r / beta) (at beta = 1 the population target), KL-RLHF ->
   pi_SFT exp(r / beta) / Z. Prints one JSON summary (TV to each optimum, PM divergence and
   minority mass on the world, mass on candidates).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from pluralign.demo import _sft_records
from pluralign.eval.world_eval import candidate_distributions, evaluate_lm
from pluralign.logprobs import score_candidates
from pluralign.models import load_model, load_tokenizer
from pluralign.rl.config import RLConfig, RLRunConfig
from pluralign.rl.rewards import WorldReward
from pluralign.rl.training import train_rl
from pluralign.train.config import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, TrainConfig
from pluralign.train.offline import train
from pluralign.worlds import default_world


def _tv(p, q) -> float:
    return float(np.mean([0.5 * np.abs(a - b).sum() for a, b in zip(p, q)]))


def candidate_mass(model, tokenizer, world) -> float:
    """Mean over prompts of the LM's total probability of the candidate set."""
    return float(np.mean([np.exp(score_candidates(model, tokenizer, p, c).double().numpy()).sum()
                          for p, c in zip(world.prompts, world.candidates)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--rl-steps", type=int, default=150)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--off-candidate", type=float, default=-6.0)
    ap.add_argument("--penalties", default="kl,pm,conditional_pm")
    ap.add_argument("--out", default="runs/rl_world")
    args = ap.parse_args()
    out = Path(args.out)
    world, tokenizer = default_world(), load_tokenizer("byte")
    t0 = time.perf_counter()
    sft_cfg = RunConfig(model=ModelConfig(name="tiny"), objective=ObjectiveConfig(name="sft_all"),
                        optim=OptimConfig(lr=3e-3, scheduler="constant", max_grad_norm=None),
                        train=TrainConfig(output_dir=str(out / "sft"), batch_size=8, max_steps=args.sft_steps,
                                          log_every=50, progress_bar=False, overwrite=True, seed=0))
    sft = train(sft_cfg, model=load_model("tiny", tokenizer), tokenizer=tokenizer, records=_sft_records(world, 32))
    pi_sft = candidate_distributions(sft.model, tokenizer, world)
    reward = WorldReward(world, "population")
    r = [reward.reward_vector(x) for x in range(world.n_prompts)]
    pm_opt = [np.exp(v / args.beta) / np.exp(v / args.beta).sum() for v in r]
    kl_opt = [p * np.exp(v / args.beta) / (p * np.exp(v / args.beta)).sum() for p, v in zip(pi_sft, r)]
    summary = {"settings": vars(args), "sft_seconds": time.perf_counter() - t0,
               "sft": {"candidate_mass": candidate_mass(sft.model, tokenizer, world),
                       "tv_to_pm_optimum": _tv(pi_sft, pm_opt), "tv_to_kl_optimum": _tv(pi_sft, kl_opt),
                       **{k: evaluate_lm(sft.model, tokenizer, world)["mean"][k] for k in ("pm_divergence", "minority_mass")}},
               "exact": {"pm_optimum_minority_mass": float(np.mean([p[world.minority_responses(x)].sum()
                                                                     for x, p in enumerate(pm_opt)])),
                         "kl_optimum_minority_mass": float(np.mean([p[world.minority_responses(x)].sum()
                                                                     for x, p in enumerate(kl_opt)]))}}
    for penalty in args.penalties.split(","):
        rl = RLConfig(reward="world", off_candidate_reward=args.off_candidate, penalty=penalty, beta=args.beta,
                      alpha=args.alpha, beta_pm=args.beta, beta_kl=args.beta, num_completions=args.k,
                      max_new_tokens=24, eval_world=False)
        cfg = RLRunConfig(model=ModelConfig(name="tiny"), rl=rl,
                          optim=OptimConfig(lr=args.lr, scheduler="constant", max_grad_norm=1.0),
                          train=TrainConfig(output_dir=str(out / penalty), batch_size=8, max_steps=args.rl_steps,
                                            log_every=25, progress_bar=False, overwrite=True, seed=0))
        cfg.data.world = None
        t1 = time.perf_counter()
        result = train_rl(cfg, model=copy.deepcopy(sft.model), tokenizer=tokenizer, prompts=world.prompts,
                          reward_functions=[WorldReward(world, "population", args.off_candidate)])
        pi = candidate_distributions(result.model, tokenizer, world)
        m = evaluate_lm(result.model, tokenizer, world)["mean"]
        last = result.history[-1]
        summary[penalty] = {"seconds": time.perf_counter() - t1, "tv_to_pm_optimum": _tv(pi, pm_opt),
                            "tv_to_kl_optimum": _tv(pi, kl_opt), "pm_divergence": m["pm_divergence"],
                            "minority_mass": m["minority_mass"],
                            "candidate_mass": candidate_mass(result.model, tokenizer, world),
                            "last_row": {k: last[k] for k in ("reward", "kl", "entropy", "pm_divergence",
                                                               "completions/mean_length") if k in last}}
        print(json.dumps({penalty: summary[penalty]}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    main()
