"""How fast can this machine run the matrix products of one training step of a given model?

The real-model benchmark reports a step's useful FLOP/s as a fraction of a large square
``torch.mm`` (2048^3). A small model's products are far from square: SmolLM2-135M multiplies
[M, 576] activations by 576 x 192 (k/v), 576 x 576 (q/o), 576 x 1536 (MLP) and 576 x 49152
(lm_head) weights, with M the tokens of one step. This script times exactly those products, as a
training step runs them (forward ``x @ W^T``; backward ``dY @ W`` for the input gradient and
``dY^T @ x`` for the weight gradient), for several M, and reports the FLOP-weighted rate of a
whole step's products: the ceiling a step of that model reaches if everything but the matmuls took
no time. Same thread count as the benchmark's contenders.

    python bench/matmul_ceiling.py --tokens 256,512,1024 --json bench/results/matmul_ceiling_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from _common import best_seconds, square_matmul_rate

# SmolLM2-135M-Instruct (LlamaForCausalLM): hidden 576, MLP 1536, 9 query / 3 key-value heads of 64, 30 layers
LAYER = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
         "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}
LAYERS, VOCAB, HIDDEN = 30, 49152, 576


def product_times(m: int, n_in: int, n_out: int, dtype, repeats: int) -> dict:
    """Seconds of the three products of one linear layer on m tokens (2 * m * n_in * n_out FLOPs each)."""
    x = torch.randn(m, n_in).to(dtype)
    w = torch.randn(n_out, n_in).to(dtype)
    dy = torch.randn(m, n_out).to(dtype)
    return {"forward": best_seconds(lambda: torch.nn.functional.linear(x, w), repeats),
            "grad_input": best_seconds(lambda: dy @ w, repeats),
            "grad_weight": best_seconds(lambda: dy.t() @ x, repeats)}


def step_ceiling(m: int, logit_tokens: int, dtype, repeats: int) -> dict:
    """FLOP-weighted matmul rate of one step: every layer's three products on m tokens, the lm_head's
    on ``logit_tokens`` positions."""
    shapes = {name: (m, *dims, LAYERS) for name, dims in LAYER.items()}
    shapes["lm_head"] = (logit_tokens, HIDDEN, VOCAB, 1)
    flops = seconds = 0.0
    per_shape = {}
    for name, (rows, n_in, n_out, count) in shapes.items():
        times = product_times(rows, n_in, n_out, dtype, repeats)
        f = 2 * rows * n_in * n_out
        per_shape[name] = {"tokens": rows, "in": n_in, "out": n_out,
                           **{k: f / t for k, t in times.items()}}  # FLOP/s of each product
        flops += 3 * f * count
        seconds += sum(times.values()) * count
    return {"flops_per_s": flops / seconds, "per_shape_flops_per_s": per_shape}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="256,512,1024", help="tokens per step (M), comma-separated")
    parser.add_argument("--logit-fraction", type=float, default=0.5,
                        help="fraction of the step's tokens whose logits are formed (response tokens only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"what": __doc__.splitlines()[0], "model": "SmolLM2-135M-Instruct shapes",
              "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                          "processor": platform.processor(), "load_average_1min": os.getloadavg()[0]},
              "logit_fraction": args.logit_fraction, "dtypes": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = square_matmul_rate(dtype)
        rows = {}
        for m in (int(t) for t in args.tokens.split(",")):
            c = step_ceiling(m, max(1, int(m * args.logit_fraction)), dtype, args.repeats)
            rows[str(m)] = {**c, "fraction_of_square_peak": c["flops_per_s"] / peak}
            print(f"{name} M={m:>5}: step products {c['flops_per_s'] / 1e9:6.1f} GFLOP/s = "
                  f"{100 * c['flops_per_s'] / peak:4.1f}% of the 2048^3 peak ({peak / 1e9:.0f} GFLOP/s)")
        result["dtypes"][name] = {"square_peak_flops_per_s": peak, "tokens": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
