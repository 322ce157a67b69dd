"""``pluralign lab ...``: exact finite-response experiments from the command line.

``register(subparsers)`` adds a ``lab`` command (subcommands collapse, dynamics, phase, identify,
mmra, bandit, winrate) to an existing argparse parser; ``main(argv)`` runs the same subcommands
standalone (``python -m pluralign.lab collapse --out DIR``). Each experiment writes JSON and a
PNG under ``--out`` and prints a short summary; warnings (a label resting on too few steps or
annotators) go to stderr. An invalid option is a one-line usage error with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

COMMANDS = ("collapse", "dynamics", "phase", "identify", "mmra", "bandit", "winrate")


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")


class LabArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and every default shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        _one_line_error(self, message)

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's parser reports its own stray arguments, so the message is one line
        # whichever parser (ours or a parent's) runs the command line.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def ranged(kind: type, low=None, high=None, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type`` that parses ``kind`` and checks ``low <= value <= high`` (or strict)."""
    lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
    hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
    expected = f"{'an integer' if kind is int else 'a number'}" + (f" {lo}" if lo else "") + \
        (f"{' and' if lo else ''} {hi}" if hi else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _fmt(v) -> str:
    return "[" + " ".join(f"{x:.4f}" for x in v) + "]"


def _summarise_collapse(r: dict) -> str:
    n = r["reference_numbers"]
    return (f"P(y1>y2)={r['p_majority']}: PM pi(y1)={n['pm_majority']:.3f}; "
            f"KL uniform ref beta=0.01 pi(y1)={n['kl_uniform_beta_0.01_majority']:.3f}; "
            f"KL beta=1 pi_ref(y1)=0.9 pi(y1)={n['kl_beta_1_ref_0.9_majority']:.3f}")


def _summarise_dynamics(r: dict) -> str:
    lines = [f"{'case':38s} {'status':12s} {'cycle strength':>14s} {'entropy':>8s}  final pi"]
    for c in r["cases"]:
        lines.append(f"{c['name']:38s} {c['status']:12s} {c['cycle_strength']:14.3e} {c['final_entropy']:8.4f}  "
                     f"{_fmt(c['final_pi'])}")
    return "\n".join(lines)


def _summarise_phase(r: dict) -> str:
    return (f"a={r['a']}: {len(r['alphas'])}x{len(r['beta_lam'])} grid; oscillation vs analytic criterion "
            f"agree on {100 * r['agreement_off_boundary']:.1f}% of {r['n_clear_points']} settled off-boundary points")


def _summarise_identify(r: dict) -> str:
    lines = [f"{'design':12s} {'ARI':>6s} {'ARI(MAP)':>9s} {'chance95':>9s} {'param err':>10s} "
             f"{'LL gain vs indifference':>24s}"]
    for name, d in r["designs"].items():
        lines.append(f"{name:12s} {d['ari']:6.3f} {d['ari_map']:9.3f} {d['ari_chance_95']:9.3f} "
                     f"{d['parameter_error']:10.3f} {d['gain_over_indifference']:24.2f}")
    return "\n".join(lines)


def _summarise_mmra(r: dict) -> str:
    return (f"EM-DPO ARI={r['ari']:.3f} (k-means clusters {r['ari_cluster']:.3f}); LP weights {_fmt(r['weights_lp'])} "
            f"(worst regret {r['worst_case_regret_lp']:.4f}); Hedge weights {_fmt(r['weights_hedge'])} "
            f"(worst regret {r['worst_case_regret_hedge']:.4f}); max |w_LP - w_Hedge| = "
            f"{r['max_weight_difference']:.1e}; single policies' worst regrets "
            f"{_fmt(r['worst_case_regret_single_policies'])}")


def _summarise_bandit(r: dict) -> str:
    return (f"{r['n_users']} users x {r['pairs_per_user']} pairs, beta={r['beta']:g}: ARI k-means "
            f"{r['ari_cluster']:.3f}, EM {r['ari_em']:.3f} (chance {r['ari_chance_95']:.3f}); mean TV to each "
            f"group's optimum: DPO {_fmt(r['tv_dpo'])}, Cluster-DPO {_fmt(r['tv_cluster_dpo'])}, "
            f"EM-DPO {_fmt(r['tv_em_dpo'])}")


def _experiment(args, out: Path) -> tuple[dict, str]:
    from . import experiments

    name = args.lab_command
    if name == "collapse":
        r = experiments.collapse(out, args.p)
        return r, _summarise_collapse(r)
    if name == "dynamics":
        r = experiments.dynamics(out, steps=args.steps, dpo_steps=args.dpo_steps)
        return r, _summarise_dynamics(r)
    if name == "phase":
        r = experiments.phase(out, a=args.a, n_alpha=args.grid, n_strength=args.grid, steps=args.steps)
        return r, _summarise_phase(r)
    if name == "identify":
        r = experiments.identify(out, seed=args.seed, n_annotators=args.annotators)
        return r, _summarise_identify(r)
    if name == "mmra":
        r = experiments.mmra(out, seed=args.seed, n_annotators=args.annotators, hedge_steps=args.hedge_steps)
        return r, _summarise_mmra(r)
    r = experiments.bandit(out, seed=args.seed, n_users=args.users, pairs_per_user=args.pairs,
                           em_steps=args.em_steps)
    return r, _summarise_bandit(r)


def _run(args) -> int:
    if args.lab_command == "winrate":
        from .winrate import win_rate_from_counts

        n = args.wins + args.losses + args.ties
        if n == 0:
            _one_line_error(args.lab_parser, "wins + losses + ties must be at least 1")
        rate = win_rate_from_counts(args.wins, args.losses, args.ties)
        print(f"win rate (W + T/2) / n = {100 * rate:.2f}% (W={args.wins}, L={args.losses}, T={args.ties}, n={n})")
        return 0
    out = Path(args.out)
    result, summary = _experiment(args, out)
    print(summary)
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out}/")
    return 0


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                                parser_class=LabArgumentParser)
    positive = ranged(int, 1)

    def command(name: str, help_text: str, out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if out:
            p.add_argument("--out", default=str(Path("runs") / "lab" / name), help="output directory")
        p.set_defaults(func=_run, lab_parser=p)
        return p

    p = command("collapse", "KL-RLHF vs preference matching: the minority's mass over beta and reference skew")
    p.add_argument("--p", type=ranged(float, 0, 1, low_open=True, high_open=True), default=0.51,
                   help="majority preference P(y1 beats y2), in (0, 1)")
    p = command("dynamics", "MRS-IPO/MRS-DPO named cases: convergence, oscillation, entropy collapse")
    p.add_argument("--steps", type=positive, default=3000, help="MRS-IPO iterations per case")
    p.add_argument("--dpo-steps", type=positive, default=300, help="MRS-DPO iterations per case")
    p = command("phase", "phase diagram over alpha and beta*lambda for the three-response cycle")
    p.add_argument("--a", type=ranged(float, 0, 0.5, low_open=True), default=0.3,
                   help="cycle strength a in P = 11^T/2 + a S, in (0, 0.5]")
    p.add_argument("--grid", type=ranged(int, 2), default=41, help="grid points per axis")
    p.add_argument("--steps", type=positive, default=3000, help="iterations per grid point")
    p = command("identify", "binary comparisons vs rankings of 3: can EM recover latent annotator types?")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--annotators", type=ranged(int, 2), default=1000, help="number of annotators")
    p = command("mmra", "tabular EM-DPO, then min-max-regret aggregation by LP and optimistic Hedge")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--annotators", type=ranged(int, 2), default=150, help="number of annotators")
    p.add_argument("--hedge-steps", type=positive, default=100_000, help="optimistic Hedge iterations T")
    p = command("bandit", "DPO, Cluster-DPO and EM-DPO on the EM-DPO authors' contextual bandit")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--users", type=ranged(int, 2), default=100, help="number of users")
    p.add_argument("--pairs", type=positive, default=100, help="preference pairs per user")
    p.add_argument("--em-steps", type=positive, default=20, help="EM iterations at most")
    p = command("winrate", "two-order pairwise win rate (W + T/2) / n from win/loss/tie counts", out=False)
    for field in ("wins", "losses", "ties"):
        p.add_argument(field, type=ranged(int, 0), help=f"number of {field}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``lab`` command to an argparse sub-parser collection; returns the ``lab`` parser."""
    lab = subparsers.add_parser("lab", help="exact finite-response experiments (numpy/scipy)",
                                description="Exact alignment experiments on finite response sets.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    lab.error = types.MethodType(_one_line_error, lab)  # the parent's parser class is not ours
    _add_commands(lab)
    return lab


def main(argv=None) -> int:
    """Standalone entry point: ``python -m pluralign.lab <command> [--out DIR] ...``."""
    parser = LabArgumentParser(prog="pluralign lab", description="Exact alignment experiments on finite response sets.")
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
