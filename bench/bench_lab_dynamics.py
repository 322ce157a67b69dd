"""Benchmark: vectorised MRS-IPO (pluralign.lab.mrs_ipo_run) against a plain per-matrix Python loop.

Workload (paper 4's HelpSteer-scale experiment, PAPERS.md §5.4): 5,000 random 4 x 4 preference
matrices x 10 parameter settings x 3,000 iterations, keeping late-window variance (cycle
strength), final policy and entropy-monotonicity diagnostics. The baseline runs the same update
(``mrs_ipo_step``, one matrix and one setting at a time, no diagnostics) on a subset of
(matrix, setting) pairs; its time is extrapolated linearly to the full workload. Both run in
this process on one core (numpy's elementwise kernels are single-threaded).

    PYTHONPATH=src python bench/bench_lab_dynamics.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from pluralign.lab import attribute_preference_matrices, classify_matrix, mrs_ipo_run, mrs_ipo_step, parameter_grid
from pluralign.lab.dynamics import classify_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrices", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--loop-pairs", type=int, default=20, help="(matrix, setting) pairs timed in the Python loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    P = attribute_preference_matrices(args.matrices, rng, K=4)
    alphas, betas, lams = parameter_grid([0.0, 0.5, 0.9, 0.99, 1.0], [2.0, 6.0], [1.0])
    n_settings, K = alphas.size, P.shape[-1]
    uniform = np.full(K, 1.0 / K)

    start = time.perf_counter()
    run = mrs_ipo_run(P, alphas, betas, lams, steps=args.steps, window=args.window)
    vec_seconds = time.perf_counter() - start

    pairs = [(int(m), int(s)) for m, s in zip(rng.integers(args.matrices, size=args.loop_pairs),
                                                rng.integers(n_settings, size=args.loop_pairs))]
    start = time.perf_counter()
    loop_final = []
    for m, s in pairs:
        pi = uniform.copy()
        for _ in range(args.steps):
            pi = mrs_ipo_step(pi, P[m], uniform, uniform, alphas[s], betas[s], lams[s])
        loop_final.append(pi)
    loop_seconds_subset = time.perf_counter() - start
    total_pairs = args.matrices * n_settings
    loop_seconds = loop_seconds_subset * total_pairs / len(pairs)
    max_diff = max(float(np.max(np.abs(run.final_pi[s, m] - pi))) for (m, s), pi in zip(pairs, loop_final))

    classes = np.array([classify_matrix(Pm) for Pm in P])
    status = classify_runs(run)
    table = []
    for s in range(n_settings):
        cyc = classes == "cyclic"
        oscillating = float(np.mean(status[s, cyc] == "oscillating")) if cyc.any() else None
        table.append({"alpha": float(alphas[s]), "beta": float(betas[s]), "lam": float(lams[s]),
                      "oscillating_cyclic_fraction": oscillating,
                      "collapsed_fraction": float(np.mean(status[s] == "collapsed")),
                      "undetermined_fraction": float(np.mean(status[s] == "undetermined")),
                      "mean_final_entropy": float(np.mean(run.final_entropy[s]))})

    updates = total_pairs * args.steps
    print(f"MRS-IPO: {args.matrices} matrices x {n_settings} settings x {args.steps} steps "
          f"= {updates:.3g} policy updates (K={K}); classes: "
          + ", ".join(f"{c}={int(np.sum(classes == c))}" for c in ("cyclic", "strongly_transitive", "other")))
    print(f"{'method':34s} {'seconds':>10s} {'updates/s':>12s}")
    print(f"{'vectorised mrs_ipo_run':34s} {vec_seconds:10.2f} {updates / vec_seconds:12.3g}")
    print(f"{'Python loop (extrapolated from ' + str(len(pairs)) + ')':34s} {loop_seconds:10.1f} "
          f"{updates / loop_seconds:12.3g}")
    print(f"speed-up: {loop_seconds / vec_seconds:.0f}x; max |pi_vec - pi_loop| on the subset = {max_diff:.2e}; "
          f"60 s budget {'met' if vec_seconds < 60 else 'MISSED'}")
    print(f"\n{'alpha':>6s} {'beta':>5s} {'lam':>4s} {'osc. (cyclic)':>14s} {'collapsed':>10s} {'unsettled':>10s} "
          f"{'mean H':>8s}")
    for row in table:
        osc = "n/a" if row["oscillating_cyclic_fraction"] is None else f"{row['oscillating_cyclic_fraction']:.3f}"
        print(f"{row['alpha']:6.2f} {row['beta']:5.1f} {row['lam']:4.1f} {osc:>14s} "
              f"{row['collapsed_fraction']:10.3f} {row['undetermined_fraction']:10.3f} {row['mean_final_entropy']:8.4f}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"matrices": args.matrices, "settings": n_settings, "steps": args.steps, "K": K,
                       "vectorised_seconds": vec_seconds, "loop_seconds_extrapolated": loop_seconds,
                       "loop_pairs_timed": len(pairs), "loop_seconds_subset": loop_seconds_subset,
                       "speedup": loop_seconds / vec_seconds, "max_abs_difference": max_diff,
                       "machine": platform.processor() or platform.machine(), "per_setting": table}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
