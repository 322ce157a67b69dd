"""Dynamics study: the online loop on the tiny LM next to the lab's exact MRS-IPO iteration.

Three settings (paper 4, PAPERS.md §5.3, §5.6), each an online IPO run of the offline tiny LM on
one prompt whose candidates are single tokens, drawn fully on-policy (lambda = 1), against
``pluralign.lab.dynamics.mrs_ipo_run`` from the LM's own initial candidate distribution (as
pi_ref, pi_0 and pi_init):

* rock-paper-scissors preferences ``P = 11^T/2 + a S`` (a = 0.3), alpha = 0.5, beta = 4:
  ``alpha^2 + a^2 beta^2 / 3 = 0.73 < 1``, inside the stable regime: converges;
* the same world with beta = 8: ``2.17 > 1``, beyond the 3-cycle threshold: keeps oscillating;
* a strongly transitive world (one Bradley-Terry group, rewards 1, 0, -1) with alpha = 1,
  beta = 2: the entropy decreases to 0 (collapse on the top response).

``run_dynamics_study(out_dir, quick, seed)`` writes ``dynamics.md`` and ``dynamics.png`` and
returns the numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pluralign.online.monitor import CYCLE, entropy
from pluralign.online.problem import OnlineProblem

log = logging.getLogger(__name__)

PROMPT = "Pick one:"
MOVES = ["R", "P", "S"]  # one byte token each (+ EOS)


def rps_problem(a: float = 0.3) -> OnlineProblem:
    """One prompt, three one-token candidates, cyclic preferences ``P = 11^T/2 + a S``."""
    P = 0.5 + a * CYCLE
    return OnlineProblem([PROMPT], [list(MOVES)], lambda x: P)


def transitive_problem(rewards=(1.0, 0.0, -1.0)) -> OnlineProblem:
    """One prompt, three candidates, a single Bradley-Terry group (strongly transitive P)."""
    from pluralign.worlds import World

    world = World(prompts=[PROMPT], candidates=[list(MOVES)], group_names=["all"], group_weights=np.array([1.0]),
                  rewards=[np.array([rewards])], minority_group=0, annotators_per_group=1)
    return OnlineProblem.from_world(world)


SETTINGS = [
    dict(name="cyclic, stable (alpha 0.5, beta 4)", problem=rps_problem, alpha=0.5, beta=4.0, expect="converged"),
    dict(name="cyclic, beyond threshold (alpha 0.5, beta 8)", problem=rps_problem, alpha=0.5, beta=8.0,
         expect="oscillating"),
    dict(name="strongly transitive (alpha 1, beta 2)", problem=transitive_problem, alpha=1.0, beta=2.0,
         expect="collapsed"),
]


def bandit_config(out_dir, alpha: float, beta: float, lam: float, rounds: int, steps: int, responses: int, seed: int,
                  lr: float = 0.05):
    """An online IPO recipe for the one-prompt bandit: full-batch steps over the round's pairs."""
    from pluralign.online.config import OnlineConfig, OnlineRunConfig
    from pluralign.train.config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig

    return OnlineRunConfig(
        model=ModelConfig(name="tiny", tokenizer="byte", seed=seed),
        data=DataConfig(max_length=32, max_prompt_length=24),
        objective=ObjectiveConfig(name="ipo", beta=1.0 / beta),
        optim=OptimConfig(lr=lr, scheduler="cosine", max_grad_norm=None),
        train=TrainConfig(output_dir=str(out_dir), batch_size=responses // 2, seed=seed, log_every=steps,
                          save_every=None, progress_bar=False, overwrite=True),
        online=OnlineConfig(rounds=rounds, steps_per_round=steps, responses_per_prompt=responses, alpha=alpha,
                            lam=lam, window=max(2, min(5, rounds)), plot=False))


