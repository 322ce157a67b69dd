"""``pluralign online RECIPE.yaml``: online iterative alignment (see :mod:`pluralign.online.rounds`)."""

from __future__ import annotations

from pluralign.recipe_cli import add_recipe_command


def _run(args) -> int:
    from pluralign.online.config import OnlineRunConfig
    from pluralign.online.rounds import train_online
    from pluralign.train.config import load_config

    result = train_online(load_config(args.recipe, args.overrides, cls=OnlineRunConfig))
    last = result.rounds[-1]
    print(f"done: {len(result.rounds) - 1} rounds, {result.steps} steps; final entropy {last['online/entropy']:.4f}, "
          f"cycle strength {last['online/cycle_strength']:.3g}, collapsed prompts {last['online/collapsed_prompts']}; "
          f"run folder {result.output_dir}")
    for w in last["online/warnings"]:
        print(f"warning: {w}")
    return 0


def register(sub) -> None:
    add_recipe_command(sub, "online", "online iterative IPO/DPO/PL with explicit reference refresh (alpha), "
                                      "on-policy fraction (lambda) and a dynamics monitor, from a YAML recipe",
                       _run, "online.alpha=0.5 online.lam=1")
