"""``pluralign em RECIPE.yaml``: EM-DPO over latent annotator types (see :mod:`pluralign.em.loop`)."""

from __future__ import annotations

from pluralign.recipe_cli import add_recipe_command


def _run(args) -> int:
    from pluralign.em.config import EMRunConfig
    from pluralign.em.loop import run_em
    from pluralign.train.config import load_config

    result = run_em(load_config(args.recipe, args.overrides, cls=EMRunConfig))
    last = result.rounds[-1] if result.rounds else {}
    ari = f", ARI {last['ari']:.3f} against the known groups" if "ari" in last else ""
    print(f"done: {len(result.rounds)} EM rounds, {len(result.type_weights)} types with weights "
          f"{[round(float(w), 3) for w in result.type_weights]}, log-likelihood {last.get('log_likelihood', float('nan')):.4f}"
          f"{ari}; run folder {result.output_dir}")
    return 0


def register(sub) -> None:
    add_recipe_command(sub, "em", "EM-DPO: discover latent annotator types and train one policy per type "
                                  "(LoRA adapters on one base), from a YAML recipe", _run, "em.n_types=3 em.rounds=2")
