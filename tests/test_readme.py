"""The README's code runs as written.

* Every ```python block is executed from the repository root. One substitution keeps it fast and
  out of the working tree, and is asserted to apply (so it cannot silently stop applying): the
  training call's override list ``["train.max_steps=20"]`` becomes 2 steps on 64 world records
  written to a temporary folder. Results are then checked: the run took its steps, and the lab's DPO optimum satisfies
  its optimality condition.
* Every ``pluralign ...`` command in a ```bash block (also under ``accelerate launch`` /
  ``torchrun``) is parsed by the real argument parser, its recipe exists and its overrides build a
  valid config. Running them needs a Hub model or a GPU, so they are checked, not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
FAST_TRAIN = ('["train.max_steps=20"]',
              '["train.max_steps=2", "data.world.num_records=64", "train.output_dir={out}", '
              '"train.progress_bar=false"]')


def _python_blocks() -> list[str]:
    return [code for language, code in BLOCKS if language == "python"]


def _commands() -> list[list[str]]:
    commands = []
    for language, code in BLOCKS:
        if language != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            words = shlex.split(line) if line and not line.startswith("#") else []
            if words[:1] == ["pluralign"]:
                commands.append(words[1:])
            elif "pluralign.cli" in words:
                commands.append(words[words.index("pluralign.cli") + 1:])
    return commands


def test_python_snippets_run(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert blocks and any(FAST_TRAIN[0] in code for code in blocks)
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for code in blocks:
        code = code.replace(FAST_TRAIN[0], FAST_TRAIN[1].format(out=tmp_path / "run"))
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].steps == 2
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    # dpo_optimum: sum_j mu_j (P_ij - sigmoid(beta (h_i - h_j))) = 0 with h = log(pi / pi_ref)
    P, mu, pi = namespace["P"], namespace["uniform"], namespace["pi"]
    h = np.log(pi / namespace["uniform"])
    residual = (mu[None, :] * (P - 1 / (1 + np.exp(-0.1 * (h[:, None] - h[None, :]))))).sum(1)
    assert pi.sum() == pytest.approx(1.0, rel=1e-12)
    assert np.abs(residual).max() < 1e-9


def test_shell_commands_parse_and_their_recipes_load():
    from pluralign.cli import build_parser
    from pluralign.train.config import load_config

    commands = _commands()
    assert len(commands) >= 5 and {c[0] for c in commands} >= {"train", "validate-data"}
    from pluralign.em.config import EMRunConfig
    from pluralign.online.config import OnlineRunConfig
    from pluralign.rl.config import RLRunConfig, RMRunConfig

    config_types = {"rm": RMRunConfig, "rl": RLRunConfig, "online": OnlineRunConfig, "em": EMRunConfig}
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(words)
        if words[0] in config_types:  # their own config types, loaded with the command's overrides
            assert (ROOT / args.recipe).is_file(), words
            load_config(ROOT / args.recipe, args.overrides, cls=config_types[words[0]])
            continue
        if not hasattr(args, "recipe"):  # eval: a model, no recipe
            continue
        recipe = args.recipe if words[0] == "train" else (args.recipe or [None])[0]
        overrides = args.overrides if words[0] == "train" else (args.recipe or [None])[1:]
        if recipe is not None:
            assert (ROOT / recipe).is_file(), words
            load_config(ROOT / recipe, overrides)
