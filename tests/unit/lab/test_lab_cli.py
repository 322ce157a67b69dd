"""The lab's command line: outputs, one-line usage errors, defaults in --help, honest labels."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pluralign.lab import cli, plots

SRC = str(Path(__file__).resolve().parents[3] / "src")


def run_module(*args):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "pluralign.lab", *args], capture_output=True, text=True, env=env)


def test_importing_the_lab_does_not_import_torch():
    code = "import sys, pluralign.lab, pluralign.lab.cli; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_collapse_command_writes_json_and_png(tmp_path, capsys):
    assert cli.main(["collapse", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "collapse.json").read_text())
    assert data["reference_numbers"]["kl_beta_1_ref_0.9_majority"] == pytest.approx(0.904, abs=5e-4)
    assert (tmp_path / "collapse.png").stat().st_size > 0
    assert "0.982" in capsys.readouterr().out


def test_phase_command_on_a_small_grid(tmp_path):
    assert cli.main(["phase", "--grid", "6", "--steps", "600", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "phase.json").read_text())
    assert data["agreement_off_boundary"] > 0.9
    assert (tmp_path / "phase.png").exists()


def test_register_adds_a_lab_command_to_a_parent_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="pluralign")
    register_target = parser.add_subparsers(dest="command")
    cli.register(register_target)
    args = parser.parse_args(["lab", "collapse", "--p", "0.6", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "collapse.json").read_text())["p_majority"] == 0.6


def test_module_entry_point(tmp_path):
    out = run_module("collapse", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "collapse.json").exists()


def test_winrate_command_prints_the_paper_number(capsys):
    assert cli.main(["winrate", "113", "5", "42"]) == 0
    assert "83.75%" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["collapse", "--p", "1.5"], "argument --p: expected a number > 0 and < 1, got '1.5'"),
    (["collapse", "--p", "nan"], "argument --p"),
    (["phase", "--grid", "1"], "argument --grid: expected an integer >= 2"),
    (["phase", "--a", "0.7"], "argument --a"),
    (["dynamics", "--steps", "ten"], "argument --steps: expected an integer >= 1, got 'ten'"),
    (["identify", "--annotators", "0"], "argument --annotators"),
    (["mmra", "--hedge-steps", "-5"], "argument --hedge-steps"),
    (["bandit", "--pairs", "0"], "argument --pairs"),
    (["winrate", "1", "2", "-3"], "argument ties"),
    (["winrate", "0", "0", "0"], "at least 1"),
    (["collapse", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    ([], "required"),
])
def test_bad_options_are_one_line_usage_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and err.startswith("pluralign lab")


def test_bad_options_under_the_parent_command_and_the_module_are_one_line_too(capsys):
    parser = argparse.ArgumentParser(prog="pluralign")
    cli.register(parser.add_subparsers(dest="command"))
    for argv in (["lab", "phase", "--grid", "x"], ["lab", "phase", "--bogus"], ["lab"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
    out = run_module("dynamics", "--steps", "0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_help_shows_every_default():
    parser = cli.LabArgumentParser(prog="pluralign lab")
    cli._add_commands(parser)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == set(cli.COMMANDS)
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.dest == "help" or action.default is None:
                continue
            assert f"(default: {action.default})" in text, (name, action.dest)


def test_too_few_steps_is_a_warning_and_no_label(tmp_path, capsys):
    assert cli.main(["dynamics", "--steps", "120", "--dpo-steps", "30", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "dynamics.json").read_text())
    assert {c["status"] for c in data["cases"]} == {"undetermined"}
    err = capsys.readouterr().err
    assert err.count("warning:") == len(data["cases"]) and "too short to classify" in err


def test_too_few_annotators_is_a_warning(tmp_path, capsys):
    assert cli.main(["identify", "--annotators", "12", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "identify.json").read_text())
    assert len(data["warnings"]) == len(data["designs"])
    assert "not reliable" in capsys.readouterr().err


def test_every_panel_has_axis_labels_and_a_legend(tmp_path, monkeypatch):
    from pluralign.lab import experiments

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path, dpi=120: figures.append(fig))  # inspect, do not render
    experiments.collapse(tmp_path)
    experiments.dynamics(tmp_path, steps=450, dpo_steps=20)
    experiments.phase(tmp_path, n_alpha=4, n_strength=4, steps=150)
    experiments.identify(tmp_path, n_annotators=30)
    experiments.mmra(tmp_path, n_annotators=30, hedge_steps=200)
    experiments.bandit(tmp_path, n_users=9, pairs_per_user=20, em_steps=3)
    assert len(figures) == 6
    for fig in figures:
        for ax in fig.axes:
            if not ax.get_visible() or ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None, ax.get_title()
    dynamics_titles = [ax.get_title() for ax in figures[1].axes if ax.get_visible()]
    assert all("rounds 0-400 of 450 shown" in t or "all 20 rounds" in t for t in dynamics_titles)
    # the MMRA figure shows the mixture weights
    weights_axis = figures[4].axes[1]
    assert "weight" in weights_axis.get_ylabel()
    assert len(weights_axis.patches) == 2 * 3
    plots.pyplot().close("all")
