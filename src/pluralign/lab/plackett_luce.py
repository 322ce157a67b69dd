"""Plackett-Luce likelihoods and an EM for mixtures of them (PAPERS.md §1.1, §4.3-4.4).

An observation is a ranking of m items written best first as a row of item indices; m = 2 is a
Bradley-Terry pair. Utilities are linear in item features, ``u = Phi theta``; identity features
give free (tabular) utilities. ``log P(order) = sum_{p < m-1} [u_{o_p} - logsumexp(u_{o_p}, ..., u_{o_{m-1}})]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

ETA_FLOOR = 1e-6
MAX_UTILITY_STEP = 4.0


def _check_orders(orders, n_items: int) -> np.ndarray:
    orders = np.asarray(orders)
    if orders.ndim != 2 or orders.shape[1] < 2 or not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must be an integer array [n_obs, m >= 2] (best first), got {orders.shape}")
    if orders.size and (orders.min() < 0 or orders.max() >= n_items):
        raise ValueError(f"orders must index items in [0, {n_items})")
    return orders


def pl_log_likelihood(utilities, orders) -> np.ndarray:
    """Plackett-Luce log-likelihood of each observation under each utility vector.

    ``utilities``: [n_items] or [T, n_items]; ``orders``: [n_obs, m] best first.
    Returns [n_obs] or [n_obs, T].
    """
    u = np.asarray(utilities, dtype=float)
    single = u.ndim == 1
    u = np.atleast_2d(u)
    orders = _check_orders(orders, u.shape[1])
    vals = u[:, orders]  # [T, n_obs, m]
    m = orders.shape[1]
    ll = np.zeros(vals.shape[:2])
    for p in range(m - 1):
        ll += vals[:, :, p] - logsumexp(vals[:, :, p:], axis=2)
    return ll[0] if single else ll.T


def pl_utility_derivatives(u: np.ndarray, orders: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and negative Hessian over items of ``sum_n weights_n log P(order_n | u)``.

    For each position p with tail softmax q over the items still unranked, the log-likelihood
    contributes ``e_{o_p} - q`` to the gradient and ``diag(q) - q q^T`` to the negative Hessian.
    """
    n_items = u.size
    vals = u[orders]
    m = orders.shape[1]
    coef = np.zeros(orders.shape)
    neg_hess = np.zeros((n_items, n_items))
    for p in range(m - 1):
        tail_items = orders[:, p:]
        tail = vals[:, p:]
        q = np.exp(tail - logsumexp(tail, axis=1, keepdims=True))
        coef[:, p] += 1.0
        coef[:, p:] -= q
        wq = weights[:, None] * q
        np.add.at(neg_hess, (tail_items.ravel(), tail_items.ravel()), wq.ravel())
        outer = wq[:, :, None] * q[:, None, :]
        np.add.at(neg_hess, (np.repeat(tail_items, tail_items.shape[1], axis=1).ravel(),
                             np.tile(tail_items, (1, tail_items.shape[1])).ravel()), -outer.ravel())
    grad = np.bincount(orders.ravel(), weights=(coef * weights[:, None]).ravel(), minlength=n_items)
    return grad, neg_hess


