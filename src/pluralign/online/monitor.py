"""Per-round dynamics monitor (paper 4, PAPERS.md §5.3-5.4).

For each prompt: the policy's candidate distribution pi_t, its entropy, the cycle strength (sum
over candidates of the variance of pi over the last ``window`` rounds, the lab's
:func:`~pluralign.lab.dynamics.cycle_strength`), oscillation (that strength above a threshold
with some candidate's mass turning around inside the window), collapsing (every mass monotone and the
entropy falling, by more than the collapse threshold, over the window: a drift to a vertex), collapse (entropy
below a threshold and not increasing over a full window of rounds), and from the labels drawn so far the estimate

    P_hat[i, j] = wins(i over j) / comparisons(i, j)     (1/2 where i and j were never compared)

with ``||P_hat - 1/2||_2`` (on free text, where responses never repeat, the labeler's own
probabilities on the probe set's fixed responses take P_hat's place) and the lab's stability criteria at the run's (alpha, beta, lambda):
the contraction bound ``alpha + (beta lam / 2) ||P - 1/2||_2 < 1`` (sufficient for a unique
attracting fixed point) and, for three candidates with cyclic majority, the 3-cycle criterion
``alpha^2 + a^2 beta^2 lam^2 / 3 > 1`` (oscillation), with ``a`` the cyclic component of P_hat.
beta is the preference strength 1/tau of IPO (``1 / objective.beta``); for DPO the same numbers
are an indication only (MRS-DPO's thresholds differ, §5.3). lambda is the mixture sampler's; the
uniform and instance samplers never read pi_t, so for them lambda = 0 (no sampler feedback).
"""

from __future__ import annotations

import logging

import numpy as np

from pluralign.lab.dynamics import contraction_bound, cycle_instability, cycle_strength
from pluralign.lab.tournament import is_cyclic

log = logging.getLogger(__name__)

CYCLE = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], dtype=float)  # S_12 = S_23 = S_31 = 1


def entropy(pi: np.ndarray) -> float:
    p = np.asarray(pi, dtype=float)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


class PreferenceCounts:
    """Pairwise win counts per prompt, accumulated from every labelled group."""

    @property
    def labelled(self) -> bool:
        return any(w.sum() > 0 for w in self.wins)

    def __init__(self, sizes: list[int]):
        self.wins = [np.zeros((K, K)) for K in sizes]

    def add(self, x: int, rankings: np.ndarray) -> None:
        m = rankings.shape[1]
        for a in range(m):
            for b in range(a + 1, m):
                win, lose = rankings[:, a], rankings[:, b]
                keep = win != lose
                np.add.at(self.wins[x], (win[keep], lose[keep]), 1.0)

    def p_hat(self, x: int) -> np.ndarray:
        w = self.wins[x]
        n = w + w.T
        return np.where(n > 0, w / np.maximum(n, 1), 0.5)


def cyclic_component(P: np.ndarray) -> float:
    """``a`` in ``P = 11^T/2 + a S + rest`` (projection of P - 1/2 on the 3-cycle S)."""
    return float(((P - 0.5) * CYCLE).sum() / (CYCLE**2).sum())


def stability(P: np.ndarray, alpha: float, beta: float, lam: float) -> dict:
    """The lab's criteria for one prompt's (estimated) preference matrix."""
    out = {"p_norm": float(np.linalg.norm(P - 0.5, 2)), "contraction_bound": contraction_bound(P, alpha, beta, lam)}
    if P.shape[0] == 3 and is_cyclic(P):
        a = cyclic_component(P)
        out.update(cyclic_a=abs(a), cycle_instability=cycle_instability(abs(a), alpha, beta, lam))
    return out


def _turns(traj: np.ndarray) -> bool:
    """Some coordinate of a [T, K] trajectory changes direction (beyond rounding)."""
    d = np.diff(traj, axis=0)
    d = np.where(np.abs(d) > 1e-12, np.sign(d), 0.0)
    return bool(np.any((d[1:] * d[:-1]) < 0))


