"""Exact population optima of DPO and RPO on a finite response set (papers 2 and 4).

Population DPO loss for a sampler ``mu`` and a general preference matrix ``P`` (PAPERS.md §1.4,
§5.3): draw ``y1, y2 ~ mu`` independently, label the winner with ``P``, and average the DPO loss::

    L_DPO(h) = E[-log sigmoid(beta (h_w - h_l))] = 2 sum_ij mu_i mu_j P_ij softplus(-beta (h_i - h_j))

with ``h = log(pi / pi_ref)``. It equals ``ln 2`` at ``pi = pi_ref``, is convex in h and depends only
on differences of h over the sampled responses ``B = {i : mu_i > 0}``. Its gradient is
``dL/dh_i = -2 beta mu_i sum_j mu_j [P_ij - sigmoid(beta (h_i - h_j))]``, so the optimum solves the
first-order conditions ``sum_j mu_i mu_j [P_ij - sigmoid(beta (h_i - h_j))] = 0`` (paper 4, §5.3).

Both solvers use damped Newton on these conditions (the Hessian is a weighted graph Laplacian,
singular only along constant shifts, which are fixed by the gauge ``sum_{i in B} h_i = 0``) and
converge to machine precision; ``method="lbfgs"`` minimises the loss with scipy instead.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp

from ._checks import as_distribution, as_positive, as_preference_matrix
from .optima import is_bradley_terry, safe_log, softmax

NEWTON_MAX_ITER = 200


def _pair_terms(h: np.ndarray, beta: float):
    """``(sigmoid(d), d)`` with ``d_ij = beta (h_i - h_j)``."""
    d = beta * (h[:, None] - h[None, :])
    return expit(d), d


def dpo_population_loss(h, P, mu, beta: float) -> float:
    """Population DPO loss ``2 sum_ij mu_i mu_j P_ij softplus(-beta (h_i - h_j))`` (see module doc).

    ``h = log(pi / pi_ref)`` (any additive constant); equals ``ln 2`` at ``h = 0``.
    """
    P = as_preference_matrix(P)
    mu = as_distribution(mu, "mu", size=P.shape[-1])
    h = np.asarray(h, dtype=float)
    d = beta * (h[:, None] - h[None, :])
    return float(-2.0 * np.sum(mu[:, None] * mu[None, :] * P * log_expit(d)))


def dpo_first_order_residual(P, pi, pi_ref, mu, beta: float) -> np.ndarray:
    """``sum_j mu_i mu_j [P_ij - sigmoid(beta (h_i - h_j))]`` for ``h = log(pi/pi_ref)`` (paper 4).

    Zero at the DPO population optimum. Responses with ``mu_i = 0`` give 0 by construction.
    """
    P = as_preference_matrix(P)
    K = P.shape[-1]
    pi = as_distribution(pi, "pi", size=K)
    pi_ref = as_distribution(pi_ref, "pi_ref", size=K)
    mu = as_distribution(mu, "mu", size=K)
    sampled = mu > 0
    h = np.zeros(K)
    h[sampled] = safe_log(pi[sampled]) - safe_log(pi_ref[sampled])
    if not np.all(np.isfinite(h)):
        raise ValueError("pi and pi_ref must be positive on the sampled responses")
    sig, _ = _pair_terms(h, beta)
    return mu * ((P - sig) @ mu)


def _newton(evaluate, x0: np.ndarray, tol: float, what: str) -> np.ndarray:
    """Damped Newton for a smooth convex f(x) invariant to constant shifts of x.

    ``evaluate(x)`` returns ``(f, g, F, J)``: the value, its gradient, and a (possibly row-scaled)
    version F of the gradient with its Jacobian J; F = 0 is the stopping test (max |F| <= tol).
    The step solves ``[J; 1^T] dx = [-F; 0]`` (the Newton direction, gauge sum dx = 0) and
    backtracks until Armijo holds on f, or, once f no longer changes beyond rounding, until
    ||F|| decreases (this lets coordinates with tiny weights converge too).
    """
    x = x0.copy()
    n = x.size
    f, g, F, J = evaluate(x)
    for _ in range(NEWTON_MAX_ITER):
        if np.max(np.abs(F)) <= tol:
            return x - x.mean()
        A = np.vstack([J, np.ones((1, n))])
        step = np.linalg.lstsq(A, np.concatenate([-F, [0.0]]), rcond=None)[0]
        slope = min(float(g @ step), 0.0)
        norm_F = np.linalg.norm(F)
        noise = 1e-13 * (1.0 + abs(f))
        t = 1.0
        for _ in range(60):
            f_new, g_new, F_new, J_new = evaluate(x + t * step)
            if f_new <= f + 1e-4 * t * slope:
                break
            if f_new <= f + noise and np.linalg.norm(F_new) <= (1.0 - 1e-4 * t) * norm_F:
                break
            t *= 0.5
        else:
            break
        x = x + t * step
        f, g, F, J = f_new, g_new, F_new, J_new
    if np.max(np.abs(F)) <= 10 * tol:
        return x - x.mean()
    raise RuntimeError(f"{what}: Newton did not converge (max residual {np.max(np.abs(F)):.3e}); "
                       "the optimum may not be finite")


def _dpo_block(P: np.ndarray, mu: np.ndarray, beta: float, tol: float, method: str) -> np.ndarray:
    """Centred optimal h on a block where every mu_i > 0 and 0 < P_ij < 1."""
    if method not in ("newton", "lbfgs"):
        raise ValueError(f"method must be 'newton' or 'lbfgs', got {method!r}")
    n = mu.size
    if n == 1:
        return np.zeros(1)
    logits = np.log(P) - np.log1p(-P)
    h0 = logits @ mu / beta  # exact for Bradley-Terry P, a good start otherwise

    if method == "lbfgs":
        weights = 2.0 * mu[:, None] * mu[None, :] * P

        def loss_and_grad(h):
            sig, d = _pair_terms(h, beta)
            loss = -np.sum(weights * log_expit(d))
            grad = -2.0 * beta * mu * ((P - sig) @ mu)
            return loss, grad

        res = minimize(loss_and_grad, h0, jac=True, method="L-BFGS-B",
                       options={"gtol": max(tol * beta * mu.min(), 1e-15), "ftol": 0.0, "maxiter": 5000,
                                "maxcor": 30})
        return res.x - res.x.mean()

    weights = 2.0 * mu[:, None] * mu[None, :] * P

    def evaluate(h):
        # Row-normalised conditions r_i = sum_j mu_j [P_ij - sigmoid(beta(h_i - h_j))]: dividing
        # the gradient by -2 beta mu_i keeps rarely sampled responses on the common scale.
        sig, d = _pair_terms(h, beta)
        r = (P - sig) @ mu
        s = sig * (1.0 - sig)
        J = -beta * (np.diag(s @ mu) - s * mu[None, :])
        return -np.sum(weights * log_expit(d)), -2.0 * beta * mu * r, r, J

    return _newton(evaluate, h0, tol, "dpo_optimum")


def dpo_optimum(P, pi_ref, mu, beta: float, *, tol: float = 1e-12, method: str = "newton") -> np.ndarray:
    """Population DPO optimum under sampler ``mu`` for a general preference matrix (paper 4, §5.3).

    Solves ``sum_j mu_i mu_j [P_ij - sigmoid(beta (h_i - h_j))] = 0`` with ``h = log pi/pi_ref``
    exactly (damped Newton to ``tol`` on the row-normalised conditions; ``method="lbfgs"``
    minimises the convex population loss with scipy's L-BFGS and the analytic gradient).

    The conditions fix h only up to a constant on ``B = {mu_i > 0}``. Convention: the
    unnormalised log-ratio is centred on B and is 0 off B (unsampled responses get no gradient),
    i.e. ``pi = softmax(log pi_ref + h~)`` with ``sum_{i in B} h~_i = 0`` and ``h~_i = 0`` for
    ``mu_i = 0``. This is the point that gradient descent on free logits started at ``pi_ref``
    converges to, and it is irrelevant when mu has full support.
    ``beta`` is DPO's beta. Requires ``0 < P_ij < 1`` for every sampled pair (otherwise the
    optimum diverges). A batch of problems (leading axes) is solved one by one.
    """
    P = as_preference_matrix(P)
    K = P.shape[-1]
    pi_ref = as_distribution(pi_ref, "pi_ref", size=K)
    mu = as_distribution(mu, "mu", size=K)
    beta = as_positive(beta, "beta")
    batch = np.broadcast_shapes(P.shape[:-2], pi_ref.shape[:-1], mu.shape[:-1])
    if batch:
        P_b = np.broadcast_to(P, batch + (K, K))
        ref_b = np.broadcast_to(pi_ref, batch + (K,))
        mu_b = np.broadcast_to(mu, batch + (K,))
        out = np.empty(batch + (K,))
        for idx in np.ndindex(*batch):
            out[idx] = dpo_optimum(P_b[idx], ref_b[idx], mu_b[idx], beta, tol=tol, method=method)
        return out
    if np.any(pi_ref[mu > 0] <= 0):
        raise ValueError("pi_ref must be positive on every sampled response (mu_i > 0)")
    return softmax(safe_log(pi_ref) + dpo_log_ratio(P, mu, beta, tol=tol, method=method))


def dpo_log_ratio(P: np.ndarray, mu: np.ndarray, beta: float, *, tol: float = 1e-12,
                  method: str = "newton") -> np.ndarray:
    """Optimal unnormalised ``h~ = log(pi/pi_ref) + const`` for one validated problem.

    Centred on the sampled responses and 0 elsewhere (the convention of :func:`dpo_optimum`);
    ``pi = softmax(log pi_ref + h~)``. Working with log-ratios lets callers keep references in
    log space (see the MRS-DPO dynamics).
    """
    sampled = np.flatnonzero(mu > 0)
    block = P[np.ix_(sampled, sampled)]
    off_diag = ~np.eye(sampled.size, dtype=bool)
    if np.any(block[off_diag] <= 0) or np.any(block[off_diag] >= 1):
        raise ValueError("dpo_optimum needs 0 < P_ij < 1 for every pair of sampled responses; "
                         "a deterministic preference drives the optimum to infinity")
    h = np.zeros(P.shape[-1])
    h[sampled] = _dpo_block(block, mu[sampled], beta, tol, method)
    return h


def dpo_is_sampling_invariant(P, atol: float = 1e-9) -> bool:
    """True iff the DPO population optimum is the same for every full-support sampler (paper 4).

    This holds iff P is exactly Bradley-Terry, ``P_ij = sigmoid(s_i - s_j)``: then every pair's
    term is minimised at ``h = s/beta`` simultaneously, whatever the weights ``mu_i mu_j``;
    otherwise the pairwise targets ``logit(P_ij)/beta`` are not consistent and the weighted
    compromise moves with mu. Checked via additivity of ``logit(P)`` (tolerance ``atol``).
    """
    return is_bradley_terry(P, atol=atol)


def chosen_distribution(P, mu) -> np.ndarray:
    """Distribution of the chosen response ``y_w`` when ``y1, y2 ~ mu`` and P labels the winner.

    ``Pr(y_w = i) = 2 mu_i (P mu)_i`` (sums to 1 because ``mu^T P mu = 1/2``). This is RPO's
    ``pi_base`` when the SFT term is the NLL of chosen responses (paper 2, PAPERS.md §3.3).
    """
    P = as_preference_matrix(P)
    mu = as_distribution(mu, "mu", size=P.shape[-1])
    return 2.0 * mu * np.einsum("...ij,...j->...i", P, mu)


def rpo_optimum(P, pi_ref, mu, beta: float, eta: float, pi_base=None, *, tol: float = 1e-11) -> np.ndarray:
    """Population optimum of RPO = DPO + eta*beta*SFT (paper 2, PAPERS.md §3.3).

    Minimises over the simplex, in logits ``theta`` with ``pi = softmax(theta)``::

        F(theta) = L_DPO(h) + eta * beta * E_{y ~ pi_base}[-log pi(y)],   h = theta - log pi_ref

    (``L_DPO`` as in the module doc, per comparison; ``pi_base`` defaults to the distribution of
    chosen responses ``2 mu (P mu)``, the paper's SFT-on-chosen). F is convex in theta: the DPO
    part is convex in differences of theta and ``-log pi(y) = -theta_y + logsumexp(theta)``.

    Derivation of the solution. Stationarity in theta_u for u outside ``B = {mu > 0}`` gives
    ``eta beta (pi_u - pi_base_u) = 0``, so ``pi_u = pi_base_u`` (0 when pi_base_u = 0: the
    infimum is a limit with theta_u -> -inf). Summing the conditions over B (the DPO gradient
    sums to 0) gives ``pi(B) = pi_base(B)``. Writing ``pi_B = pi_base(B) q`` with ``q = softmax(theta_B)``,
    the conditions on B are ``grad_DPO(theta_B) + eta beta (pi_base(B) q - pi_base_B) = 0``, solved
    by damped Newton (Hessian = DPO Laplacian + ``eta beta pi_base(B) (diag q - q q^T)``).
    ``eta = 0`` returns :func:`dpo_optimum` exactly. Unlike DPO, deterministic preferences
    (P_ij in {0, 1}) can have a finite optimum here; a RuntimeError says when none exists.
    """
    P = as_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"rpo_optimum takes one K x K matrix, got shape {P.shape}")
    K = P.shape[-1]
    pi_ref = as_distribution(pi_ref, "pi_ref", size=K)
    mu = as_distribution(mu, "mu", size=K)
    beta = as_positive(beta, "beta")
    if not np.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta == 0:
        return dpo_optimum(P, pi_ref, mu, beta)
    pi_base = chosen_distribution(P, mu) if pi_base is None else as_distribution(pi_base, "pi_base", size=K)
    sampled = np.flatnonzero(mu > 0)
    if np.any(pi_ref[sampled] <= 0):
        raise ValueError("pi_ref must be positive on every sampled response (mu_i > 0)")
    pi = pi_base.copy()  # off-block responses sit at pi_base
    base_block = pi_base[sampled]
    block_mass = base_block.sum()
    if block_mass == 0:
        return pi
    Pb, mub, log_ref = P[np.ix_(sampled, sampled)], mu[sampled], safe_log(pi_ref[sampled])
    weight = eta * beta

    pair_weights = 2.0 * mub[:, None] * mub[None, :] * Pb

    def evaluate(theta):
        sig, d = _pair_terms(theta - log_ref, beta)
        q = softmax(theta)
        value = -np.sum(pair_weights * log_expit(d)) + weight * (block_mass * logsumexp(theta) - base_block @ theta)
        grad = -2.0 * beta * mub * ((Pb - sig) @ mub) + weight * (block_mass * q - base_block)
        s = sig * (1.0 - sig)
        A = mub[:, None] * mub[None, :] * s
        hess = 2.0 * beta**2 * (np.diag(A.sum(axis=1)) - A) + weight * block_mass * (np.diag(q) - np.outer(q, q))
        return value, grad, grad, hess

    theta = _newton(evaluate, log_ref.copy(), tol * max(1.0, beta), "rpo_optimum")
    pi[sampled] = block_mass * softmax(theta)
    return pi
