"""``pluralign rm RECIPE.yaml`` (reward model) and ``pluralign rl RECIPE.yaml`` (on-policy RL)."""

from __future__ import annotations

from pluralign.recipe_cli import add_recipe_command


def _run(args) -> int:
    from pluralign.rl import config
    from pluralign.train.config import load_config

    if args.command == "rm":
        from pluralign.rl.reward_training import train_reward_model as train

        cls, keys = config.RMRunConfig, ("rewards/accuracies", "eval_rewards/accuracies")
    else:
        from pluralign.rl.training import train_rl as train

        cls, keys = config.RLRunConfig, ("reward", "kl")
    result = train(load_config(args.recipe, args.overrides, cls=cls))
    last = result.history[-1] if result.history else {}
    shown = ", ".join(f"{k} {last.get(k, float('nan')):.4f}" for k in keys)
    print(f"done: {result.steps} steps; {shown}; run folder {result.output_dir}")
    return 0


def register(sub) -> None:
    add_recipe_command(sub, "rm", "train a reward model (Bradley-Terry / Plackett-Luce) from a YAML recipe", _run,
                       "reward_model.head=value")
    add_recipe_command(sub, "rl", "on-policy RLHF (RLOO; KL, PM or conditional-PM penalty) from a YAML recipe", _run,
                       "rl.penalty=pm")
