"""``pluralign lab ...``: exact finite-response experiments from the command line.

``register(subparsers)`` adds a ``lab`` command (with subcommands collapse, dynamics, phase,
identify, mmra) to an existing argparse parser; ``main(argv)`` runs the same subcommands
standalone (``python -m pluralign.lab collapse --out DIR``). Each writes JSON (+ PNG) under
``--out`` (default ``runs/lab/<name>``) and prints a short summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _summarise_collapse(r: dict) -> str:
    n = r["reference_numbers"]
    return (f"P(y1>y2)={r['p_majority']}: PM pi(y1)={n['pm_majority']:.3f}; "
            f"KL uniform ref beta=0.01 pi(y1)={n['kl_uniform_beta_0.01_majority']:.3f}; "
            f"KL beta=1 pi_ref(y1)=0.9 pi(y1)={n['kl_beta_1_ref_0.9_majority']:.3f}")


def _summarise_dynamics(r: dict) -> str:
    lines = [f"{'case':38s} {'status':11s} {'cycle strength':>14s} {'entropy':>8s}  final pi"]
    for c in r["cases"]:
        pi = " ".join(f"{p:.4f}" for p in c["final_pi"])
        lines.append(f"{c['name']:38s} {c['status']:11s} {c['cycle_strength']:14.3e} {c['final_entropy']:8.4f}  [{pi}]")
    return "\n".join(lines)


def _summarise_phase(r: dict) -> str:
    return (f"a={r['a']}: {len(r['alphas'])}x{len(r['beta_lam'])} grid; oscillation vs analytic criterion "
            f"agree on {100 * r['agreement_off_boundary']:.1f}% of {r['n_clear_points']} off-boundary points")


def _summarise_identify(r: dict) -> str:
    lines = [f"{'design':12s} {'ARI':>6s} {'ARI(MAP)':>9s} {'param err':>10s} {'LL gain vs indifference':>24s}"]
    for name, d in r["designs"].items():
        lines.append(f"{name:12s} {d['ari']:6.3f} {d['ari_map']:9.3f} {d['parameter_error']:10.3f} "
                     f"{d['gain_over_indifference']:24.2f}")
    return "\n".join(lines)


def _summarise_mmra(r: dict) -> str:
    fmt = lambda v: "[" + " ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    return (f"EM-DPO ARI={r['ari']:.3f}; LP weights {fmt(r['weights_lp'])} "
            f"(worst regret {r['worst_case_regret_lp']:.4f}); Hedge weights {fmt(r['weights_hedge'])} (worst regret {r['worst_case_regret_hedge']:.4f}); "
            f"max |w_LP - w_Hedge| = {r['max_weight_difference']:.1e}; "
            f"single policies' worst regrets {fmt(r['worst_case_regret_single_policies'])}")


def _run(args) -> int:
    from . import experiments

    out = Path(args.out) if args.out else Path("runs") / "lab" / args.lab_command
    if args.lab_command == "collapse":
        result = experiments.collapse(out, args.p)
        summary = _summarise_collapse(result)
    elif args.lab_command == "dynamics":
        result = experiments.dynamics(out, steps=args.steps)
        summary = _summarise_dynamics(result)
    elif args.lab_command == "phase":
        result = experiments.phase(out, a=args.a, n_alpha=args.grid, n_strength=args.grid, steps=args.steps)
        summary = _summarise_phase(result)
    elif args.lab_command == "identify":
        result = experiments.identify(out, seed=args.seed, n_annotators=args.annotators)
        summary = _summarise_identify(result)
    elif args.lab_command == "mmra":
        result = experiments.mmra(out, seed=args.seed, hedge_steps=args.hedge_steps)
        summary = _summarise_mmra(result)
    else:  # argparse restricts choices; kept for safety
        raise ValueError(f"unknown lab command {args.lab_command!r}")
    print(summary)
    print(f"wrote {out}/")
    return 0


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="{collapse,dynamics,phase,identify,mmra}")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", default=None, help=f"output directory (default runs/lab/{name})")
        p.set_defaults(func=_run)
        return p

    p = command("collapse", "KL-RLHF vs preference matching: the minority's mass over beta and reference skew")
    p.add_argument("--p", type=float, default=0.51, help="majority preference P(y1 beats y2)")
    p = command("dynamics", "MRS-IPO/MRS-DPO named cases: convergence, oscillation, entropy collapse")
    p.add_argument("--steps", type=int, default=3000, help="MRS-IPO iterations per case")
    p = command("phase", "phase diagram over alpha and beta*lambda for the three-response cycle")
    p.add_argument("--a", type=float, default=0.3, help="cycle strength a in P = 11^T/2 + a S")
    p.add_argument("--grid", type=int, default=41, help="grid points per axis")
    p.add_argument("--steps", type=int, default=3000, help="iterations per grid point")
    p = command("identify", "binary comparisons vs rankings of 3: can EM recover latent annotator types?")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--annotators", type=int, default=1000, help="number of annotators")
    p = command("mmra", "tabular EM-DPO, then min-max-regret aggregation by LP and optimistic Hedge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hedge-steps", type=int, default=100_000, help="optimistic Hedge iterations T")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``lab`` command to an argparse sub-parser collection; returns the ``lab`` parser."""
    lab = subparsers.add_parser("lab", help="exact finite-response experiments (numpy/scipy)",
                                description="Exact alignment experiments on finite response sets.")
    _add_commands(lab)
    return lab


def main(argv=None) -> int:
    """Standalone entry point: ``python -m pluralign.lab <command> [--out DIR] ...``."""
    parser = argparse.ArgumentParser(prog="pluralign lab",
                                     description="Exact alignment experiments on finite response sets.")
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
