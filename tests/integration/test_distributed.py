"""Two-process data-parallel training on CPU (gloo) gives the single-process losses."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_ddp_matches_one_process(tmp_path):
    recipe = str(ROOT / "recipes" / "dpo_tiny.yaml")
    common = ["train.max_steps=3", "train.progress_bar=false", "train.eval_every=null", "data.eval_fraction=0",
              "data.world.num_records=64", "optim.scheduler=constant", "train.save_every=null"]
    single = tmp_path / "single"
    _run([sys.executable, "-m", "pluralign.cli", "train", recipe, f"train.output_dir={single}", "train.batch_size=8", *common], tmp_path)
    ddp = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "pluralign.cli", "train", recipe,
          f"train.output_dir={ddp}", "train.batch_size=4", *common], tmp_path)
    one, two = _rows(single), _rows(ddp)
    assert [r["num_processes"] for r in two] == [2, 2, 2]  # both processes took part
    assert [r["num_processes"] for r in one] == [1, 1, 1]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)
