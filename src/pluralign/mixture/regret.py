"""MMRA on language models: the regret matrix of K type policies and the min-max mixture weights.

Type i's implicit reward is r_i(x, y) = beta log(pi_i(y|x) / pi_SFT(y|x)) (the EM run's M-step beta;
paper 3, PAPERS.md §4.3). The authors' matrix (``find_weightsv2.py:compute_minmax_regret``) is

    L[i, j] = mean_x E_{y ~ pi_j(.|x)} [log pi_i(y|x) - log pi_SFT(y|x)]        (= E r_i / beta)

and two regrets of deploying pi_j for type i are built from it, both in units of 1/beta (multiply
by beta for reward units; the min-max weights do not change under that positive scaling):

* ``"reward"`` (the authors'): Regret[i, j] = L[i, i] - L[i, j], type i's implicit-reward gap.
* ``"kl"`` (KL-regularised): with J_i(pi) = E_pi r_i - beta KL(pi || pi_SFT), whose maximiser is
  pi_i, J_i(pi_i) - J_i(pi_j) = beta (L[j, j] - L[i, j]) = beta KL(pi_j || pi_i).

A mixture that draws j ~ w per prompt has reward regret exactly sum_j w_j Regret[i, j]; its KL
regret is at most sum_j w_j Regret_kl[i, j] (KL(mix || pi_SFT) <= sum_j w_j KL(pi_j || pi_SFT)
by convexity), so the linear game minimises an upper bound of it.

L is computed three ways: :func:`sampled_log_ratios` from k generations per prompt of each pi_j,
scored by every pi_i and pi_SFT in the shared-prefix layout (a Monte Carlo estimate, with its
standard error); :func:`world_log_ratios` exactly on a world's candidate sets, from each policy's
renormalised candidate distribution (the lab's ``log_ratio_matrix`` per prompt); the lab's
``pluralign.lab.mmra`` also solves the game (LP and optimistic Hedge) with per-group importance
weights c: payoff R[0, :] = 0, R[i + 1, j] = c_i Regret[i, j].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.lab.mmra import log_ratio_matrix, mmra_hedge, mmra_lp, payoff_matrix, worst_case_regret

REGRET_KINDS = ("reward", "kl")


@dataclass
class LogRatios:
    """L [K, K] with L[i, j] = E_{y ~ pi_j} log(pi_i / pi_SFT); ``stderr`` [K, K] for a sampled estimate."""

    L: np.ndarray
    method: str  # "sampled" | "world"
    stderr: np.ndarray | None = None
    n_samples: int | None = None  # per column (generations of pi_j), sampled only

    def regret(self, kind: str = "reward") -> np.ndarray:
        return regret_from_log_ratios(self.L, kind)


def regret_from_log_ratios(L, kind: str = "reward") -> np.ndarray:
    """Regret[i, j] (module doc): ``"reward"``: L[i, i] - L[i, j]; ``"kl"``: L[j, j] - L[i, j]."""
    L = np.asarray(L, dtype=float)
    if kind == "reward":
        return np.diag(L)[:, None] - L
    if kind == "kl":
        return np.diag(L)[None, :] - L
    raise ValueError(f"regret kind: expected one of {REGRET_KINDS}, got {kind!r}")


def sampled_log_ratios(mixture, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                       batch_size: int | None = None) -> LogRatios:
    """Monte Carlo L: ``params.num_completions`` generations per prompt of each pi_j (seed
    ``params.seed + j``), each scored by every pi_i and by pi_SFT. L[i, j] is the mean over the
    N = prompts x k completions of log pi_i(y) - log pi_SFT(y) (every prompt has k draws, so this is
    the mean over prompts of the per-prompt means); ``stderr`` treats the N draws as i.i.d.
    (conservative for a fixed prompt set: it includes the spread between prompts). Temperature 1
    without top-k/top-p samples pi_j itself; other sampling settings estimate L under that sampler."""
    K = mixture.n_types
    L, se = np.zeros((K, K)), np.zeros((K, K))
    generated = []
    for j, module in mixture.type_policies():
        seed = None if params.seed is None else params.seed + j
        gen = TransformersGenerator(module, mixture.tokenizer, batch_size=batch_size)
        generated.append(gen.generate(prompt_ids, dataclasses.replace(params, seed=seed)))
    n = len(generated[0].finish_reasons)
    for j, completions in enumerate(generated):
        scores = mixture.type_sequence_logprobs(completions)  # [K + 1, N]: types, then the reference
        ratios = scores[:-1] - scores[-1][None]
        L[:, j] = ratios.mean(axis=1)
        se[:, j] = ratios.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.nan
    return LogRatios(L, "sampled", se, n)


def world_log_ratios(mixture, world) -> LogRatios:
    """Exact L on a world: per prompt, each type's and the reference's renormalised candidate
    distribution (``pluralign.eval.world_eval``), the lab's ``log_ratio_matrix`` on them, averaged
    uniformly over prompts (candidate counts may differ between prompts)."""
    from pluralign.eval.world_eval import candidate_distributions

    types = [candidate_distributions(module, mixture.tokenizer, world) for _, module in mixture.type_policies()]
    with mixture.reference() as ref:
        reference = candidate_distributions(ref, mixture.tokenizer, world)
    per_prompt = [log_ratio_matrix(np.stack([t[x] for t in types])[:, None, :], reference[x][None])
                  for x in range(world.n_prompts)]
    return LogRatios(np.mean(per_prompt, axis=0), "world")


def mmra_weights(regret, importance=None, hedge_steps: int = 100_000, names: Sequence[str] | None = None) -> dict:
    """Min-max weights of a regret matrix by LP and by optimistic Hedge (``pluralign.lab.mmra``),
    with the worst-case (importance-weighted) regret of each mixture beside every single type
    policy's and the uniform mixture's.

    Returns {"payoff", "importance", "weights": {"lp", "hedge"}, "lp_value", "worst_case_regret":
    {"mmra_lp", "mmra_hedge", "uniform", <type name>...}, "type_regrets": {same keys: [c_i Regret_i(w)]}}.
    """
    regret = np.asarray(regret, dtype=float)
    K = regret.shape[0]
    names = [f"type_{k}" for k in range(K)] if names is None else list(names)
    R = payoff_matrix(regret, importance)
    w_lp, value = mmra_lp(R)
    w_hedge = mmra_hedge(R, n_steps=hedge_steps)
    mixtures = {"mmra_lp": w_lp, "mmra_hedge": w_hedge, "uniform": np.full(K, 1.0 / K),
                **{name: np.eye(K)[k] for k, name in enumerate(names)}}
    return {
        "payoff": R.tolist(),
        "importance": (np.ones(K) if importance is None else np.asarray(importance, dtype=float)).tolist(),
        "weights": {"lp": w_lp.tolist(), "hedge": w_hedge.tolist()},
        "lp_value": value,
        "hedge_steps": hedge_steps,
        "worst_case_regret": {key: worst_case_regret(R, w) for key, w in mixtures.items()},
        "type_regrets": {key: (R[1:] @ w).tolist() for key, w in mixtures.items()},
    }
