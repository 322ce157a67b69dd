"""Input validation shared by the lab modules.

Every public lab function turns its inputs into float arrays through these helpers so that a
wrong shape or an invalid distribution fails early with a ``ValueError`` naming the argument and
what was expected.
"""

from __future__ import annotations

import numpy as np

DIST_ATOL = 1e-8


def as_vector(x, name: str, *, min_ndim: int = 1) -> np.ndarray:
    """Float array with at least ``min_ndim`` dimensions and only finite entries."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one response, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values")
    return arr


def as_distribution(p, name: str, *, size: int | None = None) -> np.ndarray:
    """Probability vector(s) over the last axis: non-negative, summing to one (atol 1e-8)."""
    arr = as_vector(p, name)
    if size is not None and arr.shape[-1] != size:
        raise ValueError(f"{name} must have {size} entries on its last axis, got shape {arr.shape}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative (a probability distribution)")
    sums = arr.sum(axis=-1)
    if not np.allclose(sums, 1.0, atol=DIST_ATOL * max(1, arr.shape[-1])):
        raise ValueError(f"{name} must sum to 1 over its last axis, got sums {np.atleast_1d(sums)[:5]}")
    return arr / sums[..., None]


def as_preference_matrix(P, name: str = "P", *, atol: float = 1e-8) -> np.ndarray:
    """Preference matrix (or batch, shape [..., K, K]) with P_ij + P_ji = 1 and entries in [0, 1].

    ``P_ij = Pr(response i beats response j)``; the diagonal must be 1/2.
    """
    arr = np.asarray(P, dtype=float)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} must be a square matrix (or a batch [..., K, K]), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values")
    if np.any(arr < -atol) or np.any(arr > 1 + atol):
        raise ValueError(f"{name} entries must be probabilities in [0, 1]")
    if not np.allclose(arr + np.swapaxes(arr, -1, -2), 1.0, atol=atol):
        raise ValueError(f"{name} must satisfy P_ij + P_ji = 1 (and P_ii = 1/2)")
    return np.clip(arr, 0.0, 1.0)


def as_positive(x, name: str) -> float:
    """A strictly positive finite scalar."""
    value = float(x)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    return value


def as_mask(mask, name: str, size: int) -> np.ndarray:
    """Boolean mask of length ``size`` from a boolean array or a collection of indices."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        if arr.shape != (size,):
            raise ValueError(f"{name} as a boolean mask must have shape ({size},), got {arr.shape}")
        return arr.copy()
    idx = np.asarray(list(np.atleast_1d(arr)), dtype=int) if arr.size else np.zeros(0, dtype=int)
    if np.any(idx < 0) or np.any(idx >= size):
        raise ValueError(f"{name} indices must lie in [0, {size}), got {idx.tolist()}")
    out = np.zeros(size, dtype=bool)
    out[idx] = True
    return out


def same_last_axis(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must cover the same responses, got last axes {a.shape[-1]} and {b.shape[-1]}"
        )
