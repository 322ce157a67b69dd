"""The lab's reproducible experiments: each returns a JSON-ready dict and writes its files.

Used by ``pluralign lab <name>``; every function takes an output directory and writes
``<name>.json`` (and a PNG where a picture helps). matplotlib is imported lazily (Agg backend).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .collapse import collapse_reference_numbers, preference_collapse_table
from .dynamics import (contraction_bound, cycle_instability, entropy_collapsed, mrs_dpo_run, mrs_ipo_run,
                       parameter_grid)
from .em_dpo import em_dpo_tabular, random_world, simulate_annotators
from .generators import TRANSITIVE_EXAMPLE, cyclic_matrix
from .identify import identifiability_experiment
from .mmra import mmra_hedge, mmra_lp, payoff_matrix, regret_matrix, worst_case_regret

CYCLE_START = (0.5, 0.3, 0.2)  # a perturbed start: the uniform point is itself a fixed point
OSCILLATION_THRESHOLD = 1e-6  # late-window variance above this counts as persistent oscillation


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else str(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def collapse(out_dir, p_majority: float = 0.51) -> dict:
    """Preference-collapse table (paper 1, §2.2) -> collapse.json, collapse.png."""
    out = Path(out_dir)
    rows = preference_collapse_table(p_majority)
    result = {"p_majority": p_majority, "reference_numbers": collapse_reference_numbers(p_majority), "rows": rows}
    write_json(result, out / "collapse.json")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    betas = sorted({r["beta"] for r in rows})
    for ref in sorted({r["ref_majority"] for r in rows}):
        ys = [next(r["kl_rlhf_minority"] for r in rows if r["beta"] == b and r["ref_majority"] == ref) for b in betas]
        ax.plot(betas, ys, marker="o", label=f"KL-RLHF, pi_ref(y1)={ref:g}")
    ax.plot(betas, [next(r["pm_rlhf_minority"] for r in rows if r["beta"] == b) for b in betas], "k--",
            label="PM-RLHF softmax(r/beta)")
    ax.axhline(1 - p_majority, color="g", lw=2, label=f"preference matching ({1 - p_majority:g})")
    ax.set_xscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("minority mass pi(y2)")
    ax.set_title(f"Preference collapse, P(y1 > y2) = {p_majority:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "collapse.png", dpi=120)
    plt.close(fig)
    return result


def _dynamics_cases():
    """(name, method, P, cycle strength a or None, alpha, beta, lambda, start)."""
    cycle = cyclic_matrix(0.3)
    cases = [(f"cycle a=0.3 alpha={a:g} beta={b:g}", "ipo", cycle, 0.3, a, b, 1.0, CYCLE_START)
             for a, b in ((0.5, 4.0), (0.5, 6.0), (0.9, 2.0))]
    cases += [(f"transitive alpha={a:g} beta=2", "ipo", TRANSITIVE_EXAMPLE, None, a, 2.0, 1.0, None)
              for a in (0.5, 0.9, 1.0)]
    # DPO's beta divides the implicit reward (h ~ logit(P)/beta), so larger beta means a weaker
    # round: the cycle that oscillates under IPO at beta = 6 converges under DPO, and vice versa.
    cases += [(f"DPO cycle a=0.3 alpha=0.5 beta={b:g}", "dpo", cycle, 0.3, 0.5, b, 1.0, CYCLE_START)
              for b in (6.0, 0.5)]
    cases += [("DPO transitive alpha=1 beta=2", "dpo", TRANSITIVE_EXAMPLE, None, 1.0, 2.0, 1.0, None)]
    return cases


def dynamics(out_dir, steps: int = 3000, window: int = 1000, dpo_steps: int = 300) -> dict:
    """Named MRS-IPO / MRS-DPO cases of paper 4 §5.6 -> dynamics.json, dynamics.png."""
    out = Path(out_dir)
    window = min(window, max(1, steps // 3))
    cases, trajectories = [], {}
    for name, kind, P, cycle_a, alpha, beta, lam, start in _dynamics_cases():
        if kind == "ipo":
            run = mrs_ipo_run(P, alpha, beta, lam, pi_init=start, steps=steps, window=window, record=True)
        else:
            run = mrs_dpo_run(P, alpha, beta, lam, pi_init=start, steps=dpo_steps, window=min(window, dpo_steps // 3),
                              record=True)
        strength = float(run.cycle_strength[0, 0])
        collapsed = bool(entropy_collapsed(run)[0, 0])
        status = "collapsed" if collapsed else ("oscillating" if strength > OSCILLATION_THRESHOLD else "converged")
        case = {"name": name, "method": kind, "P": P, "alpha": alpha, "beta": beta, "lam": lam,
                "pi_init": start, "steps": run.steps, "window": run.window,
                "final_pi": run.final_pi[0, 0], "final_entropy": float(run.final_entropy[0, 0]),
                "cycle_strength": strength, "last_entropy_increase": int(run.last_entropy_increase[0, 0]),
                "contraction_bound": contraction_bound(P, alpha, beta, lam),
                "effective_strength": beta * lam / (1 - alpha) if alpha < 1 else float("inf"), "status": status}
        if cycle_a is not None:  # the IPO criterion; MRS-DPO has different thresholds
            case["instability"] = cycle_instability(cycle_a, alpha, beta, lam)
        cases.append(case)
        trajectories[name] = run.trajectory[:, 0, 0, :]
    result = {"cases": cases}
    write_json(result, out / "dynamics.json")
    plt = _pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(13, 10))
    for ax, case in zip(axes.ravel(), cases):
        traj = trajectories[case["name"]]
        shown = min(traj.shape[0], 400)
        for k in range(traj.shape[1]):
            ax.plot(np.arange(shown), traj[:shown, k], lw=1, label=f"pi({k + 1})")
        ax.set_title(f"{case['name']}\n{case['status']}, H={case['final_entropy']:.3g}", fontsize=8)
        ax.set_xlabel("round t")
        ax.set_ylim(-0.02, 1.02)
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dynamics.png", dpi=110)
    plt.close(fig)
    return result


def phase(out_dir, a: float = 0.3, n_alpha: int = 41, n_strength: int = 41, max_strength: float = 10.0,
          steps: int = 3000, window: int = 1000) -> dict:
    """Phase diagram over alpha and beta*lambda (lambda = 1) for the a-cycle -> phase.json, phase.png.

    Cycle strength of MRS-IPO on a grid, with the analytic boundary alpha^2 + a^2 (beta lam)^2 / 3 = 1.
    ``agreement`` compares "oscillating" (strength > 1e-6) with "criterion > 1" away from the
    boundary band |criterion - 1| < 0.05, where convergence is too slow to judge in ``steps``.
    """
    out = Path(out_dir)
    window = min(window, max(1, steps // 3))
    alphas = np.linspace(0.0, 0.98, n_alpha)
    strengths = np.linspace(0.0, max_strength, n_strength)
    al, be, la = parameter_grid(alphas, strengths, [1.0])
    run = mrs_ipo_run(cyclic_matrix(a), al, be, la, pi_init=CYCLE_START, steps=steps, window=window,
                      track_entropy=False)
    strength = run.cycle_strength[:, 0].reshape(n_alpha, n_strength)
    criterion = (al**2 + a**2 * be**2 / 3.0).reshape(n_alpha, n_strength)
    oscillating = strength > OSCILLATION_THRESHOLD
    clear = np.abs(criterion - 1.0) >= 0.05
    agreement = float(np.mean(oscillating[clear] == (criterion[clear] > 1.0)))
    result = {"a": a, "lam": 1.0, "steps": steps, "window": window, "alphas": alphas, "beta_lam": strengths,
              "cycle_strength": strength, "criterion": criterion, "agreement_off_boundary": agreement,
              "n_clear_points": int(clear.sum())}
    write_json(result, out / "phase.json")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    image = ax.pcolormesh(strengths, alphas, np.log10(strength + 1e-32), shading="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="log10 cycle strength")
    curve_alpha = np.linspace(0, 1, 200)
    ax.plot(np.sqrt(3 * (1 - curve_alpha**2)) / a, curve_alpha, "r-", lw=2,
            label=r"$\alpha^2 + a^2(\beta\lambda)^2/3 = 1$")
    ax.set_xlim(strengths[0], strengths[-1])
    ax.set_xlabel(r"$\beta\lambda$")
    ax.set_ylabel(r"$\alpha$")
    ax.set_title(f"MRS-IPO, 3-cycle a={a:g}: agreement {agreement:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phase.png", dpi=120)
    plt.close(fig)
    return result


def identify(out_dir, seed: int = 0, n_annotators: int = 1000) -> dict:
    """Binary vs ranking identifiability of the +theta/-theta population -> identify.json, identify.png."""
    out = Path(out_dir)
    result = identifiability_experiment(seed=seed, n_annotators=n_annotators)
    write_json(result, out / "identify.json")
    plt = _pyplot()
    names = list(result["designs"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    colors = ["tab:red", "tab:green", "tab:blue"][: len(names)]
    ax.bar(names, [result["designs"][n]["ari"] for n in names], color=colors)
    ax.set_ylabel("adjusted Rand index")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Recovering +theta / -theta annotator types")
    fig.tight_layout()
    fig.savefig(out / "identify.png", dpi=120)
    plt.close(fig)
    return result


def importance_tuples(n_types: int, values=(1.0, 2.0, 4.0, 8.0)) -> list[tuple]:
    """Importance-weight tuples with one entry in ``values`` and the others 1 (PAPERS.md §4.5)."""
    tuples = {tuple([1.0] * n_types)}
    for i in range(n_types):
        for v in values:
            c = [1.0] * n_types
            c[i] = v
            tuples.add(tuple(c))
    return sorted(tuples)


def mmra(out_dir, seed: int = 0, n_types: int = 3, n_annotators: int = 150, per_annotator: int = 40,
         set_size: int = 3, hedge_steps: int = 100_000) -> dict:
    """Tabular EM-DPO then min-max-regret aggregation (paper 3) -> mmra.json, mmra.png."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    world = random_world(rng, n_types=n_types)
    orders, annotator, types = simulate_annotators(world, n_annotators, per_annotator, set_size, rng)
    em = em_dpo_tabular(orders, annotator, world.pi_ref, world.beta, n_types, rng, true_types=types)
    regret = regret_matrix(em.policies, world.pi_ref)
    R = payoff_matrix(regret)
    w_lp, value_lp = mmra_lp(R)
    w_hedge = mmra_hedge(R, hedge_steps)
    single = [worst_case_regret(R, np.eye(n_types)[j]) for j in range(n_types)]
    sweep = []
    for c in importance_tuples(n_types):
        Rc = payoff_matrix(regret, c)
        w_c, v_c = mmra_lp(Rc)
        sweep.append({"importance": c, "weights": w_c, "worst_case_regret": v_c,
                      "best_single": min(worst_case_regret(Rc, np.eye(n_types)[j]) for j in range(n_types))})
    result = {"seed": seed, "n_types": n_types, "n_annotators": n_annotators,
              "observations_per_annotator": per_annotator,
              "set_size": set_size, "ari": em.ari, "em_iterations": em.fit.n_iter, "eta_hat": em.fit.eta,
              "regret": regret, "weights_lp": w_lp, "weights_hedge": w_hedge,
              "max_weight_difference": float(np.max(np.abs(w_lp - w_hedge))),
              "worst_case_regret_lp": value_lp, "worst_case_regret_hedge": worst_case_regret(R, w_hedge),
              "worst_case_regret_single_policies": single, "importance_sweep": sweep}
    write_json(result, out / "mmra.json")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = [f"pi_{j + 1}" for j in range(n_types)] + ["MMRA (LP)", "MMRA (Hedge)"]
    ax.bar(labels, single + [value_lp, result["worst_case_regret_hedge"]])
    ax.set_ylabel("worst-type regret")
    ax.set_title("Single type policies vs min-max-regret mixture")
    fig.tight_layout()
    fig.savefig(out / "mmra.png", dpi=120)
    plt.close(fig)
    return result
