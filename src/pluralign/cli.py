"""Command line: ``pluralign train | demo | validate-data | eval | lab ...``.

Bad input (a config key, a data row, a path: any :class:`pluralign.errors.PluralignError`) is
printed as one line ``error: ...`` and exits with status 2, the same status argparse uses for a
usage error; ``-v`` also prints the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from pluralign.errors import PluralignError, one_line
from pluralign.recipe_cli import add_recipe_command

EXIT_BAD_INPUT = 2


def _is_main_process() -> bool:
    """Under torchrun/accelerate every process runs the command; only rank 0 reports."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _train(args) -> int:
    from pluralign.train.config import load_config
    from pluralign.train.offline import train

    cfg = load_config(args.recipe, args.overrides)
    result = train(cfg)
    last = result.history[-1] if result.history else {}
    if not _is_main_process():
        return 0
    print(f"done: {result.steps} steps, layout {result.layout}, final loss {last.get('loss', float('nan')):.4f}; "
          f"run folder {result.output_dir}")
    return 0


def _demo(args) -> int:
    from pluralign.demo import run_studies

    run_studies(args.out, [args.study] if args.study != "all" else None, quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pluralign", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of a config or data error")
    sub = parser.add_subparsers(dest="command", required=True)

    add_recipe_command(sub, "train", "offline preference optimization from a YAML recipe", _train,
                       "objective.beta=0.2", recipes="")

    p = sub.add_parser("demo", help="the studies on built-in worlds, each next to the lab's exact answer, with reports")
    p.add_argument("study", nargs="?", default="all", choices=["all", "preference", "dynamics", "rlhf", "mixture"],
                   help="preference: SFT, DPO and RPO against the exact optima; dynamics: iterative IPO "
                        "converging, oscillating and collapsing against the lab's trajectories; rlhf: KL-, PM- and "
                        "conditional PM-RLHF with a reward model against the exact optima; mixture: EM-DPO "
                        "and MMRA for two annotator groups against the lab's exact and tabular answers (default: all)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a shorter run (for smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    from pluralign.rl.cli import register as register_rl  # pluralign rm | rl

    register_rl(sub)
    __import__("pluralign.online.cli", fromlist=["register"]).register(sub)  # pluralign online
    __import__("pluralign.em.cli", fromlist=["register"]).register(sub)  # pluralign em
    __import__("pluralign.mixture.cli", fromlist=["register"]).register(sub)  # pluralign aggregate
    from pluralign.data.validate import add_validate_parser

    add_validate_parser(sub)
    from pluralign.eval.cli import add_eval_parser; add_eval_parser(sub)  # noqa: E702
    try:
        from pluralign.lab.cli import register as register_lab
    except ImportError:  # the lab commands need only numpy/scipy/matplotlib
        register_lab = None
    if register_lab is not None:
        register_lab(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except PluralignError as error:
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