def round_metrics(t: int, trajectory: list[list[np.ndarray]], p_hats: list[np.ndarray], labelled: bool, alpha: float,
                  beta: float, lam: float, window: int, collapse_entropy: float,
                  oscillation_threshold: float) -> tuple[dict, list[str]]:
    """(metrics row, warnings) for the state after round t (``trajectory[r][x]``: pi of prompt x
    at the start of round r, r = 0..t). ``p_hats[x]``: the preference matrix the stability criteria
    read for prompt x (estimated from the labels, or the labeler's own probabilities on a probe's
    responses); ``labelled``: whether it holds any information yet (else no stability warnings)."""
    current = trajectory[-1]
    X = len(current)
    ent = np.array([entropy(p) for p in current])
    full = len(trajectory) >= window
    strengths, collapsed = [], []
    for x in range(X):
        traj = np.stack([state[x] for state in trajectory[-window:]])
        strengths.append(float(cycle_strength(traj, window=traj.shape[0])))
        hist = np.array([entropy(state[x]) for state in trajectory[-window:]])
        collapsed.append(bool(full and ent[x] < collapse_entropy and np.all(np.diff(hist) <= 1e-12)))
    stab = [stability(p_hats[x], alpha, beta, lam) for x in range(X)]
    # A rotation turns some candidate's mass around inside the window; a drift to a vertex moves every
    # mass monotonically (and the entropy down): it has cycle strength too but is no oscillation.
    turning = [full and _turns(np.stack([state[x] for state in trajectory[-window:]])) for x in range(X)]
    entropy_falls = []
    for x in range(X):
        hist = np.array([entropy(state[x]) for state in trajectory[-window:]])
        entropy_falls.append(full and bool(np.all(np.diff(hist) < 0) and hist[0] - hist[-1] > collapse_entropy))
    bounds = np.array([s["contraction_bound"] for s in stab])
    instab = [s["cycle_instability"] for s in stab if "cycle_instability" in s]
    oscillating = [s > oscillation_threshold and turn for s, turn in zip(strengths, turning)]
    collapsing = [not turn and falls and not c for turn, falls, c in zip(turning, entropy_falls, collapsed)]
    row = {
        "online/round": t,
        "online/entropy": float(ent.mean()),
        "online/entropy_min": float(ent.min()),
        "online/cycle_strength": float(np.mean(strengths)),
        "online/cycle_strength_max": float(np.max(strengths)),
        "online/collapsed_prompts": int(sum(collapsed)),
        "online/oscillating_prompts": int(sum(oscillating)),
        "online/collapsing_prompts": int(sum(collapsing)),
        "online/p_hat_norm": float(np.mean([s["p_norm"] for s in stab])),
        "online/p_hat_norm_max": float(np.max([s["p_norm"] for s in stab])),
        "online/contraction_bound_max": float(bounds.max()),
        "online/contracting_prompts": int((bounds < 1).sum()),
        "online/cyclic_prompts": len(instab),
        "online/pi": [p.tolist() for p in current],
        "online/prompt_entropy": ent.tolist(),
    }
    if instab:
        row["online/cycle_instability_max"] = float(max(instab))
    warnings = []
    if labelled:
        if bounds.max() >= 1:
            warnings.append(f"round {t}: contraction bound alpha + beta*lam/2*||P_hat - 1/2|| = {bounds.max():.3f} >= 1 "
                            f"on {(bounds >= 1).sum()} of {X} prompts: the lab's stability guarantee does not hold")
        if instab and max(instab) > 1:
            warnings.append(f"round {t}: cyclic preferences with alpha^2 + a^2 beta^2 lam^2 / 3 = {max(instab):.3f} > 1 "
                            f"on {sum(i > 1 for i in instab)} prompt(s): the lab predicts persistent oscillation")
    if any(oscillating):
        warnings.append(f"round {t}: {sum(oscillating)} prompt(s) oscillating (cycle strength over {window} rounds "
                        f"up to {max(strengths):.3g})")
    if any(collapsing):
        warnings.append(f"round {t}: {sum(collapsing)} prompt(s) collapsing (every mass monotone and the entropy "
                        f"falling by more than {collapse_entropy} nats over {window} rounds)")
    if any(collapsed):
        warnings.append(f"round {t}: {sum(collapsed)} prompt(s) collapsed (entropy < {collapse_entropy} nats)")
    row["online/warnings"] = warnings
    return row, warnings
