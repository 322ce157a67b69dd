"""``pluralign demo``: the main job on the built-in default, offline, in minutes on a CPU.

1. Build the default world (8 prompts x 4 candidates; a 70% majority and a 30% minority group)
   and the tiny Llama-architecture model with the byte tokenizer.
2. SFT the model on every candidate alike, so it starts near uniform over each candidate set.
3. From that SFT model, train DPO and RPO twice each, evaluating the LM exactly on the world as it
   trains: on sampled pairs (the world's pooled pairwise preferences, annotator groups not revealed
   to the objective; what finite data does), and on the world's population data set (every
   distinct pair once, weight ∝ mu_i mu_j, soft label P_ij) full-batch with a schedule that
   converges, so the LM reaches the population optimum itself.
4. Solve the same finite problem exactly (``pluralign.worlds.population.population_optimum``, i.e.
   :mod:`pluralign.lab`'s DPO and RPO optima with the SFT model's candidate distribution as
   reference and the uniform sampler over distinct pairs), and the preference-matching target.
   RPO's NLL term sees the LM's absolute probabilities; the exact answer describes the LM's
   candidate distribution when its mass is on the candidates, so the report shows that mass.
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
from pluralign.eval.world_eval import candidate_distributions, candidate_mass, evaluate_lm
from pluralign.models import load_model, load_tokenizer
from pluralign.train.config import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, TrainConfig
from pluralign.train.offline import train
from pluralign.worlds import default_world, lab_problem
from pluralign.worlds.population import population_optimum, population_pairs

log = logging.getLogger(__name__)

BETA = 0.1
RPO_ETA = 1.0  # RPO weight eta (the SFT term is eta * beta * summed NLL of the chosen response)
POPULATION_LR = 1e-2  # full-batch AdamW on the population data, cosine decay to 0, no clipping


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
    """Minority mass and PM divergence of the exact DPO / RPO population optima (uniform sampler
    over distinct pairs, the objective both the sampled and the population runs estimate) and of
    the PM target."""
    rows = {"dpo": [], "rpo": [], "target": [], "sft": []}
    for x, ref in enumerate(pi_sft):
        prob = lab_problem(world, x)
        policies = {
            "dpo": population_optimum(world, x, "dpo", ref, beta),
            "rpo": population_optimum(world, x, "rpo", ref, beta, args={"eta": eta}),
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
    sft_steps, pref_steps, n_pairs, pop_steps = (150, 30, 960, 150) if quick else (1500, 600, 9600, 200)
    log_every = 10 if quick else 20

    print(f"[1/4] SFT on the world's candidates ({sft_steps} steps)")
    base = load_model("tiny", tokenizer, seed=seed)
    # summed NLL has large gradients early on; Adam handles the scale, so no clipping here
    sft = train(_config(out / "sft", ObjectiveConfig(name="sft_all"), 3e-3, sft_steps, 8, log_every, None),
                model=base, tokenizer=tokenizer, records=_sft_records(world, 32))
    pi_sft = candidate_distributions(sft.model, tokenizer, world)

    pairs = world.sample_pairs(n_pairs, seed=seed + 1)
    population = population_pairs(world)
    runs, pop_runs = {}, {}
    objectives = {"dpo": ObjectiveConfig(name="dpo", beta=BETA),
                  "rpo": ObjectiveConfig(name="rpo", beta=BETA, args={"eta": RPO_ETA})}
    for i, (name, objective) in enumerate(objectives.items(), start=2):
        print(f"[{i}/4] {name.upper()} on {n_pairs} pooled preference pairs ({pref_steps} steps), then on the "
              f"{len(population)}-pair population data set (full batch, {pop_steps} steps)")
        runs[name] = train(_config(out / name, objective, 5e-4, pref_steps, 32, log_every, scheduler="cosine"),
                           model=copy.deepcopy(sft.model), tokenizer=tokenizer, records=pairs,
                           on_log=_world_logger(world, tokenizer, pi_sft))
        pop_runs[name] = train(_config(out / f"{name}_population", objective, POPULATION_LR, pop_steps, len(population),
                                       log_every, max_grad_norm=None, scheduler="cosine"),
                               model=copy.deepcopy(sft.model), tokenizer=tokenizer, records=population,
                               on_log=_world_logger(world, tokenizer, pi_sft))

    print("[4/4] exact answers from pluralign.lab and the report")
    exact = exact_answers(world, pi_sft, BETA, RPO_ETA)
    final = {name: evaluate_lm(r.model, tokenizer, world, pi_sft)["mean"] for name, r in runs.items()}
    final_pop = {name: evaluate_lm(r.model, tokenizer, world, pi_sft)["mean"] for name, r in pop_runs.items()}
    scalars = lambda m: {k: v for k, v in m.items() if not isinstance(v, dict)}  # noqa: E731
    summary = {
        "beta": BETA, "rpo_eta": RPO_ETA, "num_pairs": n_pairs, "sft_steps": sft_steps, "preference_steps": pref_steps,
        "population_steps": pop_steps, "population_pairs": len(population), "population_lr": POPULATION_LR,
        "population_minority_share": float(world.group_weights[world.minority_group]),
        "exact": exact,
        "lm_final": {n: scalars(m) for n, m in final.items()},
        "lm_population_final": {n: scalars(m) for n, m in final_pop.items()},
        "candidate_mass": {"sft": float(np.mean(candidate_mass(sft.model, tokenizer, world))),
                           **{f"{n}_population": float(np.mean(candidate_mass(r.model, tokenizer, world)))
                              for n, r in pop_runs.items()}},
        "lm_sft": {"minority_mass": exact["sft"]["minority_mass"], "pm_divergence": exact["sft"]["pm_divergence"]},
        "chosen_logps": {n: [(h["step"], h.get("logps/chosen")) for h in r.history if "logps/chosen" in h] for n, r in runs.items()},
        "chosen_logps_first_quarter": {n: _window_mean(r.history, 0.0, 0.25) for n, r in runs.items()},
        "chosen_logps_last_quarter": {n: _window_mean(r.history, 0.75, 1.0) for n, r in runs.items()},
        "seconds": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plots(out, runs, pop_runs, exact)
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


def _plots(out: Path, runs: dict, pop_runs: dict, exact: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"dpo": "tab:red", "rpo": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for name, r in runs.items():
        pts = [(h["step"], h["world/minority_mass"]) for h in r.history if "world/minority_mass" in h]
        ax.plot(*zip(*pts), color=colours[name], alpha=0.6, lw=1, label=f"LM {name.upper()}, sampled pairs")
        pts = [(h["step"], h["world/minority_mass"]) for h in pop_runs[name].history if "world/minority_mass" in h]
        ax.plot(*zip(*pts), color=colours[name], lw=2, label=f"LM {name.upper()}, population data (full batch)")
        ax.axhline(exact[name]["minority_mass"], color=colours[name], ls="--", lw=1, label=f"exact {name.upper()} optimum")
    ax.axhline(exact["target"]["minority_mass"], color="k", ls=":", label="population (PM) target")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mass on the minority's response")
    ax.set_title("Minority mass: LM training vs the exact finite answer")
    ax.legend(fontsize=7)
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
    e, f, fp, cm = s["exact"], s["lm_final"], s["lm_population_final"], s["candidate_mass"]
    first, last = s["chosen_logps_first_quarter"], s["chosen_logps_last_quarter"]
    lines = [
        "# pluralign demo",
        "",
        f"World: 8 prompts x 4 candidates; majority share {1 - s['population_minority_share']:.1f}, "
        f"minority share {s['population_minority_share']:.1f}. Model: tiny Llama (byte tokenizer), SFT for "
        f"{s['sft_steps']} steps, then DPO and RPO (beta = {s['beta']}, RPO eta = {s['rpo_eta']}) for "
        f"{s['preference_steps']} steps on {s['num_pairs']} pooled pairs, and for {s['population_steps']} full-batch "
        f"steps on the world's {s['population_pairs']}-pair population data set (AdamW, lr {s['population_lr']:g}, "
        f"cosine to 0). Run time {s['seconds']:.0f} s.",
        "",
        "## Mass on the minority's distinctive response (mean over prompts)",
        "",
        "| policy | LM, population data | LM, sampled pairs | exact (pluralign.lab) | PM div., LM population | PM div., LM sampled | PM div., exact |",
        "|---|---|---|---|---|---|---|",
        f"| SFT reference | {s['lm_sft']['minority_mass']:.3f} | - | - | {s['lm_sft']['pm_divergence']:.4f} | - | - |",
        *[f"| {n.upper()} | {fp[n]['minority_mass']:.3f} | {f[n]['minority_mass']:.3f} | {e[n]['minority_mass']:.3f} | "
          f"{fp[n]['pm_divergence']:.4f} | {f[n]['pm_divergence']:.4f} | {e[n]['pm_divergence']:.4f} |" for n in ("dpo", "rpo")],
        f"| population target (preference matching) | - | - | {e['target']['minority_mass']:.3f} | - | - | {e['target']['pm_divergence']:.4f} |",
        "",
        "The exact column is the population optimum of the same objective on the same finite problem "
        "(reference = the SFT model's candidate distribution, uniform sampler over distinct pairs). "
        "The population-data LM is trained on that objective itself (every distinct pair once, weight ∝ mu_i mu_j, "
        "soft label P_ij, full batch) and should sit on the exact answer; the sampled-pairs LM shows what a finite "
        "run on finite data does. LM columns are the trained model's renormalised candidate distribution.",
        "",
        f"RPO's NLL term sees the LM's absolute probabilities, so the exact RPO answer (a distribution over the "
        f"candidates) describes the LM when its mass is on the candidates. Mean mass on the candidates: SFT "
        f"reference {cm['sft']:.3g}, after population DPO {cm['dpo_population']:.3g}, after population RPO "
        f"{cm['rpo_population']:.3g} (DPO sees only log-ratios within the candidate set, so its answer does not depend on it).",
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


def _dynamics_study(out: Path, quick: bool, seed: int) -> dict:
    from pluralign.online.demo_study import run_dynamics_study

    result = run_dynamics_study(out, quick=quick, seed=seed)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def _rlhf_study(out: Path, quick: bool, seed: int) -> dict:
    from pluralign.rl.demo_study import run_rlhf_study

    return run_rlhf_study(out, quick=quick, seed=seed)


def _mixture_study(out: Path, quick: bool, seed: int) -> dict:
    from pluralign.em.demo_study import run_mixture_study

    return run_mixture_study(out / "mixture", quick=quick, seed=seed)


# Each study writes its own report into its folder; `pluralign demo` runs them all and links them.
STUDIES = {
    "preference": ("report.md", lambda out, quick, seed: run_demo(out, quick=quick, seed=seed)),
    "dynamics": ("dynamics/dynamics.md", lambda out, quick, seed: _dynamics_study(out / "dynamics", quick, seed)),
    "rlhf": ("rlhf/rlhf.md", lambda out, quick, seed: _rlhf_study(out / "rlhf", quick, seed)),
    "mixture": ("mixture/mixture.md", _mixture_study),
}


def run_studies(out_dir: str | Path = "runs/demo", names=None, quick: bool = False, seed: int = 0) -> dict:
    """Run the named studies (all by default) into ``out_dir`` and write ``index.md`` linking their reports."""
    out = Path(out_dir)
    names = list(STUDIES) if not names else list(names)
    results = {name: STUDIES[name][1](out, quick, seed) for name in names}
    lines = ["# pluralign demo", "", *[f"- [{name}]({STUDIES[name][0]})" for name in names], ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.md").write_text("\n".join(lines))
    print(f"index: {out / 'index.md'}")
    return results
