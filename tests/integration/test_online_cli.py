"""``pluralign online RECIPE.yaml`` end to end on a small run, and recipe errors that name the key."""

import json

import pytest

from pluralign.cli import main
from pluralign.online.config import OnlineRunConfig, check_online_config
from pluralign.train.config import ConfigError, load_config

RECIPE = "recipes/online_rps.yaml"
SMALL = ["online.rounds=2", "online.steps_per_round=3", "online.responses_per_prompt=40", "train.batch_size=20",
         "train.save_every=2", "train.log_every=1"]


def test_cli_runs_a_recipe_and_writes_metrics_state_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["online", RECIPE, f"train.output_dir={out}", *SMALL]) == 0
    assert "done: 2 rounds, 6 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    monitor = [r for r in rows if "online/pi" in r]
    assert [r["online/round"] for r in monitor] == [0, 1, 2] and [r["step"] for r in monitor] == [0, 3, 6]
    assert all(abs(sum(r["online/pi"][0]) - 1) < 1e-9 for r in monitor)
    assert sum("loss" in r for r in rows) == 6
    assert (out / "online" / "round-000001.json").exists() and (out / "online_dynamics.png").stat().st_size > 0
    # the warning of the lab's 3-cycle criterion (beta 8, alpha 0.5: 2.17 > 1 for the true P)
    assert any("persistent oscillation" in w for w in monitor[-1]["online/warnings"])
    # a finished run resumed does nothing more and keeps its rows
    assert main(["online", RECIPE, f"train.output_dir={out}", *SMALL, "train.resume=true"]) == 0
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows


@pytest.mark.parametrize("override, message", [
    ("online.alpha=1.5", "online.alpha = 1.5; expected a number in \\[0, 1\\]"),
    ("online.sampler=greedy", "online.sampler = 'greedy'"),
    ("online.responses_per_prompt=5", "online.responses_per_prompt = 5"),
    ("online.group_size=4", "online.group_size = 4 ranks lists; objective.name = 'ipo' takes pairs"),
    ("objective.name=sft", "the online loop trains one of"),
    ("online.labels=judge", "online.labels = 'judge' needs online.judge"),
])
def test_bad_recipe_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        check_online_config(load_config(RECIPE, [override], cls=OnlineRunConfig))


def test_problem_must_be_importable():
    from pluralign.online.rounds import load_problem

    with pytest.raises(ConfigError, match="online.problem: cannot import 'nowhere:thing'"):
        load_problem(load_config(RECIPE, ["online.problem=nowhere:thing"], cls=OnlineRunConfig))


@pytest.mark.parametrize("objective, group_size, first_loss", [
    ("dpo", 2, 0.6931471805599453),  # -log sigma(0) = ln 2 at policy = reference
    ("plackett_luce", 3, 1.791759469228055),  # -log(1/3 * 1/2) = ln 6 for a full ranking of 3 at equality
    ("ipo", 2, 16.0),  # (0 - 1/(2 tau))^2 with tau = 0.125
])
def test_first_step_loss_at_policy_equal_reference(tmp_path, objective, group_size, first_loss):
    """Round 0's reference is the policy itself for every alpha (log pi_0 = log pi_ref), so the
    first step's loss is each objective's value at zero log-ratios."""
    from pluralign.online.demo_study import rps_problem
    from pluralign.online.rounds import train_online

    cfg = load_config(RECIPE, [f"train.output_dir={tmp_path}", "online.rounds=1", "online.steps_per_round=1",
                               f"online.group_size={group_size}", f"online.responses_per_prompt={6 * group_size}",
                               "train.batch_size=6", f"objective.name={objective}", "online.alpha=0.3",
                               "online.plot=false"], cls=OnlineRunConfig)
    result = train_online(cfg, problem=rps_problem())
    assert result.history[0]["loss"] == pytest.approx(first_loss, rel=1e-5)
