"""The lab's reproducible experiments: each returns a JSON-ready dict and writes its files.

Used by ``pluralign lab <name>``; every function takes an output directory and writes
``<name>.json`` and a PNG (:mod:`pluralign.lab.plots`). A result's ``warnings`` list says when a
label (converged / oscillating, an ARI) rests on too few steps or annotators to be trusted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import plots
from .bandit import bandit_experiment
from .collapse import collapse_reference_numbers, preference_collapse_table
from .dynamics import (MIN_CLASSIFY_WINDOW, classify_runs, contraction_bound, cycle_instability, mrs_dpo_run,
                       mrs_ipo_run, parameter_grid)
from .em_dpo import em_dpo_tabular, random_world, simulate_annotators
from .generators import TRANSITIVE_EXAMPLE, cyclic_matrix
from .identify import ari_chance_level, ari_warning, identifiability_experiment
from .mmra import mmra_hedge, mmra_lp, payoff_matrix, regret_matrix, worst_case_regret

CYCLE_START = (0.5, 0.3, 0.2)  # a perturbed start: the uniform point is itself a fixed point


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


def collapse(out_dir, p_majority: float = 0.51) -> dict:
    """Preference-collapse table (paper 1, §2.2) -> collapse.json, collapse.png."""
    out = Path(out_dir)
    rows = preference_collapse_table(p_majority)
    result = {"p_majority": p_majority, "reference_numbers": collapse_reference_numbers(p_majority), "rows": rows,
              "warnings": []}
    write_json(result, out / "collapse.json")
    plots.collapse_figure(rows, p_majority, out / "collapse.png")
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


def _unsettled_warning(what: str, steps: int, window: int) -> str:
    if window < MIN_CLASSIFY_WINDOW:
        return (f"{what}: a late window of {window} states is too short to classify "
                f"(need {MIN_CLASSIFY_WINDOW}); label left 'undetermined', run more steps")
    return (f"{what}: not settled after {steps} steps (the late-window variance is still changing); "
            "label left 'undetermined', run more steps")


def dynamics(out_dir, steps: int = 3000, window: int = 1000, dpo_steps: int = 300) -> dict:
    """Named MRS-IPO / MRS-DPO cases of paper 4 §5.6 -> dynamics.json, dynamics.png.

    Each case is labelled by :func:`pluralign.lab.dynamics.classify_runs` over the last
    ``min(window, steps // 3)`` states; a case that cannot be labelled says so in ``warnings``.
    """
    out = Path(out_dir)
    cases, trajectories, warnings = [], {}, []
    for name, kind, P, cycle_a, alpha, beta, lam, start in _dynamics_cases():
        n_steps = steps if kind == "ipo" else dpo_steps
        win = min(window, max(1, n_steps // 3))
        runner = mrs_ipo_run if kind == "ipo" else mrs_dpo_run
        run = runner(P, alpha, beta, lam, pi_init=start, steps=n_steps, window=win, record=True)
        status = str(classify_runs(run)[0, 0])
        if status == "undetermined":
            warnings.append(_unsettled_warning(name, n_steps, win))
        case = {"name": name, "method": kind, "P": P, "alpha": alpha, "beta": beta, "lam": lam,
                "pi_init": start, "steps": run.steps, "window": run.window,
                "final_pi": run.final_pi[0, 0], "final_entropy": float(run.final_entropy[0, 0]),
                "cycle_strength": float(run.cycle_strength[0, 0]),
                "late_half_cycle_strength": float(run.late_half_strength[0, 0]),
                "last_entropy_increase": int(run.last_entropy_increase[0, 0]),
                "contraction_bound": contraction_bound(P, alpha, beta, lam),
                "effective_strength": beta * lam / (1 - alpha) if alpha < 1 else float("inf"), "status": status}
        if cycle_a is not None:  # the IPO criterion; MRS-DPO has different thresholds
            case["instability"] = cycle_instability(cycle_a, alpha, beta, lam)
        cases.append(case)
        trajectories[name] = run.trajectory[:, 0, 0, :]
    result = {"cases": cases, "warnings": warnings}
    write_json(result, out / "dynamics.json")
    plots.dynamics_figure(cases, trajectories, out / "dynamics.png")
    return result


def phase(out_dir, a: float = 0.3, n_alpha: int = 41, n_strength: int = 41, max_strength: float = 10.0,
          steps: int = 3000, window: int = 1000) -> dict:
    """Phase diagram over alpha and beta*lambda (lambda = 1) for the a-cycle -> phase.json, phase.png.

    Cycle strength of MRS-IPO on a grid, with the analytic boundary alpha^2 + a^2 (beta lam)^2 / 3 = 1.
    Each point is labelled by :func:`pluralign.lab.dynamics.classify_runs`; ``agreement``
    compares "oscillating" with "criterion > 1" over the points away from the boundary band
    |criterion - 1| < 0.05 that settled within ``steps`` (the others are counted and warned about).
    """
    out = Path(out_dir)
    window = min(window, max(1, steps // 3))
    alphas = np.linspace(0.0, 0.98, n_alpha)
    strengths = np.linspace(0.0, max_strength, n_strength)
    al, be, la = parameter_grid(alphas, strengths, [1.0])
    run = mrs_ipo_run(cyclic_matrix(a), al, be, la, pi_init=CYCLE_START, steps=steps, window=window,
                      track_entropy=False)
    strength = run.cycle_strength[:, 0].reshape(n_alpha, n_strength)
    status = classify_runs(run)[:, 0].reshape(n_alpha, n_strength)
    criterion = (al**2 + a**2 * be**2 / 3.0).reshape(n_alpha, n_strength)
    clear = np.abs(criterion - 1.0) >= 0.05
    judged = clear & (status != "undetermined")
    n_unsettled = int((clear & ~judged).sum())
    agreement = (float(np.mean((status[judged] == "oscillating") == (criterion[judged] > 1.0)))
                 if judged.any() else float("nan"))
    warnings = []
    if n_unsettled:
        warnings.append(_unsettled_warning(f"phase: {n_unsettled} of {int(clear.sum())} off-boundary grid points",
                                           steps, window) + "; they are left out of the agreement")
    result = {"a": a, "lam": 1.0, "steps": steps, "window": window, "alphas": alphas, "beta_lam": strengths,
              "cycle_strength": strength, "status": status, "criterion": criterion,
              "agreement_off_boundary": agreement, "n_clear_points": int(judged.sum()),
              "n_unsettled_points": n_unsettled, "warnings": warnings}
    write_json(result, out / "phase.json")
    plots.phase_figure(result, out / "phase.png")
    return result


def identify(out_dir, seed: int = 0, n_annotators: int = 1000) -> dict:
    """Binary vs ranking identifiability of the +theta/-theta population -> identify.json, identify.png."""
    out = Path(out_dir)
    result = identifiability_experiment(seed=seed, n_annotators=n_annotators)
    result["warnings"] = [w for name, d in result["designs"].items()
                          if (w := ari_warning(f"identify {name}", n_annotators, d["ari_chance_95"]))]
    write_json(result, out / "identify.json")
    plots.identify_figure(result, out / "identify.png")
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
    chance = ari_chance_level(types, em.fit.labels, np.random.default_rng([seed, 1]))
    warning = ari_warning("mmra EM-DPO types", n_annotators, chance)
    result = {"seed": seed, "n_types": n_types, "n_annotators": n_annotators,
              "observations_per_annotator": per_annotator,
              "set_size": set_size, "ari": em.ari, "ari_cluster": em.cluster_ari, "ari_chance_95": chance,
              "em_iterations": em.fit.n_iter, "eta_hat": em.fit.eta,
              "regret": regret, "hedge_steps": hedge_steps, "weights_lp": w_lp, "weights_hedge": w_hedge,
              "max_weight_difference": float(np.max(np.abs(w_lp - w_hedge))),
              "worst_case_regret_lp": value_lp, "worst_case_regret_hedge": worst_case_regret(R, w_hedge),
              "worst_case_regret_single_policies": single, "importance_sweep": sweep,
              "warnings": [warning] if warning else []}
    write_json(result, out / "mmra.json")
    plots.mmra_figure(result, out / "mmra.png")
    return result


def bandit(out_dir, seed: int = 0, n_users: int = 100, pairs_per_user: int = 100, em_steps: int = 20) -> dict:
    """DPO, Cluster-DPO and EM-DPO on the authors' contextual bandit (paper 3) -> bandit.json, bandit.png."""
    out = Path(out_dir)
    result = bandit_experiment(seed, n_users=n_users, pairs_per_user=pairs_per_user, em_steps=em_steps)
    warning = ari_warning("bandit user groups", n_users, result["ari_chance_95"])
    result["warnings"] = [warning] if warning else []
    write_json(result, out / "bandit.json")
    plots.bandit_figure(result, out / "bandit.png")
    return result
