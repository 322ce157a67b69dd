"""kill -9 at several moments, including inside a checkpoint write: the latest checkpoint always
loads, and resuming from it ends exactly where an uninterrupted run ends."""

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tolerance import assert_close_scaled

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("kill_runs.py")
spec = importlib.util.spec_from_file_location("kill_runs", SCRIPT)
kill_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_runs)


@pytest.fixture(scope="module")
def uninterrupted(pairs_file, tmp_path_factory):
    from pluralign.train.offline import train

    out = tmp_path_factory.mktemp("full")
    result = train(kill_runs.config(pairs_file, out / "run"))
    return result, out / "run"


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _final_weights(out):
    return load_file(str(out / "checkpoints" / "step-000006" / "model" / "model.safetensors"))


def _child(pairs_file, out, point, save):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(pairs_file), str(out), point, str(save)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _check_resumes_to_uninterrupted(pairs_file, out, uninterrupted):
    from pluralign.train.checkpoint import latest_checkpoint
    from pluralign.train.offline import train

    latest = latest_checkpoint(out)  # never names an incomplete folder
    if latest is not None:
        assert (latest / "model" / "model.safetensors").exists() and (latest / "state" / "optimizer.bin").exists()
    start = 0 if latest is None else json.loads((latest / "trainer_state.json").read_text())["step"]
    resumed = train(kill_runs.config(pairs_file, out, "train.resume=true"))
    full, full_out = uninterrupted
    assert [h["step"] for h in resumed.history] == list(range(start + 1, 7))
    if start < 6:
        assert_close_scaled([h["loss"] for h in resumed.history], [h["loss"] for h in full.history[start:]], what="losses")
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were dropped, not doubled
    assert_close_scaled([r["loss"] for r in _rows(out)], [r["loss"] for r in _rows(full_out)], what="metrics.jsonl")
    a, b = _final_weights(full_out), _final_weights(out)
    for k in a:
        assert_close_scaled(b[k], a[k], what=k)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000005", "step-000006"]


@pytest.mark.parametrize("point,save", [("before-rename", 3), ("before-latest", 2), ("before-prune", 4), ("mid-write", 3)])
def test_kill_inside_a_checkpoint_write(point, save, pairs_file, uninterrupted, tmp_path):
    proc = _child(pairs_file, tmp_path, point, save)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    _check_resumes_to_uninterrupted(pairs_file, tmp_path, uninterrupted)


def test_kill_at_a_random_moment(pairs_file, uninterrupted, tmp_path):
    proc = _child(pairs_file, tmp_path, "none", 0)
    # Wait for the first checkpoint, then kill after a random delay: whatever was being written then,
    # the run must resume to the same end (it may also have finished already).
    deadline = time.monotonic() + 300
    while not (tmp_path / "checkpoints" / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    _check_resumes_to_uninterrupted(pairs_file, tmp_path, uninterrupted)
