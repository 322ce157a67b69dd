"""Runs for the multi-process tests: ``torchrun --nproc_per_node 2 distributed_runs.py OUT`` trains
each run of RUNS into OUT/<name> (one launch, several runs: process start-up is the slow part)."""

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "dpo_tiny.yaml"
COMMON = ["train.progress_bar=false", "data.world.num_records=72", "data.eval_fraction=0.125", "train.eval_every=2",
          "train.save_every=null", "optim.lr=1e-3", "optim.warmup_ratio=0", "train.max_steps=4", "train.log_every=1"]
# name -> overrides; the global batch is 8 in every run (per-process batch x accumulation x 2 processes)
RUNS = {
    "linear": ["optim.scheduler=linear", "train.batch_size=4", "train.grad_accum=1"],
    "cosine_accum": ["optim.scheduler=cosine", "train.batch_size=2", "train.grad_accum=2"],
}


def overrides(name: str, out: Path, processes: int) -> list[str]:
    """The run's overrides for ``processes`` processes (the per-process batch scales to keep the global one)."""
    extra = list(RUNS[name])
    if processes == 1:
        bs = next(int(x.split("=")[1]) for x in extra if x.startswith("train.batch_size="))
        extra = [x for x in extra if not x.startswith("train.batch_size=")] + [f"train.batch_size={bs * 2}"]
    return COMMON + extra + [f"train.output_dir={out / name}"]


if __name__ == "__main__":
    from pluralign.train.config import load_config
    from pluralign.train.offline import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(sys.argv[1])
    for name in RUNS:
        train(load_config(RECIPE, overrides(name, out, 2)))
