"""Iterative alignment dynamics: MRS-IPO and MRS-DPO (paper 4, PAPERS.md §5.3-5.6).

One round refreshes the reference to ``pi_ref_t ∝ pi_t^alpha pi_ref^(1-alpha)`` and the sampler
to ``mu_t = lambda pi_t + (1 - lambda) pi_0`` and then solves the one-shot problem:

    MRS-IPO:  pi_{t+1} = softmax(alpha log pi_t + (1-alpha) log pi_ref + beta P mu_t)
    MRS-DPO:  pi_{t+1} = dpo_optimum(P, pi_ref_t, mu_t, beta)

beta is the preference strength (= 1/tau, tau being TRL's IPO beta). :func:`mrs_ipo_run` runs many
matrices and parameter settings at once; the state lives as logits with the response axis first
([K, settings, matrices]) so every update is a handful of whole-array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_distribution, as_preference_matrix
from .dpo import dpo_log_ratio
from .optima import safe_log, softmax

DEFAULT_STEPS = 3000
DEFAULT_WINDOW = 1000


def mrs_ipo_step(pi, P, pi_ref, pi0, alpha: float, beta: float, lam: float) -> np.ndarray:
    """One MRS-IPO update for one matrix (reference implementation, PAPERS.md §5.5).

    ``softmax(alpha log pi + (1-alpha) log pi_ref + beta P (lam pi + (1-lam) pi0))``; a weight of
    exactly 0 drops its log term, so a vanished probability (log 0) cannot produce 0 * inf.
    """
    logits = beta * P @ (lam * pi + (1 - lam) * pi0)
    if alpha != 0:
        logits = logits + alpha * safe_log(pi)
    if alpha != 1:
        logits = logits + (1 - alpha) * safe_log(pi_ref)
    return softmax(logits)


def parameter_grid(alphas, betas, lams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cartesian product of parameter values, flattened to three aligned 1-D arrays (settings)."""
    a, b, c = np.meshgrid(np.asarray(alphas, float), np.asarray(betas, float), np.asarray(lams, float),
                          indexing="ij")
    return a.ravel(), b.ravel(), c.ravel()


@dataclass
class MRSRun:
    """Summary of an MRS run over settings x matrices (arrays shaped [S, M] or [S, M, K]).

    ``window_mean``/``window_var``: per-coordinate mean and variance of pi_t over the last
    ``window`` states; ``cycle_strength`` = ``window_var`` summed over coordinates;
    ``late_half_strength``: the same over the last ``window // 2`` states only (a sustained
    oscillation has about the same strength in both; a decaying or drifting run does not);
    ``last_entropy_increase``: last step t with H(pi_t) > H(pi_{t-1}) + tol (-1 if none), so
    entropy is monotone non-increasing from that step on (only meaningful when
    ``entropy_tracked``); ``trajectory``: [steps+1, S, M, K] when recorded, else None.
    """

    alpha: np.ndarray
    beta: np.ndarray
    lam: np.ndarray
    final_pi: np.ndarray
    final_entropy: np.ndarray
    window_mean: np.ndarray
    window_var: np.ndarray
    cycle_strength: np.ndarray
    late_half_strength: np.ndarray
    last_entropy_increase: np.ndarray
    steps: int
    window: int
    trajectory: np.ndarray | None = None
    entropy_tracked: bool = True


def _settings(alpha, beta, lam) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, c = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (alpha, beta, lam))
    try:
        a, b, c = np.broadcast_arrays(a, b, c)
    except ValueError as err:
        raise ValueError("alpha, beta and lam must broadcast to one 1-D array of settings") from err
    if a.ndim != 1:
        raise ValueError("alpha, beta and lam must be scalars or 1-D arrays (one entry per setting)")
    if np.any((a < 0) | (a > 1)) or np.any((c < 0) | (c > 1)) or np.any(b < 0):
        raise ValueError("need 0 <= alpha <= 1, 0 <= lam <= 1 and beta >= 0")
    return a.copy(), b.copy(), c.copy()


