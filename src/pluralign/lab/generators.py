"""Preference matrices for the dynamics experiments (paper 4, PAPERS.md §5.3-5.6).

Random matrices follow the paper's HelpSteer construction (§5.4): K responses with several
attribute scores each; for every pair a random attribute decides, ``P_ij = sigmoid(scale (s_i - s_j))``.
Because different pairs can be judged on different attributes, cycles appear.
"""

from __future__ import annotations

import numpy as np

from .tournament import is_cyclic, is_strongly_transitive

CYCLIC_SKEW = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])

# A strongly transitive 3 x 3 matrix that reproduces the §5.6 numbers (beta = 2, lambda = 1,
# uniform pi_ref): alpha = 0.5 -> [0.571, 0.257, 0.172], H = 0.972; alpha = 0.9 ->
# [0.9796, 0.0179, 0.0024], H = 0.107; alpha = 1 -> [1, 0, 0].
TRANSITIVE_EXAMPLE = np.array([[0.5, 0.7, 0.8], [0.3, 0.5, 0.6], [0.2, 0.4, 0.5]])


def cyclic_matrix(a: float) -> np.ndarray:
    """Three-response cycle ``P = 11^T/2 + a S`` (1 beats 2 beats 3 beats 1), ``0 < a <= 1/2`` (§5.3)."""
    if not 0 < a <= 0.5:
        raise ValueError(f"cycle strength a must lie in (0, 1/2], got {a!r}")
    return 0.5 + a * CYCLIC_SKEW


def attribute_preference_matrices(n: int, rng: np.random.Generator, *, K: int = 4, n_attributes: int = 5,
                                  scale: float = 1.0, correlation: float = 0.0) -> np.ndarray:
    """``n`` random K x K matrices by the per-pair random-attribute construction (§5.4).

    Scores ``s[r, a] = sqrt(c) q_r + sqrt(1 - c) e_{r,a}`` with ``q, e ~ N(0, 1)`` and
    ``c = correlation`` (a shared quality factor makes attributes agree, as real ratings do, and
    makes transitive matrices common); for each pair i<j an attribute a is drawn uniformly and
    ``P_ij = sigmoid(scale (s[i, a] - s[j, a]))``, ``P_ji = 1 - P_ij``. Returns shape [n, K, K].
    """
    if n < 0 or K < 2 or n_attributes < 1:
        raise ValueError("need n >= 0, K >= 2 and n_attributes >= 1")
    if not 0 <= correlation <= 1:
        raise ValueError(f"correlation must lie in [0, 1], got {correlation!r}")
    quality = rng.standard_normal((n, K, 1))
    scores = np.sqrt(correlation) * quality + np.sqrt(1 - correlation) * rng.standard_normal((n, K, n_attributes))
    iu, ju = np.triu_indices(K, k=1)
    attr = rng.integers(n_attributes, size=(n, iu.size))
    rows = np.arange(n)[:, None]
    diff = scores[rows, iu[None, :], attr] - scores[rows, ju[None, :], attr]
    P = np.full((n, K, K), 0.5)
    upper = 0.5 * (1.0 + np.tanh(0.5 * scale * diff))
    P[:, iu, ju] = upper
    P[:, ju, iu] = 1.0 - upper
    return P


def classify_matrix(P) -> str:
    """'cyclic' (strict majority has a cycle), 'strongly_transitive' (row dominance), or 'other'."""
    if is_cyclic(P):
        return "cyclic"
    if is_strongly_transitive(P):
        return "strongly_transitive"
    return "other"


def sample_matrices(kind: str, n: int, rng: np.random.Generator, *, K: int = 4, n_attributes: int = 5,
                    scale: float = 1.0, correlation: float = 0.0, max_draws: int = 10_000_000) -> np.ndarray:
    """``n`` matrices of class ``kind`` ('cyclic' or 'strongly_transitive') by rejection (§5.4 filter)."""
    if kind not in ("cyclic", "strongly_transitive"):
        raise ValueError(f"kind must be 'cyclic' or 'strongly_transitive', got {kind!r}")
    kept: list[np.ndarray] = []
    drawn = 0
    while len(kept) < n:
        if drawn >= max_draws:
            raise RuntimeError(f"found only {len(kept)} {kind} matrices in {drawn} draws")
        batch = attribute_preference_matrices(max(64, 4 * (n - len(kept))), rng, K=K, n_attributes=n_attributes,
                                              scale=scale, correlation=correlation)
        drawn += batch.shape[0]
        kept.extend(P for P in batch if classify_matrix(P) == kind)
    return np.stack(kept[:n]) if n else np.zeros((0, K, K))
