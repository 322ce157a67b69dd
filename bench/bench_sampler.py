"""One sampling step of generation: pluralign's inversion sampler against torch.multinomial.

Both sides do the whole step ``generate()`` does per new token: the model's distribution
(softmax), the draw, the drawn token's log-prob and the entropy. The peer draws with
``torch.multinomial(probs, 1, generator=...)``; pluralign with ``pluralign.generation.sample_next``
(one float64 uniform per row, inversion of the cumulative distribution). Shapes: the tiny
model's RL batch (32 rows x 258 tokens) and SmolLM2's (16 rows x 49,152 tokens).

    PYTHONPATH=src python bench/bench_sampler.py --json bench/results/sampler.json

Each side is timed ``--repeats`` times over ``--calls`` calls, alternating, and keeps its fastest
mean per call; the ratio is multinomial's time over pluralign's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_description  # noqa: E402

from pluralign.generation import SamplingParams, sample_next  # noqa: E402

SHAPES = {"tiny (32 x 258)": (32, 258), "smollm2 (16 x 49152)": (16, 49152)}


def multinomial_step(logits: torch.Tensor, gen: torch.Generator):
    """The same step with torch.multinomial's draw."""
    probs = logits.softmax(-1)
    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(probs * logp_all).nan_to_num_(0.0, 0.0, 0.0).sum(-1)
    return nxt, logp_all.gather(-1, nxt[:, None]).squeeze(-1), entropy


def mean_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = SamplingParams()
    results = {}
    for name, (rows, vocab) in SHAPES.items():
        logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        sides = {"pluralign": lambda: sample_next(logits, params, gen, rows, None),
                 "multinomial": lambda: multinomial_step(logits, gen)}
        best = {side: float("inf") for side in sides}
        for fn in sides.values():  # warm-up
            mean_per_call(fn, 3)
        for _ in range(args.repeats):
            for side, fn in sides.items():
                best[side] = min(best[side], mean_per_call(fn, args.calls))
        results[name] = {"microseconds_per_step": {s: t * 1e6 for s, t in best.items()},
                         "multinomial_over_pluralign": best["multinomial"] / best["pluralign"]}
        print(f"{name}: pluralign {best['pluralign'] * 1e6:.0f} us, torch.multinomial {best['multinomial'] * 1e6:.0f} us "
              f"per step ({best['multinomial'] / best['pluralign']:.2f}x)")
    if args.json:
        report = {"what": __doc__.split("\n\n")[0], "settings": vars(args), "results": results,
                  "machine": {"torch": torch.__version__, "python": platform.python_version(), **cpu_description()},
                  "command": "PYTHONPATH=src python bench/bench_sampler.py " + " ".join(sys.argv[1:])}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
