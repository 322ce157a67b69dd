"""``pluralign eval``: exact world metrics of any causal LM beside the lab's optima, and held-out
preference metrics on a data file.

World part: the LM's (and the reference's) renormalised candidate distributions scored by
``pluralign.worlds.evaluate_policy``; beside them the exact population optima of DPO, IPO and RPO
on the same finite problem (reference = the reference model's candidate distribution, uniform if
none is given; uniform sampler over distinct pairs; ``beta`` = each objective's KL weight, IPO's tau)
and the preference-matching target, scored the same way.

Data part: the training loop's evaluation (``pluralign.train.offline.evaluate``) on the file, with
TRL's metric names under ``eval_`` (rewards/*, logps/*, per-group accuracy
``rewards/accuracies/<group>``, ``rewards/ranking_accuracy``, ``kl/reference``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.eval.world_eval import candidate_distributions, candidate_mass
from pluralign.worlds import World, evaluate_policy
from pluralign.worlds.population import population_optimum

LAB_OBJECTIVES = {"dpo_optimum": ("dpo", {}), "ipo_optimum": ("ipo", {}), "rpo_optimum": ("rpo", None)}


def world_metrics(model, tokenizer, world: World, reference=None, *, beta: float = 0.1, eta: float = 1.0) -> dict:
    """The LM's exact metrics on ``world`` and, beside them, the reference's and the lab's optima's.

    Returns {"policy": {...}, "reference": {...} or None, "lab": {name: {...}}, "candidate_mass": [...]},
    each entry holding ``distributions`` (per prompt, over its candidates) and the
    ``evaluate_policy`` result (per-prompt and mean metrics; ``kl_to_reference`` when a reference is given).
    """
    pi = candidate_distributions(model, tokenizer, world)
    ref = candidate_distributions(reference, tokenizer, world) if reference is not None else None
    base = ref if ref is not None else [np.full(world.n_candidates(x), 1.0 / world.n_candidates(x))
                                        for x in range(world.n_prompts)]

    def scored(dists):
        return {"distributions": [d.tolist() for d in dists], **evaluate_policy(world, dists, ref)}

    lab = {}
    for name, (objective, args) in LAB_OBJECTIVES.items():
        args = {"eta": eta} if args is None else args
        lab[name] = scored([population_optimum(world, x, objective, base[x], beta, args=args) for x in range(world.n_prompts)])
    lab["pm_target"] = scored([world.population_target(x) for x in range(world.n_prompts)])
    return {"policy": scored(pi), "reference": scored(ref) if ref is not None else None, "lab": lab,
            "candidate_mass": candidate_mass(model, tokenizer, world)}


def data_metrics(model, reference, tokenizer, path: str, *, objective: str = "dpo", beta: float = 0.1,
                 args: dict | None = None, batch_size: int = 8, max_length: int = 1024,
                 max_prompt_length: int = 512) -> dict[str, Any]:
    """Held-out preference metrics of ``model`` against ``reference`` on the data file ``path``."""
    import torch

    from pluralign.data.collate import Collator
    from pluralign.data.loaders import load_preferences
    from pluralign.data.tokenize import tokenize_records
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.train.config import ObjectiveConfig, RunConfig, TrainConfig
    from pluralign.data.loaders import DataError
    from pluralign.train.offline import evaluate
    from pluralign.train.setup import make_accelerator

    loaded = load_preferences(path, tokenizer=tokenizer)
    data = tokenize_records(loaded.records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    if len(data) == 0:
        raise DataError(f"{path}: no example left after tokenization ({data.report()})")
    cfg = RunConfig(objective=ObjectiveConfig(name=objective, beta=beta, args=dict(args or {})),
                    train=TrainConfig(batch_size=batch_size))
    accelerator = make_accelerator(cfg.train)  # the loop's own evaluation: sharded across processes, summed
    policy = SequenceLogprobs(model).to(accelerator.device)
    ref_scorer = SequenceLogprobs(reference).to(accelerator.device).eval()
    with torch.no_grad():
        row = evaluate(cfg, policy, ref_scorer, data, Collator(tokenizer.pad_token_id, "plain"), accelerator)
    row["eval_num_examples"] = len(data)
    row["data_report"] = data.report()
    return row


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(result: dict, world: World) -> str:
    """The Markdown report of :func:`world_metrics` (and data metrics, when present)."""
    names = world.group_names
    rows = [("LM", result["policy"])]
    if result["reference"] is not None:
        rows.append(("reference", result["reference"]))
    rows += [(f"lab: {n.replace('_', ' ')}", v) for n, v in result["lab"].items()]
    header = ["policy", "minority mass", "PM divergence", "entropy", "KL to reference", "TV to PM target",
              *[f"win rate {g}" for g in names], *[f"regret {g}" for g in names]]
    lines = [f"# pluralign eval: {result['model']} on world {result['world']}", "",
             f"beta = {result['beta']:g} (IPO: tau), RPO eta = {result['eta']:g}; reference: {result['reference_name']}. "
             "Means over prompts; the LM's distribution is its renormalised candidate probabilities. "
             f"Mean LM mass on the candidates: {np.mean(result['candidate_mass']):.4g}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, r in rows:
        m = r["mean"]
        cells = [label, m["minority_mass"], m["pm_divergence"], m["entropy"], m.get("kl_to_reference", "-"),
                 m["tv_to_target"], *[m["win_rate"][g] for g in names], *[m["regret"][g] for g in names]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += ["", "## Candidate distributions per prompt", "",
              "| prompt | candidate | " + " | ".join(label for label, _ in rows) + " |", "|---|---|" + "---|" * len(rows)]
    for x in range(world.n_prompts):
        for k, cand in enumerate(world.candidates[x]):
            mark = " (minority)" if k in set(world.minority_responses(x).tolist()) else ""
            cells = [json.dumps(world.prompts[x]) if k == 0 else "", json.dumps(cand) + mark,
                     *[f"{r['distributions'][x][k]:.4f}" for _, r in rows]]
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("data"):
        lines += ["", f"## Held-out preference metrics on {result['data_path']}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(result["data"].items()) if k != "data_report"]
    return "\n".join(lines) + "\n"


def write_reports(result: dict, world: World, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(markdown(result, world))
    return json_path, md_path
