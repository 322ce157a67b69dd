"""The recipe commands (``pluralign NAME RECIPE [key.sub=value ...]``): arguments, help and usage errors."""

import pytest

from pluralign.cli import build_parser

# command: (module whose function runs it, its help, the recipe folder it points to, the overrides example)
COMMANDS = {
    "train": ("pluralign.cli", "offline preference optimization from a YAML recipe", "recipes/", "objective.beta=0.2"),
    "rm": ("pluralign.rl.cli", "train a reward model (Bradley-Terry / Plackett-Luce) from a YAML recipe",
           "recipes/rm_*.yaml", "reward_model.head=value"),
    "rl": ("pluralign.rl.cli", "on-policy RLHF (RLOO; KL, PM or conditional-PM penalty) from a YAML recipe",
           "recipes/rl_*.yaml", "rl.penalty=pm"),
    "online": ("pluralign.online.cli", "online iterative IPO/DPO/PL with explicit reference refresh (alpha), on-policy "
               "fraction (lambda) and a dynamics monitor, from a YAML recipe", "recipes/online_*.yaml",
               "online.alpha=0.5 online.lam=1"),
    "em": ("pluralign.em.cli", "EM-DPO: discover latent annotator types and train one policy per type (LoRA adapters "
           "on one base), from a YAML recipe", "recipes/em_*.yaml", "em.n_types=3 em.rounds=2"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_recipe_command_arguments_and_help(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per help text: no wrapping to compare around
    module, what, folder, example = COMMANDS[name]
    parser = build_parser()
    args = parser.parse_args([name, "r.yaml", "a.b=1", "c=[2, 3]"])
    assert (args.command, args.recipe, args.overrides) == (name, "r.yaml", ["a.b=1", "c=[2, 3]"])
    assert args.func.__module__ == module
    assert parser.parse_args([name, "r.yaml"]).overrides == []
    assert f"    {name}  " in parser.format_help() and f"  {what}\n" in parser.format_help()

    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: pluralign {name} [-h] recipe [overrides ...]\n")
    assert f"  recipe      YAML recipe (see {folder})\n" in text
    assert f"  overrides   key.sub=value overrides, e.g. {example}\n" in text

    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name])
    assert exit_info.value.code == 2
    assert "error: the following arguments are required: recipe" in capsys.readouterr().err
