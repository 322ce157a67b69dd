"""``pluralign aggregate RUN_DIR``: MMRA weights for an EM run's type policies, and the mixture policy.

Loads the EM run directory (:mod:`pluralign.mixture.em_run`), computes the regret matrix
(:mod:`pluralign.mixture.regret`): exactly on the world when the run's data was drawn from one
(``data.world`` in its config.json), else from generations on the run's prompts (``data.path``)
or on a given prompt file; solves the min-max game by LP and by optimistic Hedge, and writes

    OUT/regret.json   the log-ratio matrix L, the regret matrix, both weight vectors, the LP value,
                      the worst-case regret of MMRA (LP and Hedge), of every single type policy and of
                      the uniform mixture, each type's regret under each of them; on a world also the
                      world's true per-group regret of each of these policies
    OUT/mixture/      the MixturePolicy with the chosen solver's weights (``MixturePolicy.from_pretrained``)

(OUT defaults to RUN_DIR/aggregate.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from pluralign.mixture.em_run import load_em_run
from pluralign.mixture.policy import MixtureError
from pluralign.mixture.regret import REGRET_KINDS, mmra_weights, sampled_log_ratios, world_log_ratios

MODES = ("auto", "world", "sampled")
SOLVERS = ("lp", "hedge")


def read_prompts(path) -> list[str]:
    """Prompts from a file: ``.txt``, one per non-empty line; JSONL/JSON whose rows all carry a string
    ``"prompt"``; or any preference data file ``pluralign.data.load_preferences`` reads (its records' prompts)."""
    path = Path(path)
    if not path.is_file():
        raise MixtureError(f"--prompts {path}: no such file")
    if path.suffix == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = _json_rows(path)
        if rows is not None and rows and all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
            prompts = [r["prompt"] for r in rows]
        else:
            from pluralign.data.loaders import load_preferences

            prompts = [r.prompt for r in load_preferences(path).records]
    if not prompts:
        raise MixtureError(f"--prompts {path}: no prompt found")
    return prompts


def _json_rows(path: Path) -> list | None:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def distinct(prompts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(prompts))


def world_group_regrets(mixture, world, mixtures: dict) -> dict:
    """The world's true per-group regret (``evaluate_policy``: max_k r_g(x, k) - E_pi r_g(x, .), mean
    over prompts, Bradley-Terry reward units) of each ``{name: weights}`` mixture of the type
    policies, evaluated on each prompt's candidates as sum_j w_j pi_j(.|x, C)
    (:func:`~pluralign.mixture.policy.conditioned_mixture`), so a mixture's regret is the
    w-weighted sum of its types' regrets."""
    from pluralign.mixture.policy import conditioned_mixture
    from pluralign.worlds import evaluate_policy

    per_type = [mixture.candidate_type_logprobs(p, c) for p, c in zip(world.prompts, world.candidates)]
    out = {}
    for name, w in mixtures.items():
        dists = [conditioned_mixture(lp, np.asarray(w, dtype=float)) for lp in per_type]
        out[name] = evaluate_policy(world, dists)["mean"]["regret"]
    return out


def aggregate(run_dir, *, prompts_file=None, mode: str = "auto", regret_kind: str = "reward",
              importance: Sequence[float] | None = None, num_completions: int = 4, max_new_tokens: int = 64,
              temperature: float = 1.0, max_prompts: int = 64, seed: int = 0, hedge_steps: int = 100_000,
              solver: str = "lp", out=None, batch_size: int | None = None) -> dict:
    """Run MMRA on an EM run directory and write OUT/regret.json and OUT/mixture/ (module doc).
    Returns the regret.json content. Arguments are checked before any model is loaded."""
    from pluralign.generation import SamplingParams

    for name, value, allowed in (("mode", mode, MODES), ("regret", regret_kind, REGRET_KINDS), ("solver", solver, SOLVERS)):
        if value not in allowed:
            raise MixtureError(f"{name}: expected one of {allowed}, got {value!r}")
    if max_prompts < 1 or hedge_steps < 1:
        raise MixtureError(f"max_prompts and hedge_steps: expected >= 1, got {max_prompts} and {hedge_steps}")
    run = load_em_run(run_dir)
    K = run.result["n_types"]
    if importance is not None and (len(importance) != K or any(not c > 0 for c in importance)):
        raise MixtureError(f"importance: expected {K} positive numbers (one per type), got {list(importance)}")
    if mode == "world" and prompts_file is not None:
        raise MixtureError("mode 'world' computes exactly on the run's world; --prompts applies to sampled mode")
    world = run.world() if prompts_file is None and mode != "sampled" else None
    if mode == "world" and world is None:
        raise MixtureError(f"mode 'world': {Path(run_dir) / 'config.json'} has no data.world")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, num_completions=num_completions, seed=seed)
    prompts_info: dict = {}
    if world is None:
        if prompts_file is not None:
            source, prompts = str(prompts_file), read_prompts(prompts_file)
        elif run.world() is not None:
            source, prompts = f"world {run.config['data']['world']['name']!r}", run.world().prompts
        elif run.data_path():
            from pluralign.data.loaders import load_preferences

            source = run.data_path()
            if not Path(source).exists():
                raise MixtureError(f"{Path(run_dir) / 'config.json'}: data.path {source!r}: no such file "
                                   "(pass --prompts FILE)")
            prompts = [r.prompt for r in load_preferences(source).records]
        else:
            raise MixtureError(f"{Path(run_dir) / 'config.json'}: neither data.world nor data.path; pass --prompts FILE")
        unique = distinct(prompts)
        prompts_info = {"source": source, "n_distinct": len(unique), "n_used": min(len(unique), max_prompts)}
        prompts = unique[:max_prompts]

    import torch

    mixture = run.mixture().to("cuda" if torch.cuda.is_available() else "cpu")
    if world is not None:
        ratios = world_log_ratios(mixture, world)
        prompts_info = {"source": f"world {run.config['data']['world']['name']!r} (exact, candidate sets)",
                        "n_distinct": world.n_prompts, "n_used": world.n_prompts}
    else:
        from pluralign.rl.scoring import encode_prompt

        prompt_ids = [encode_prompt(mixture.tokenizer, p) for p in prompts]
        ratios = sampled_log_ratios(mixture, prompt_ids, params, batch_size=batch_size)
    regret = ratios.regret(regret_kind)
    solved = mmra_weights(regret, importance, hedge_steps, names=mixture.type_names)
    out = Path(out) if out is not None else Path(run_dir) / "aggregate"
    out.mkdir(parents=True, exist_ok=True)
    chosen = solved["weights"][solver]
    if (out / "mixture").exists():
        shutil.rmtree(out / "mixture")
    mixture.with_weights(chosen).save_pretrained(out / "mixture")
    beta = float(run.result["beta"])
    result = {
        "run_dir": str(run_dir), "n_types": K, "type_names": mixture.type_names, "beta": beta,
        "method": ratios.method, "regret_kind": regret_kind,
        "units": "log-ratio units (implicit reward / beta); regret_reward_units = beta * regret",
        "log_ratios": ratios.L.tolist(),
        "log_ratios_stderr": None if ratios.stderr is None else ratios.stderr.tolist(),
        "n_samples_per_type": ratios.n_samples,
        "regret": regret.tolist(), "regret_reward_units": (beta * regret).tolist(),
        "prompts": prompts_info,
        "sampling": None if world is not None else {"num_completions": num_completions, "max_new_tokens": max_new_tokens,
                                                     "temperature": temperature, "seed": seed},
        **solved,
        "lp_hedge_max_abs_diff": float(np.max(np.abs(np.subtract(solved["weights"]["lp"], solved["weights"]["hedge"])))),
        "mixture": {"path": "mixture", "weights": chosen, "solver": solver},
    }
    if world is not None:
        policies = {"mmra_lp": solved["weights"]["lp"], "mmra_hedge": solved["weights"]["hedge"],
                    "uniform": np.full(K, 1.0 / K), **{n: np.eye(K)[k] for k, n in enumerate(mixture.type_names)}}
        groups = world_group_regrets(mixture, world, policies)
        result["world_group_regret"] = groups
        result["world_worst_group_regret"] = {name: max(r.values()) for name, r in groups.items()}
    (out / "regret.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def summary(result: dict) -> str:
    """A few lines for the terminal: weights and worst-case regrets."""
    lines = [f"MMRA on {result['n_types']} types ({result['method']}, {result['regret_kind']} regret; "
             f"{result['prompts']['n_used']} prompts from {result['prompts']['source']})",
             "weights  lp: " + ", ".join(f"{w:.4f}" for w in result["weights"]["lp"])
             + "   hedge: " + ", ".join(f"{w:.4f}" for w in result["weights"]["hedge"]),
             "worst-case regret (1/beta units): " + ", ".join(f"{k} {v:.4g}" for k, v in result["worst_case_regret"].items())]
    return "\n".join(lines)
