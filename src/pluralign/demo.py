"""``pluralign demo``: the main job on the built-in default, offline, in minutes on a CPU.

1. Build the default world (8 prompts x 4 candidates; a 70% majority and a 30% minority group)
   and the tiny Llama-architecture model with the byte tokenizer.
2. SFT the model on every candidate alike, so it starts near uniform over each candidate set.
3. From that SFT model, train DPO and RPO on the world's pooled pairwise preferences (annotator
   groups not revealed to the objective), evaluating the LM exactly on the world as it trains.
4. Solve the same finite problem exactly with :mod:`pluralign.lab` (the DPO and RPO population
   optima with the SFT model as reference and the uniform pair sampler), and the
   preference-matching target.
5. Write ``report.md``, ``summary.json`` and PNG plots into the run folder.

Every number in the report is computed by this run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np

from pluralign import lab
from pluralign.data.records import PreferenceRecord
from pluralign.eval.world_eval import candidate_distributions, evaluate_lm
from pluralign.models import load_model, load_tokenizer
from pluralign.train.config import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, TrainConfig
from pluralign.train.offline import train
from pluralign.worlds import default_world, lab_problem

log = logging.getLogger(__name__)

BETA = 0.1
RPO_ETA = 1.0  # RPO weight eta (the SFT term is eta * beta * summed NLL of the chosen response)


def _sft_records(world, copies: int) -> list[PreferenceRecord]:
    recs = []
    for prompt, cands in zip(world.prompts, world.candidates):
        recs.append(PreferenceRecord(prompt=prompt, responses=tuple(cands), ranking=tuple(range(len(cands)))))
    return recs * copies


def _config(out: Path, objective: ObjectiveConfig, lr: float, steps: int, batch: int, log_every: int,
            max_grad_norm: float | None = 1.0, scheduler: str = "constant") -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="tiny"),
        objective=objective,
        optim=OptimConfig(lr=lr, scheduler=scheduler, warmup_ratio=0.1 if scheduler != "constant" else 0.0,
                          max_grad_norm=max_grad_norm),
        train=TrainConfig(output_dir=str(out), batch_size=batch, max_steps=steps, log_every=log_every,
                          keep_checkpoints=1, overwrite=True, progress_bar=True, seed=0),
    )


def _world_logger(world, tokenizer, reference):
    def on_log(step, model):
        m = evaluate_lm(model, tokenizer, world, reference)["mean"]
        return {"world/minority_mass": m["minority_mass"], "world/pm_divergence": m["pm_divergence"],
                "world/entropy": m["entropy"], "world/tv_to_target": m["tv_to_target"],
                "world/kl_to_reference": m.get("kl_to_reference", 0.0)}
    return on_log


def exact_answers(world, pi_sft: list[np.ndarray], beta: float, eta: float) -> dict:
    """Minority mass and PM divergence of the exact DPO / RPO optima and of the PM target."""
    rows = {"dpo": [], "rpo": [], "target": [], "sft": []}
    for x, ref in enumerate(pi_sft):
        prob = lab_problem(world, x)
        K = len(ref)
        mu = np.full(K, 1.0 / K)
        policies = {
            "dpo": lab.dpo_optimum(prob["P"], ref, mu, beta),
            "rpo": lab.rpo_optimum(prob["P"], ref, mu, beta, eta),
            "target": prob["target"],
            "sft": ref,
        }
        for name, pi in policies.items():
            rows[name].append((lab.minority_mass(pi, prob["minority_set"]), lab.pm_divergence(prob["P"], pi)))
    return {name: {"minority_mass": float(np.mean([r[0] for r in v])), "pm_divergence": float(np.mean([r[1] for r in v]))}
            for name, v in rows.items()}


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = default_world(seed)
    tokenizer = load_tokenizer("byte")
    sft_steps, pref_steps, n_pairs = (150, 30, 960) if quick else (1500, 600, 9600)
    log_every = 10 if quick else 20

    print(f"[1/4] SFT on the world's candidates ({sft_steps} steps)")
    base = load_model("tiny", tokenizer, seed=seed)
    # summed NLL has large gradients early on; Adam handles the scale, so no clipping here
    sft = train(_config(out / "sft", ObjectiveConfig(name="sft_all"), 3e-3, sft_steps, 8, log_every, None),
                model=base, tokenizer=tokenizer, records=_sft_records(world, 32))
    pi_sft = candidate_distributions(sft.model, tokenizer, world)

    pairs = world.sample_pairs(n_pairs, seed=seed + 1)
    runs = {}
    objectives = {"dpo": ObjectiveConfig(name="dpo", beta=BETA),
                  "rpo": ObjectiveConfig(name="rpo", beta=BETA, args={"eta": RPO_ETA})}
    for i, (name, objective) in enumerate(objectives.items(), start=2):
        print(f"[{i}/4] {name.upper()} on {n_pairs} pooled preference pairs ({pref_steps} steps)")
        runs[name] = train(_config(out / name, objective, 5e-4, pref_steps, 32, log_every, scheduler="cosine"),
                           model=copy.deepcopy(sft.model), tokenizer=tokenizer, records=pairs,
                           on_log=_world_logger(world, tokenizer, pi_sft))

    print("[4/4] exact answers from pluralign.lab and the report")
    exact = exact_answers(world, pi_sft, BETA, RPO_ETA)
    final = {name: evaluate_lm(r.model, tokenizer, world, pi_sft)["mean"] for name, r in runs.items()}
    summary = {
        "beta": BETA, "rpo_eta": RPO_ETA, "num_pairs": n_pairs, "sft_steps": sft_steps, "preference_steps": pref_steps,
        "population_minority_share": float(world.group_weights[world.minority_group]),
        "exact": exact,
        "lm_final": {n: {k: v for k, v in m.items() if not isinstance(v, dict)} for n, m in final.items()},
        "lm_sft": {"minority_mass": exact["sft"]["minority_mass"], "pm_divergence": exact["sft"]["pm_divergence"]},
        "chosen_logps": {n: [(h["step"], h.get("logps/chosen")) for h in r.history if "logps/chosen" in h] for n, r in runs.items()},
        "chosen_logps_first_quarter": {n: _window_mean(r.history, 0.0, 0.25) for n, r in runs.items()},
        "chosen_logps_last_quarter": {n: _window_mean(r.history, 0.75, 1.0) for n, r in runs.items()},
        "seconds": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plots(out, runs, exact)
    (out / "report.md").write_text(_report(summary, runs))
    print(f"report: {out / 'report.md'}  ({summary['seconds']:.0f} s)")
    return summary


def _window_mean(history: list[dict], lo: float, hi: float) -> float:
    """Mean batch logps/chosen over a fraction [lo, hi) of the run (single batches are noisy)."""
    vals = [h["logps/chosen"] for h in history if "logps/chosen" in h]
    a, b = int(lo * len(vals)), max(int(lo * len(vals)) + 1, int(hi * len(vals)))
    return float(np.mean(vals[a:b]))


def _running_mean(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(len(v)) + 1 - n]) / n


def _plots(out: Path, runs: dict, exact: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"dpo": "tab:red", "rpo": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in runs.items():
        pts = [(h["step"], h["world/minority_mass"]) for h in r.history if "world/minority_mass" in h]
        ax.plot(*zip(*pts), color=colours[name], label=f"LM {name.upper()}")
        ax.axhline(exact[name]["minority_mass"], color=colours[name], ls="--", lw=1, label=f"exact {name.upper()} optimum")
    ax.axhline(exact["target"]["minority_mass"], color="k", ls=":", label="population (PM) target")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mass on the minority's response")
    ax.set_title("Minority mass: LM training vs the exact finite answer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "minority_mass.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in runs.items():
        steps, vals = zip(*[(h["step"], h["logps/chosen"]) for h in r.history if "logps/chosen" in h])
        ax.plot(steps, vals, color=colours[name], alpha=0.2, lw=0.8)
        ax.plot(steps, _running_mean(list(vals), 25), color=colours[name], label=f"{name.upper()} (running mean of 25 steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("batch mean log pi(chosen | prompt)")
    ax.set_title("Chosen responses' log-probs (RPO's SFT term holds them up)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "chosen_logps.png", dpi=120)
    plt.close(fig)


def _report(s: dict, runs: dict) -> str:
    e, f = s["exact"], s["lm_final"]
    first, last = s["chosen_logps_first_quarter"], s["chosen_logps_last_quarter"]
    lines = [
        "# pluralign demo",
        "",
        f"World: 8 prompts x 4 candidates; majority share {1 - s['population_minority_share']:.1f}, "
        f"minority share {s['population_minority_share']:.1f}. Model: tiny Llama (byte tokenizer), SFT for "
        f"{s['sft_steps']} steps, then DPO and RPO (beta = {s['beta']}, RPO eta = {s['rpo_eta']}) for "
        f"{s['preference_steps']} steps on {s['num_pairs']} pooled pairs. Run time {s['seconds']:.0f} s.",
        "",
        "## Mass on the minority's distinctive response (mean over prompts)",
        "",
        "| policy | LM (this run) | exact (pluralign.lab) | PM divergence, LM | PM divergence, exact |",
        "|---|---|---|---|---|",
        f"| SFT reference | {s['lm_sft']['minority_mass']:.3f} | - | {s['lm_sft']['pm_divergence']:.4f} | - |",
        f"| DPO | {f['dpo']['minority_mass']:.3f} | {e['dpo']['minority_mass']:.3f} | {f['dpo']['pm_divergence']:.4f} | {e['dpo']['pm_divergence']:.4f} |",
        f"| RPO | {f['rpo']['minority_mass']:.3f} | {e['rpo']['minority_mass']:.3f} | {f['rpo']['pm_divergence']:.4f} | {e['rpo']['pm_divergence']:.4f} |",
        f"| population target (preference matching) | - | {e['target']['minority_mass']:.3f} | - | {e['target']['pm_divergence']:.4f} |",
        "",
        "The exact column is the population optimum of the same objective on the same finite problem "
        "(reference = the SFT model's candidate distribution, uniform pair sampler); the LM column is "
        "the trained model's renormalised candidate distribution after a finite run on sampled pairs.",
        "",
        "![minority mass](minority_mass.png)",
        "",
        "## Chosen responses' log-probs during training",
        "",
        "| objective | mean logps/chosen, first quarter of the run | mean logps/chosen, last quarter |",
        "|---|---|---|",
        *[f"| {n.upper()} | {first[n]:.3f} | {last[n]:.3f} |" for n in runs],
        "",
        "![chosen log-probs](chosen_logps.png)",
        "",
    ]
    return "\n".join(lines)