def _per_matrix(x, name: str, M: int, K: int, default: np.ndarray, positive: bool) -> np.ndarray:
    arr = default if x is None else as_distribution(x, name, size=K)
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive (log of it enters the update)")
    return np.broadcast_to(arr, (M, K)) if arr.ndim == 1 else arr


def mrs_ipo_run(P, alpha, beta, lam, *, pi_ref=None, pi0=None, pi_init=None, steps: int = DEFAULT_STEPS,
                window: int = DEFAULT_WINDOW, record: bool = False, track_entropy: bool = True,
                entropy_tol: float = 1e-12) -> MRSRun:
    """Run MRS-IPO for every (setting, matrix) pair at once (paper 4, PAPERS.md §5.3).

    ``P``: [K, K] or [M, K, K]; ``alpha``, ``beta``, ``lam``: scalars or aligned 1-D arrays of S
    settings (see :func:`parameter_grid`); ``pi_ref``, ``pi0``, ``pi_init``: [K] or [M, K]
    (default uniform; pi_ref and pi_init must be positive). Runs ``steps`` updates and keeps
    running sums over the last ``window`` states only, unless ``record`` asks for the whole
    trajectory. Since ``P = 11^T/2 + A`` and softmax ignores constant shifts, the update uses
    the skew part ``A`` only: ``z <- alpha z + (1-alpha) log pi_ref + beta A mu_t``.
    """
    P = as_preference_matrix(P)
    P = P[None] if P.ndim == 2 else P
    if P.ndim != 3:
        raise ValueError(f"P must be [K, K] or [M, K, K], got shape {P.shape}")
    M, K = P.shape[0], P.shape[-1]
    a, b, c = _settings(alpha, beta, lam)
    S = a.size
    if steps < 1 or not 1 <= window <= steps + 1:
        raise ValueError(f"need steps >= 1 and 1 <= window <= steps + 1, got steps={steps}, window={window}")
    uniform = np.full(K, 1.0 / K)
    ref = _per_matrix(pi_ref, "pi_ref", M, K, uniform, positive=True)
    start = _per_matrix(pi_init, "pi_init", M, K, uniform, positive=True)
    base = _per_matrix(pi0, "pi0", M, K, uniform, positive=False)

    skew = np.ascontiguousarray(np.moveaxis(P - 0.5, 0, -1))  # [K, K, M], skew[i, j] = A_ij

    col = (slice(None), None)  # settings broadcast as [S, 1]
    alpha_s, beta_lam, beta_off = a[col], (b * c)[col], (b * (1 - c))[col]
    ref_t = np.ascontiguousarray(ref.T)[:, None, :]  # [K, 1, M]
    base_t = np.ascontiguousarray(base.T)[:, None, :]
    const = (1 - alpha_s) * np.log(ref_t) + beta_off * np.einsum("ijm,jsm->ism", skew, base_t)
    z = np.broadcast_to(np.log(start.T)[:, None, :], (K, S, M)).copy()
    z -= z.max(axis=0)
    e = np.exp(z)
    total = e.sum(axis=0)
    pi = e / total
    drift, work = np.empty_like(z), np.empty_like(z)
    plane = np.empty((S, M))
    first_window_step = steps + 1 - window  # window = states first_window_step .. steps
    anchor = pi.copy()  # shifted sums keep tiny variances accurate
    sum_d, sum_d2 = np.zeros_like(pi), np.zeros_like(pi)
    half = max(window // 2, 1)
    sum_h, sum_h2 = np.zeros_like(pi), np.zeros_like(pi)
    entropy_prev = np.log(total) - (pi * z).sum(axis=0)
    entropy = np.empty((S, M))
    last_increase = np.full((S, M), -1, dtype=np.int64)
    trajectory = np.empty((steps + 1, S, M, K)) if record else None
    if record:
        trajectory[0] = np.moveaxis(pi, 0, -1)

    def sum_over_responses(x, out):  # a chain of adds beats a reduction over a short first axis
        np.copyto(out, x[0])
        for k in range(1, K):
            out += x[k]
        return out

    for t in range(1, steps + 1):
        np.einsum("ijm,jsm->ism", skew, pi, out=drift)  # A pi_t
        z *= alpha_s
        z += const
        drift *= beta_lam
        z += drift
        np.maximum.reduce(z, axis=0, out=plane)
        z -= plane
        np.exp(z, out=e)
        sum_over_responses(e, total)
        np.divide(e, total, out=pi)
        if track_entropy:  # H = log(sum e) - sum pi z, with z the max-shifted logits
            np.multiply(pi, z, out=work)
            np.subtract(np.log(total, out=entropy), sum_over_responses(work, plane), out=entropy)
            np.copyto(last_increase, t, where=entropy > entropy_prev + entropy_tol)
            entropy, entropy_prev = entropy_prev, entropy
        if t == first_window_step:
            anchor = pi.copy()
        elif t > first_window_step:
            np.subtract(pi, anchor, out=work)
            sum_d += work
            if t > steps - half:
                sum_h += work
            work *= work
            sum_d2 += work
            if t > steps - half:
                sum_h2 += work
        if record:
            trajectory[t] = np.moveaxis(pi, 0, -1)

    mean_d = sum_d / window
    var = np.maximum(sum_d2 / window - mean_d**2, 0.0)
    half_var = var if window < 2 else np.maximum(sum_h2 / half - (sum_h / half) ** 2, 0.0)
    final_entropy = np.log(total) - (pi * z).sum(axis=0)
    to_sm = lambda x: np.moveaxis(x, 0, -1)  # noqa: E731  [K, S, M] -> [S, M, K]
    return MRSRun(alpha=a, beta=b, lam=c, final_pi=to_sm(pi), final_entropy=np.maximum(final_entropy, 0.0),
                  window_mean=to_sm(anchor + mean_d), window_var=to_sm(var), cycle_strength=var.sum(axis=0),
                  late_half_strength=half_var.sum(axis=0),
                  last_entropy_increase=last_increase, steps=steps, window=window, trajectory=trajectory,
                  entropy_tracked=track_entropy)


def contraction_bound(P, alpha: float, beta: float, lam: float) -> float:
    """``alpha + (beta lam / 2) ||P - 11^T/2||_2`` (spectral norm; paper 4, PAPERS.md §5.3).

    Below 1 the MRS-IPO map is a contraction in logit space (the softmax Jacobian has norm
    <= 1/2 and constant shifts are removed by the normalisation): a unique interior fixed point,
    reached from any interior start. Only sufficient: it exceeds 1 in all the §5.6 cases.
    """
    P = as_preference_matrix(P)
    return float(alpha + 0.5 * beta * lam * np.linalg.norm(P - 0.5, 2))


def cycle_instability(a: float, alpha: float, beta: float, lam: float) -> float:
    """``alpha^2 + a^2 beta^2 lam^2 / 3``: squared modulus of the Jacobian eigenvalues (§5.3).

    For the three-response cycle ``P = 11^T/2 + a S`` with uniform pi_ref and pi_0 the uniform
    fixed point has eigenvalues ``alpha ± i beta lam a / sqrt(3)`` on 1^⊥; it is unstable iff
    this value exceeds 1 (then trajectories rotate without converging).
    """
    return float(alpha**2 + (a * beta * lam) ** 2 / 3.0)


def cycle_strength(trajectory, window: int = DEFAULT_WINDOW, *, reduction: str = "sum") -> np.ndarray:
    """Time-averaged coordinate variance of pi_t over the last ``window`` states (paper 4, §5.4).

    ``trajectory``: [T, ..., K]. Reading: PAPERS.md §5.4-5.5 leave open whether the K coordinate
    variances are summed or averaged; ``reduction="sum"`` (default, the one :class:`MRSRun`
    reports and the one that gives the §5.6 number: a = 0.3, alpha = 0.5, beta = 6, lambda = 1:
    0.137 over the last 1000 of 3000 steps; ~1e-30 when the run converges) or ``"mean"``
    (= sum / K). The two differ by the constant K, so classifications by a threshold agree once
    the threshold is scaled.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    traj = np.asarray(trajectory, dtype=float)
    if traj.ndim < 2 or not 1 <= window <= traj.shape[0]:
        raise ValueError(f"trajectory must be [T, ..., K] with T >= window, got shape {traj.shape}")
    var = traj[-window:].var(axis=0)
    return var.sum(axis=-1) if reduction == "sum" else var.mean(axis=-1)


def entropy_collapsed(run: MRSRun, threshold: float = 1e-3) -> np.ndarray:
    """Entropy collapse per (setting, matrix): final entropy below ``threshold`` (nats) and entropy
    non-increasing over the whole late window (no increase after ``steps - window``)."""
    if not run.entropy_tracked:
        raise ValueError("entropy_collapsed needs a run made with track_entropy=True")
    monotone_tail = run.last_entropy_increase <= run.steps - run.window
    return (run.final_entropy < threshold) & monotone_tail


OSCILLATION_THRESHOLD = 1e-6  # late-window cycle strength above this counts as oscillation
MIN_CLASSIFY_WINDOW = 50  # fewer late states than this cannot tell a cycle from a transient
RUN_STATUSES = ("converged", "oscillating", "collapsed", "undetermined")


def classify_runs(run: MRSRun, threshold: float = OSCILLATION_THRESHOLD) -> np.ndarray:
    """Label every (setting, matrix) of a run: converged, oscillating, collapsed or undetermined.

    * collapsed: :func:`entropy_collapsed` (when entropy was tracked);
    * converged: cycle strength <= ``threshold`` and not growing (late-half strength at most 1.5
      times the whole window's, or below 1e-20 where the ratio is rounding noise);
    * oscillating: cycle strength > ``threshold`` and sustained (late-half strength at least half
      the whole window's: a decaying run or a monotone drift loses most of it, about 1/4 for a
      linear drift);
    * undetermined: anything else, and every run whose window has fewer than
      ``MIN_CLASSIFY_WINDOW`` (50) states: run more steps before trusting a label.
    Returns an array of strings shaped [S, M].
    """
    strength, half = run.cycle_strength, run.late_half_strength
    labels = np.full(strength.shape, "undetermined", dtype=object)
    if run.window < MIN_CLASSIFY_WINDOW:
        return labels
    converged = (strength <= threshold) & ((half <= 1.5 * strength) | (strength <= 1e-20))
    oscillating = (strength > threshold) & (half >= 0.5 * strength)
    labels[converged] = "converged"
    labels[oscillating] = "oscillating"
    if run.entropy_tracked:
        labels[entropy_collapsed(run)] = "collapsed"
    return labels


def _centred_logit_map(P, pi_ref, pi0, alpha, beta, lam):
    A = P - 0.5
    log_ref = np.log(pi_ref)

    def step(z):
        out = alpha * z + (1 - alpha) * log_ref + beta * A @ (lam * softmax(z) + (1 - lam) * pi0)
        return out - out.mean()

    return step


def _complement_basis(K: int) -> np.ndarray:
    """Orthonormal basis (K x K-1) of the subspace orthogonal to the all-ones vector."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(K), np.eye(K)[:, : K - 1]]))
    return q[:, 1:]


def logit_map_jacobian(P, pi, alpha: float, beta: float, lam: float, *, pi_ref=None, pi0=None,
                       eps: float = 1e-6) -> np.ndarray:
    """Numerical Jacobian of the MRS-IPO map in centred logits at ``pi``, on 1^⊥ ((K-1) x (K-1)).

    Central differences of ``z -> centre(alpha z + (1-alpha) log pi_ref + beta P mu(softmax z))``
    along an orthonormal basis of 1^⊥. Analytically it is ``alpha I + beta lam A (diag pi - pi pi^T)``
    restricted to 1^⊥ (A = P - 11^T/2).
    """
    P = as_preference_matrix(P)
    K = P.shape[0]
    pi = as_distribution(pi, "pi", size=K)
    pi_ref = np.full(K, 1.0 / K) if pi_ref is None else as_distribution(pi_ref, "pi_ref", size=K)
    pi0 = np.full(K, 1.0 / K) if pi0 is None else as_distribution(pi0, "pi0", size=K)
    step = _centred_logit_map(P, pi_ref, pi0, alpha, beta, lam)
    basis = _complement_basis(K)
    z = np.log(pi) - np.log(pi).mean()
    cols = [basis.T @ (step(z + eps * v) - step(z - eps * v)) / (2 * eps) for v in basis.T]
    return np.column_stack(cols)


def mrs_dpo_run(P, alpha: float, beta: float, lam: float, *, pi_ref=None, pi0=None, pi_init=None,
                steps: int = 300, window: int = 100, record: bool = False) -> MRSRun:
    """MRS-DPO for one matrix and one setting: each round solves the DPO population optimum (§5.3).

    ``log pi_{t+1} = alpha log pi_t + (1-alpha) log pi_ref + h_t`` normalised, where ``h_t`` is the
    exact DPO log-ratio (:func:`pluralign.lab.dpo.dpo_log_ratio`) for sampler
    ``mu_t = lam pi_t + (1-lam) pi_0`` and reference ``pi_ref_t ∝ pi_t^alpha pi_ref^(1-alpha)``.
    Kept in log space so vanishing probabilities stay exact; responses whose sampler mass
    underflows to 0 keep their reference ratio. Returns an :class:`MRSRun` with S = M = 1.
    Needs ``0 < P_ij < 1`` off the diagonal.
    """
    P = as_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"mrs_dpo_run takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    uniform = np.full(K, 1.0 / K)
    ref = _per_matrix(pi_ref, "pi_ref", 1, K, uniform, positive=True)[0]
    base = _per_matrix(pi0, "pi0", 1, K, uniform, positive=False)[0]
    log_pi = np.log(_per_matrix(pi_init, "pi_init", 1, K, uniform, positive=True)[0])
    if steps < 1 or not 1 <= window <= steps + 1:
        raise ValueError(f"need steps >= 1 and 1 <= window <= steps + 1, got steps={steps}, window={window}")
    states = np.empty((steps + 1, K))
    states[0] = np.exp(log_pi)
    entropies = np.empty(steps + 1)
    entropies[0] = -np.sum(states[0] * log_pi)
    for t in range(1, steps + 1):
        mu = lam * states[t - 1] + (1 - lam) * base
        log_ref_t = alpha * log_pi + (1 - alpha) * np.log(ref)
        logits = log_ref_t + dpo_log_ratio(P, mu / mu.sum(), beta)
        log_pi = logits - np.logaddexp.reduce(logits)
        states[t] = np.exp(log_pi)
        entropies[t] = -np.sum(states[t] * log_pi)
    increases = np.flatnonzero(np.diff(entropies) > 1e-12)
    late = states[-window:]
    wrap = lambda x: np.asarray(x)[None, None]  # noqa: E731
    return MRSRun(alpha=np.array([alpha]), beta=np.array([beta]), lam=np.array([lam]),
                  final_pi=wrap(states[-1]), final_entropy=wrap(max(entropies[-1], 0.0)),
                  window_mean=wrap(late.mean(axis=0)), window_var=wrap(late.var(axis=0)),
                  cycle_strength=wrap(late.var(axis=0).sum()),
                  late_half_strength=wrap(late[-max(window // 2, 1):].var(axis=0).sum()),
                  last_entropy_increase=wrap(increases[-1] + 1 if increases.size else -1),
                  steps=steps, window=window, trajectory=states[:, None, None, :] if record else None)
