"""Min-max regret aggregation of per-type policies (paper 3, PAPERS.md §4.5).

Given per-type policies pi_1..pi_K (tabular, [K, X, Y]) and the reference, type i's implicit
reward (divided by beta) is ``log(pi_i/pi_ref)``. The regret matrix (the authors' reward-only
notion, computed exactly instead of from samples) is

    L[i, j] = mean_x E_{y ~ pi_j(.|x)} [log pi_i(y|x) - log pi_ref(y|x)],   Regret_i(j) = L[i, i] - L[i, j],

and the game payoff is ``R[0, :] = 0`` (dummy row) and ``R[i+1, j] = c_i (L[i, i] - L[i, j])``.
The deployed policy samples j ~ w per prompt, so a mixture's regret is linear in w.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linprog

from .optima import safe_log


def regret_matrix(policies, pi_ref) -> np.ndarray:
    """``Regret[i, j] = L[i, i] - L[i, j]`` (see module doc); ``policies`` [K, X, Y], ``pi_ref`` [X, Y]."""
    L = log_ratio_matrix(policies, pi_ref)
    return np.diag(L)[:, None] - L


def log_ratio_matrix(policies, pi_ref) -> np.ndarray:
    """``L[i, j] = mean_x E_{y ~ pi_j} log(pi_i / pi_ref)`` (see module doc), same arguments as ``regret_matrix``."""
    pol = np.asarray(policies, dtype=float)
    ref = np.asarray(pi_ref, dtype=float)
    if pol.ndim == 2:
        pol = pol[:, None, :]
    ref = ref.reshape(pol.shape[1:])
    if np.any(pol <= 0) or np.any(ref <= 0):
        raise ValueError("policies and pi_ref must be strictly positive (log-ratios enter the regret)")
    log_ratio = safe_log(pol) - safe_log(ref)[None]  # [K, X, Y]
    return np.einsum("ixy,jxy->ij", log_ratio, pol) / pol.shape[1]


def payoff_matrix(regret, importance=None) -> np.ndarray:
    """Game payoff ``R`` [(K+1), K]: a zero dummy row, then ``R[i+1, j] = c_i Regret[i, j]``."""
    regret = np.asarray(regret, dtype=float)
    K = regret.shape[0]
    if regret.shape != (K, K):
        raise ValueError(f"regret must be square, got {regret.shape}")
    c = np.ones(K) if importance is None else np.asarray(importance, dtype=float)
    if c.shape != (K,) or np.any(c <= 0):
        raise ValueError(f"importance weights must be {K} positive numbers")
    return np.vstack([np.zeros((1, K)), c[:, None] * regret])


def worst_case_regret(R, w) -> float:
    """``max_q q^T R w`` over the simplex = the largest row of ``R w`` (the dummy row makes it >= 0)."""
    return float(np.max(np.asarray(R) @ np.asarray(w)))


def mmra_lp(R) -> tuple[np.ndarray, float]:
    """Exact min-max weights: ``min_{w, t} t  s.t.  R w <= t (every row), w in the simplex`` (scipy HiGHS)."""
    R = np.asarray(R, dtype=float)
    n_rows, K = R.shape
    res = linprog(c=np.concatenate([np.zeros(K), [1.0]]),
                  A_ub=np.hstack([R, -np.ones((n_rows, 1))]), b_ub=np.zeros(n_rows),
                  A_eq=np.concatenate([np.ones(K), [0.0]])[None, :], b_eq=[1.0],
                  bounds=[(0, None)] * K + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"MMRA linear program failed: {res.message}")
    w = np.clip(res.x[:K], 0.0, None)
    return w / w.sum(), float(res.x[K])


def mmra_hedge(R, n_steps: int = 100_000, step_size: float | None = None) -> np.ndarray:
    """Optimistic Hedge for ``min_w max_q q^T R w`` (PAPERS.md §4.5); returns ``w = mean_t y_t``.

    ``x_t ∝ x_{t-1} exp(2 eta R y_{t-1} - eta R y_{t-2})`` (max player, rows),
    ``y_t ∝ y_{t-1} exp(-2 eta R^T x_{t-1} + eta R^T x_{t-2})`` (min player, the K policies),
    with ``eta = 5 / sqrt(T)`` by default and uniform starts.
    """
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or n_steps < 1:
        raise ValueError(f"R must be a 2-D payoff matrix and n_steps >= 1, got {R.shape}, {n_steps}")
    n_rows, K = R.shape
    eta = 5.0 / math.sqrt(n_steps) if step_size is None else float(step_size)
    # Plain Python floats: for a handful of types this loop is about twice as fast as numpy calls.
    rows, cols = R.tolist(), R.T.tolist()
    x, y = [1.0 / n_rows] * n_rows, [1.0 / K] * K
    log_x, log_y = [0.0] * n_rows, [0.0] * K
    gain_x_prev = [sum(a * b for a, b in zip(r, y)) for r in rows]  # R y_{t-2}
    gain_y_prev = [sum(a * b for a, b in zip(c, x)) for c in cols]  # R^T x_{t-2}
    total = [0.0] * K
    for _ in range(n_steps):
        gain_x = [sum(a * b for a, b in zip(r, y)) for r in rows]
        gain_y = [sum(a * b for a, b in zip(c, x)) for c in cols]
        log_x = [lx + eta * (2.0 * g - gp) for lx, g, gp in zip(log_x, gain_x, gain_x_prev)]
        log_y = [ly - eta * (2.0 * g - gp) for ly, g, gp in zip(log_y, gain_y, gain_y_prev)]
        gain_x_prev, gain_y_prev = gain_x, gain_y
        top_x, top_y = max(log_x), max(log_y)
        log_x = [v - top_x for v in log_x]
        log_y = [v - top_y for v in log_y]
        ex = [math.exp(v) for v in log_x]
        norm_x = sum(ex)
        x = [v / norm_x for v in ex]
        ey = [math.exp(v) for v in log_y]
        norm_y = sum(ey)
        y = [v / norm_y for v in ey]
        total = [a + b for a, b in zip(total, y)]
    return np.array(total) / n_steps
