"""``pluralign aggregate RUN_DIR [options]`` (see :mod:`pluralign.mixture.aggregate`)."""

from __future__ import annotations

import argparse
from typing import Any

from pluralign.mixture.aggregate import MODES, SOLVERS
from pluralign.mixture.regret import REGRET_KINDS


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def aggregate_command(args: argparse.Namespace) -> int:
    from pluralign.mixture.aggregate import aggregate, summary

    result = aggregate(args.run_dir, prompts_file=args.prompts, mode=args.mode, regret_kind=args.regret,
                       importance=args.importance, num_completions=args.num_completions,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, max_prompts=args.max_prompts,
                       seed=args.seed, hedge_steps=args.hedge_steps, solver=args.solver, out=args.out)
    out = args.out or f"{args.run_dir}/aggregate"
    print(summary(result))
    print(f"written: {out}/regret.json and the mixture policy {out}/mixture")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("aggregate", help="min-max-regret weights (LP and Hedge) for an EM run's type "
                              "policies, and the mixture policy", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="EM run directory (written by pluralign em)")
    p.add_argument("--prompts", default=None, help="prompt file (.txt lines, JSONL with 'prompt', or a preference "
                   "data file) to sample on, instead of the run's data")
    p.add_argument("--mode", default="auto", choices=MODES, help="world: exact on the run's world; sampled: from "
                   "generations; auto: world when the run's data is a world and no --prompts is given")
    p.add_argument("--regret", default="reward", choices=REGRET_KINDS,
                   help="reward: L[i,i]-L[i,j] (the authors'); kl: KL-regularised, L[j,j]-L[i,j]")
    p.add_argument("--importance", type=_floats, default=None, help="per-type importance weights c, e.g. 1,4")
    p.add_argument("--num-completions", type=int, default=4, help="generations per prompt and type")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="1 samples each type policy itself; other "
                   "values estimate L under the tempered sampler")
    p.add_argument("--max-prompts", type=int, default=64, help="distinct prompts used at most (first ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hedge-steps", type=int, default=100_000, help="optimistic Hedge iterations T (step 5/sqrt(T))")
    p.add_argument("--solver", default="lp", choices=SOLVERS, help="whose weights the saved mixture uses")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/aggregate)")
    p.set_defaults(func=aggregate_command)
    return p
