"""Social-choice structure of a preference matrix (paper 4, PAPERS.md §5.2).

``P_ij = Pr(i beats j)``; "i beats j" means the strict majority ``P_ij > 1/2``. All functions take
one K x K matrix unless stated otherwise.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_preference_matrix


def _single(P) -> np.ndarray:
    P = as_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"expected one K x K preference matrix, got shape {P.shape}")
    return P


def copeland_scores(P) -> np.ndarray:
    """Copeland score: number of strict pairwise wins plus 1/2 per exact tie (``P_ij = 1/2``, j != i)."""
    P = _single(P)
    wins = (P > 0.5).sum(axis=1) + 0.5 * ((P == 0.5).sum(axis=1) - 1)
    return wins.astype(float)


def copeland_ranking(P) -> np.ndarray:
    """Responses ordered best first by Copeland score, ties broken by the row sum of P (then index)."""
    P = _single(P)
    return np.lexsort((np.arange(P.shape[0]), -P.sum(axis=1), -copeland_scores(P)))


def condorcet_winner(P) -> int | None:
    """The response that beats every other one (``P_ij > 1/2`` for all j != i), or None."""
    P = _single(P)
    K = P.shape[0]
    for i in range(K):
        if all(P[i, j] > 0.5 for j in range(K) if j != i):
            return i
    return None


def smith_set(P) -> np.ndarray:
    """Indices of the Smith set: the smallest non-empty set whose members all beat every non-member.

    Computed as the top strongly connected component of the weak majority relation
    (``i R j`` iff ``P_ij >= 1/2``): i is in the Smith set iff i reaches every response through
    R (transitive closure by Warshall's algorithm). A Condorcet winner is a Smith set of size 1.
    """
    P = _single(P)
    reach = P >= 0.5
    for k in range(P.shape[0]):
        reach = reach | (reach[:, k:k + 1] & reach[k:k + 1, :])
    return np.flatnonzero(reach.all(axis=1))


def is_cyclic(P) -> bool:
    """True iff the strict majority relation contains a directed cycle (no transitive ranking)."""
    P = _single(P)
    beats = P > 0.5
    reach = beats.copy()
    for k in range(P.shape[0]):
        reach = reach | (reach[:, k:k + 1] & reach[k:k + 1, :])
    return bool(np.any(np.diag(reach)))


def is_strongly_transitive(P, atol: float = 0.0) -> bool:
    """Row dominance after ordering by Copeland score (paper 4's strong transitivity, PAPERS.md §5.2).

    With responses ordered best first by :func:`copeland_ranking`, every higher-ranked row must
    dominate every lower-ranked row entrywise: ``P_ik >= P_jk`` for all k whenever i is ranked
    above j (checking consecutive pairs suffices). Then ``(P mu)_i >= (P mu)_j`` for every
    sampler mu, so IPO preserves the order for any mu. Row dominance is equivalent to strong
    stochastic transitivity (``P_ij, P_jk >= 1/2`` implies ``P_ik >= max(P_ij, P_jk)``).

    Reading: PAPERS.md §5.2 marks this definition as an interpretation (the paper's text is not
    available). Implemented: weak row dominance (``>=``, ties allowed) along the Copeland order.
    Alternatives the paper may mean instead: a strict version (``>``; then ties in P are never
    strongly transitive), or only weak stochastic transitivity (the majority relation is a
    linear order, :func:`is_cyclic` false), which is weaker and does not make IPO
    order-preserving for every mu. ``atol`` relaxes the inequalities.
    """
    P = _single(P)
    order = copeland_ranking(P)
    rows = P[order]
    return bool(np.all(rows[:-1] >= rows[1:] - atol))
