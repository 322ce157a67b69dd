"""``pluralign eval CHECKPOINT_OR_MODEL --world default [--reference MODEL] [--data FILE] [--out DIR]``.

CHECKPOINT_OR_MODEL is any causal LM that transformers loads: a ``save_pretrained`` folder (from
pluralign, TRL or plain transformers), a pluralign run folder (its latest checkpoint) or checkpoint
folder, or a built-in name (``tiny``); or a mixture policy folder (``pluralign aggregate``), scored by
the w-mixture of its types' distributions over each prompt's candidates, sum_j w_j pi_j(.|x, C). The tokenizer is read from the model folder when it holds
one, else from ``--tokenizer``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

WORLDS = ("default", "tiny", "bandit")


def resolve_model(path: str) -> str:
    """A run folder -> its latest checkpoint's model; a checkpoint folder -> its model; else as given."""
    folder = Path(path)
    latest = folder / "checkpoints" / "latest"
    if latest.is_file():
        folder = folder / "checkpoints" / latest.read_text().strip()
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return str(folder) if folder.is_dir() else path


def load_world(name: str):
    from pluralign.worlds import World, bandit_world, default_world, tiny_world

    makers = {"default": default_world, "tiny": tiny_world, "bandit": bandit_world}
    if name in makers:
        return makers[name]()
    if Path(name).is_file():
        return World.load_json(name)
    raise ValueError(f"--world {name!r}: expected one of {list(WORLDS)} or a world JSON file")


def _load(name: str, tokenizer_name: str | None, dtype: str):
    from pluralign.models import load_model, load_tokenizer

    path = resolve_model(name)
    if Path(path, "mixture.json").is_file():  # a MixturePolicy folder (pluralign aggregate)
        from pluralign.mixture import MixturePolicy

        mixture = MixturePolicy.from_pretrained(path)
        return path, mixture, mixture.tokenizer
    has_tokenizer = Path(path, "tokenizer_config.json").is_file()
    if not has_tokenizer and tokenizer_name is None and not Path(path).is_dir():
        tokenizer_name = path  # a built-in name or a model id with its own tokenizer
    tokenizer = load_tokenizer(path if has_tokenizer else (tokenizer_name or "byte"))
    model = load_model(path, tokenizer, dtype=dtype)
    model.eval()
    return path, model, tokenizer


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from pluralign.eval.report import data_metrics, world_metrics, write_reports

    if args.data is not None and args.reference is None:
        raise SystemExit("pluralign eval: --data needs --reference (implicit rewards and kl/reference are "
                         "relative to a reference model)")
    if args.data is not None and not Path(args.data).exists():
        raise SystemExit(f"pluralign eval: --data {args.data}: no such file")
    world = load_world(args.world)
    path, model, tokenizer = _load(args.model, args.tokenizer, args.dtype)
    if args.data is not None and not isinstance(model, torch.nn.Module):
        raise SystemExit(f"pluralign eval: --data needs one model; {path} is a mixture policy (its world metrics "
                         "are exact; export one type with MixturePolicy.export_type for --data)")
    reference = None if args.reference is None else _load(args.reference, args.tokenizer, args.dtype)[1]
    result: dict[str, Any] = {"model": path, "world": args.world, "beta": args.beta, "eta": args.eta,
                              "reference_name": args.reference or "none (uniform base for win rates and lab optima)"}
    result.update(world_metrics(model, tokenizer, world, reference, beta=args.beta, eta=args.eta))
    if args.data is not None:
        result["data_path"] = args.data
        result["data"] = data_metrics(model, reference, tokenizer, args.data, objective=args.objective, beta=args.beta,
                                      args={"eta": args.eta} if args.objective == "rpo" else None)
    json_path, md_path = write_reports(result, world, Path(args.out))
    print(md_path.read_text(), end="")
    print(f"written: {json_path} and {md_path}")
    return 0


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="exact world metrics of a causal LM beside the lab's optima; "
                              "held-out preference metrics on a data file",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL", help="save_pretrained folder, run or checkpoint folder, or 'tiny'")
    p.add_argument("--world", default="default", help=f"one of {list(WORLDS)} or a world JSON file")
    p.add_argument("--reference", default=None, help="reference model (folder or name) for KL, win rates, lab optima and --data")
    p.add_argument("--data", default=None, help="preference data file for held-out metrics (needs --reference)")
    p.add_argument("--objective", default="dpo", help="objective whose loss --data reports as eval_loss")
    p.add_argument("--beta", type=float, default=0.1, help="KL weight of the lab's optima and of the implicit rewards")
    p.add_argument("--eta", type=float, default=1.0, help="RPO's eta for the lab's RPO optimum")
    p.add_argument("--tokenizer", default=None, help="tokenizer when the model folder has none (default: byte)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", default="runs/eval", help="folder for eval.json and eval.md")
    p.set_defaults(func=eval_command)
    return p
