"""The lab's command line and its import footprint."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pluralign.lab import cli

SRC = str(Path(__file__).resolve().parents[3] / "src")


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
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "pluralign.lab", "collapse", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "collapse.json").exists()
