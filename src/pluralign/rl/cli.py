"""``pluralign rm RECIPE.yaml`` (reward model) and ``pluralign rl RECIPE.yaml`` (on-policy RL)."""

from __future__ import annotations


def _rm(args) -> int:
    from pluralign.rl.config import RMRunConfig
    from pluralign.rl.reward_training import train_reward_model
    from pluralign.train.config import load_config

    result = train_reward_model(load_config(args.recipe, args.overrides, cls=RMRunConfig))
    last = result.history[-1] if result.history else {}
    print(f"done: {result.steps} steps; accuracy {last.get('rewards/accuracies', float('nan')):.3f}, held-out "
          f"{last.get('eval_rewards/accuracies', float('nan')):.3f}; run folder {result.output_dir}")
    return 0


def _rl(args) -> int:
    from pluralign.rl.config import RLRunConfig
    from pluralign.rl.training import train_rl
    from pluralign.train.config import load_config

    result = train_rl(load_config(args.recipe, args.overrides, cls=RLRunConfig))
    last = result.history[-1] if result.history else {}
    print(f"done: {result.steps} steps; reward {last.get('reward', float('nan')):.4f}, kl "
          f"{last.get('kl', float('nan')):.4f}; run folder {result.output_dir}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("rm", help="train a reward model (Bradley-Terry / Plackett-Luce) from a YAML recipe")
    p.add_argument("recipe", help="YAML recipe (see recipes/rm_*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. reward_model.head=value")
    p.set_defaults(func=_rm)
    p = sub.add_parser("rl", help="on-policy RLHF (RLOO; KL, PM or conditional-PM penalty) from a YAML recipe")
    p.add_argument("recipe", help="YAML recipe (see recipes/rl_*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. rl.penalty=pm")
    p.set_defaults(func=_rl)
