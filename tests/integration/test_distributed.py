"""Two-process data-parallel training on CPU (gloo) gives the single-process run: the logged
learning-rate column, losses, margins and held-out metrics, for linear and cosine schedules and with
gradient accumulation; every log line is printed once."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tolerance import FP32_REL, assert_close_scaled

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
def _free_port() -> int:
    """A port nobody holds now: a fixed one collides with any other suite running on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


spec = importlib.util.spec_from_file_location("distributed_runs", Path(__file__).with_name("distributed_runs.py"))
runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runs)


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(ROOT / "tests" / "integration" / "distributed_runs.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
@pytest.mark.parametrize("name", sorted(runs.RUNS))
def test_two_processes_equal_one(name, two_process, tmp_path):
    from pluralign.train.config import load_config
    from pluralign.train.offline import train

    out, _ = two_process
    train(load_config(runs.RECIPE, runs.overrides(name, tmp_path, 1)))
    one, two = _rows(tmp_path / name), _rows(out / name)
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["num_processes"] for r in two] == [2] * 4 and [r["num_processes"] for r in one] == [1] * 4
    # the schedule: exactly the one-process learning rates (a schedule stepped per process runs 2x fast)
    assert [r["learning_rate"] for r in two] == pytest.approx([r["learning_rate"] for r in one], rel=1e-12)
    assert len({r["learning_rate"] for r in one}) == 4  # linear and cosine both move every step
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "grad_norm"):
        assert_close_scaled([r[key] for r in two], [r[key] for r in one], what=key)
    # a margin is chosen - rejected: its rounding error scales with the rewards, not with the
    # (smaller, cancelling) margin, so it is compared at their scale (1.05e-5 of the margin seen)
    scale = max(abs(r[k]) for r in one + two for k in ("rewards/chosen", "rewards/rejected"))
    assert_close_scaled([r["rewards/margins"] for r in two], [r["rewards/margins"] for r in one],
                        rel=2 * FP32_REL, what="rewards/margins", scale=scale)
    evals = [(a["eval_loss"], b["eval_loss"]) for a, b in zip(one, two) if "eval_loss" in a]
    assert len(evals) == 2 and all("eval_loss" in b for a, b in zip(one, two) if "eval_loss" in a)
    assert_close_scaled([b for _, b in evals], [a for a, _ in evals], what="eval_loss")
    assert one[1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-4)  # training moved the weights


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_each_log_line_printed_once(two_process):
    _, output = two_process
    assert output.count("train data:") == len(runs.RUNS)
    assert output.count("reference log-probs for") == 2 * len(runs.RUNS)  # train and eval tables, once each