def fit_weighted_pl(features: np.ndarray, orders: np.ndarray, weights: np.ndarray, theta0: np.ndarray,
                    ridge: float = 0.0, gtol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Weighted PL maximum likelihood for ``u = features @ theta``, solved exactly by Newton.

    Minimises ``f(theta) = -(1/W) sum_n w_n log P(order_n | features theta) + (ridge/2) ||theta||^2``
    (convex; ``W = sum_n w_n``) with damped Newton steps (analytic Hessian, Armijo backtracking;
    least squares handles the flat directions that exist without a ridge) until
    ``max |grad f| <= gtol`` or the Newton decrement reaches machine precision. Returns theta
    (possibly large if the data push the maximum-likelihood estimate to infinity).
    """
    total = max(float(weights.sum()), 1e-300)
    theta = np.asarray(theta0, dtype=float).copy()

    def value(th):
        return -(weights @ pl_log_likelihood(features @ th, orders)) / total + 0.5 * ridge * th @ th

    f = value(theta)
    for _ in range(max_iter):
        g_u, h_u = pl_utility_derivatives(features @ theta, orders, weights)
        grad = -(features.T @ g_u) / total + ridge * theta
        if np.max(np.abs(grad)) <= gtol:
            break
        hess = (features.T @ h_u @ features) / total + ridge * np.eye(theta.size)
        step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
        slope = float(grad @ step)
        if -slope <= 1e-15 * (1.0 + abs(f)):
            break  # Newton decrement at machine precision: f cannot improve further
        if slope >= 0:  # numerically flat: fall back to steepest descent
            step, slope = -grad, -float(grad @ grad)
        # Far from the optimum the logistic curvature is tiny and Newton overshoots: cap the
        # change of any utility at MAX_UTILITY_STEP nats before backtracking.
        t = min(1.0, MAX_UTILITY_STEP / max(np.max(np.abs(features @ step)), 1e-300))
        while t > 1e-12:
            f_new = value(theta + t * step)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease left at machine precision
        theta, f = theta + t * step, f_new
    return theta


@dataclass
class PLMixtureFit:
    """EM result: per-type coefficients ``theta`` [T, d], mixing weights ``eta`` [T], annotator
    posteriors ``gamma`` [n_annotators, T], final log-likelihood and its history."""

    theta: np.ndarray
    eta: np.ndarray
    gamma: np.ndarray
    log_likelihood: float
    history: list = field(default_factory=list)
    n_iter: int = 0

    @property
    def labels(self) -> np.ndarray:
        """Maximum-a-posteriori type of each annotator."""
        return self.gamma.argmax(axis=1)

    def decisive_labels(self, min_confidence: float = 0.8) -> np.ndarray:
        """MAP type where the posterior is at least ``min_confidence``, else -1 (undecided)."""
        return np.where(self.gamma.max(axis=1) >= min_confidence, self.labels, -1)


def e_step(theta: np.ndarray, eta: np.ndarray, features: np.ndarray, orders: np.ndarray, annotator: np.ndarray,
           n_annotators: int) -> tuple[np.ndarray, float]:
    """Posterior over types per annotator, in log space (PAPERS.md §4.4, §6.3).

    ``a[i, k] = log eta_k + sum_{o in D_i} log P(o | theta_k)``; ``gamma = softmax_k(a)``.
    Returns ``(gamma, total log-likelihood sum_i logsumexp_k a[i, k])``.
    """
    unique, inverse = np.unique(orders, axis=0, return_inverse=True)
    ll = pl_log_likelihood(theta @ features.T, unique)[inverse.ravel()]  # [n_obs, T]
    return _posterior(ll, eta, annotator, n_annotators)


def _posterior(ll: np.ndarray, eta: np.ndarray, annotator: np.ndarray, n_annotators: int):
    scores = np.stack([np.bincount(annotator, weights=ll[:, k], minlength=n_annotators)
                       for k in range(ll.shape[1])], axis=1)
    a = np.log(eta)[None, :] + scores
    norm = logsumexp(a, axis=1, keepdims=True)
    return np.exp(a - norm), float(norm.sum())


def fit_pl_mixture(orders, annotator, features, n_types: int, rng: np.random.Generator, *, max_iter: int = 200,
                   tol: float = 1e-7, ridge: float = 0.0, eta_floor: float = ETA_FLOOR, n_restarts: int = 3,
                   init_gamma=None) -> PLMixtureFit:
    """EM for a mixture of Plackett-Luce (Bradley-Terry for pairs) models over annotators.

    M-step: for each type k, gamma-weighted PL maximum likelihood (:func:`fit_weighted_pl`); with
    identity ``features`` this is the tabular gamma-weighted DPO/PL-DPO M-step. E-step: log-space
    posterior (:func:`e_step`). ``eta = mean_i gamma[i]`` floored at ``eta_floor`` (1e-6) and
    renormalised so no type dies. Initialisation: random soft assignments gamma ~ Dirichlet(1)
    per annotator (or ``init_gamma``); the best of ``n_restarts`` runs by log-likelihood is kept.
    Stops when the log-likelihood gains less than ``tol * (1 + |ll|)``.
    """
    features = np.asarray(features, dtype=float)
    orders = _check_orders(orders, features.shape[0])
    annotator = np.asarray(annotator, dtype=int)
    if annotator.shape != (orders.shape[0],) or annotator.min() < 0:
        raise ValueError("annotator must hold one non-negative annotator id per observation")
    if n_types < 1:
        raise ValueError(f"n_types must be >= 1, got {n_types}")
    n_ann = int(annotator.max()) + 1
    # The likelihood depends on the data only through counts of distinct rankings: fit on those.
    unique, inverse = np.unique(orders, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    best = None
    for restart in range(n_restarts if init_gamma is None else 1):
        gamma = rng.dirichlet(np.ones(n_types), size=n_ann) if init_gamma is None else np.asarray(init_gamma, float)
        theta = np.zeros((n_types, features.shape[1]))
        history: list[float] = []
        for it in range(1, max_iter + 1):
            eta = np.maximum(gamma.mean(axis=0), eta_floor)
            eta /= eta.sum()
            for k in range(n_types):
                counts = np.bincount(inverse, weights=gamma[annotator, k], minlength=unique.shape[0])
                theta[k] = fit_weighted_pl(features, unique, counts, theta[k], ridge)
            obs_ll = pl_log_likelihood(theta @ features.T, unique)[inverse]
            gamma, ll = _posterior(obs_ll, eta, annotator, n_ann)
            history.append(ll)
            if it > 1 and abs(history[-1] - history[-2]) < tol * (1 + abs(ll)):
                break
        fit = PLMixtureFit(theta=theta.copy(), eta=eta, gamma=gamma, log_likelihood=history[-1],
                           history=history, n_iter=len(history))
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    return best