def lab_trajectory(P, pi_start, alpha: float, beta: float, lam: float, rounds: int) -> np.ndarray:
    """[rounds + 1, K] exact MRS-IPO states from ``pi_start`` (as pi_ref, pi_0 and pi_init)."""
    from pluralign.lab.dynamics import mrs_ipo_run

    run = mrs_ipo_run(P, alpha, beta, lam, pi_ref=pi_start, pi0=pi_start, pi_init=pi_start, steps=rounds,
                      window=1, record=True)
    return run.trajectory[:, 0, 0, :]


def run_setting(setting: dict, out_dir: Path, rounds: int, steps: int, responses: int, seed: int) -> dict:
    from pluralign.online.rounds import train_online

    problem = setting["problem"]()
    cfg = bandit_config(out_dir, setting["alpha"], setting["beta"], 1.0, rounds, steps, responses, seed)
    t0 = time.perf_counter()
    result = train_online(cfg, problem=problem)
    loop = result.trajectory(0)
    lab = lab_trajectory(problem.preference(0), loop[0], setting["alpha"], setting["beta"], 1.0, rounds)
    late = loop[-max(rounds // 2, 2):]
    final = result.rounds[-1]
    label = next((name for name in ("collapsed", "collapsing", "oscillating") if final[f"online/{name}_prompts"]),
                 "converged")
    return dict(name=setting["name"], expect=setting["expect"], monitor=label, loop=loop, lab=lab,
                max_abs_gap=float(np.abs(loop - lab).max()),
                late_cycle_strength=float(late.var(axis=0).sum()),
                lab_late_cycle_strength=float(lab[-late.shape[0]:].var(axis=0).sum()),
                final_entropy=entropy(loop[-1]), lab_final_entropy=entropy(lab[-1]),
                warnings=result.rounds[-1]["online/warnings"], seconds=time.perf_counter() - t0)


def run_dynamics_study(out_dir, quick: bool = False, seed: int = 0) -> dict:
    """Run the three settings; write ``dynamics.md`` + ``dynamics.png`` in ``out_dir``; return the numbers."""
    import torch

    from pluralign.online.plots import plot_trajectories

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds, steps, responses = (8, 40, 10000) if quick else (12, 50, 20000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 3-candidate bandit on the tiny LM: extra threads only contend
    try:
        results = [run_setting(s, out / f"run-{i}", rounds, steps, responses, seed) for i, s in enumerate(SETTINGS)]
    finally:
        torch.set_num_threads(threads)
    plot_trajectories([dict(name=r["name"], loop=r["loop"], lab=r["lab"], labels=MOVES) for r in results],
                      out / "dynamics.png", "Online IPO on the tiny LM (solid) vs the lab's exact MRS-IPO (dashed)")
    lines = ["## Online dynamics: oscillation and collapse", "",
             f"Online IPO (lambda = 1, {rounds} rounds x {steps} steps, {responses} on-policy responses per round) "
             "of the tiny LM on one prompt with three one-token candidates, next to the lab's exact MRS-IPO "
             "iteration from the LM's initial candidate distribution.", "",
             "| setting | lab predicts | monitor says | max abs gap to lab | late cycle strength (loop / lab) | "
             "final entropy (loop / lab) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['expect']} | {r['monitor']} | {r['max_abs_gap']:.3f} | "
                     f"{r['late_cycle_strength']:.2e} / {r['lab_late_cycle_strength']:.2e} | "
                     f"{r['final_entropy']:.3f} / {r['lab_final_entropy']:.3f} |")
    lines += ["", "The gap to the lab is sampling noise (each round labels a finite set of on-policy pairs); beyond the "
              "threshold the fixed point is unstable, so that noise grows and the loop's rotation drifts in phase "
              "from the lab's while keeping its amplitude.", "", "Monitor warnings at the last round:", ""]
    lines += [f"- {r['name']}: " + ("; ".join(r["warnings"]) or "none") for r in results]
    lines += ["", "![dynamics](dynamics.png)", ""]
    (out / "dynamics.md").write_text("\n".join(lines))
    return {"rounds": rounds, "steps_per_round": steps, "responses": responses,
            "settings": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in results]}
