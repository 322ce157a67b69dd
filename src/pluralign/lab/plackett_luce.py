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


def ranked_log_likelihood(vals: np.ndarray) -> np.ndarray:
    """PL log-likelihood of utilities already in rank order: ``vals`` [..., n_obs, m] -> [..., n_obs]."""
    m = vals.shape[-1]
    ll = np.zeros(vals.shape[:-1])
    for p in range(m - 1):
        ll += vals[..., p] - logsumexp(vals[..., p:], axis=-1)
    return ll


def pl_log_likelihood(utilities, orders) -> np.ndarray:
    """Plackett-Luce log-likelihood of each observation under each utility vector.

    ``utilities``: [n_items] or [T, n_items]; ``orders``: [n_obs, m] best first.
    Returns [n_obs] or [n_obs, T].
    """
    u = np.asarray(utilities, dtype=float)
    single = u.ndim == 1
    u = np.atleast_2d(u)
    orders = _check_orders(orders, u.shape[1])
    ll = ranked_log_likelihood(u[:, orders])  # [T, n_obs]
    return ll[0] if single else ll.T


def ranked_features(features, orders) -> np.ndarray:
    """Per-observation features in rank order, ``phi[n, p] = features[orders[n, p]]`` ([n_obs, m, d])."""
    features = np.asarray(features, dtype=float)
    return features[_check_orders(orders, features.shape[0])]


def _pl_derivatives(phi: np.ndarray, theta: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and negative Hessian in theta of ``sum_n weights_n log P(order_n)``, ``u = phi theta``.

    Position p with tail softmax q over the items still unranked contributes
    ``phi_p - sum_l q_l phi_l`` to the gradient and the weighted feature covariance under q,
    ``sum_l q_l phi_l phi_l^T - a a^T`` with ``a = sum_l q_l phi_l``, to the negative Hessian.
    """
    u = phi @ theta  # [n, m]
    d = theta.size
    grad = np.zeros(d)
    neg_hess = np.zeros((d, d))
    for p in range(phi.shape[1] - 1):
        tail, u_tail = phi[:, p:], u[:, p:]
        q = np.exp(u_tail - u_tail.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        mean = np.einsum("nl,nld->nd", q, tail)
        grad += weights @ (phi[:, p] - mean)
        weighted_tail = (weights[:, None] * q)[:, :, None] * tail
        neg_hess += weighted_tail.reshape(-1, d).T @ tail.reshape(-1, d) - (weights[:, None] * mean).T @ mean
    return grad, neg_hess


def fit_ranked_pl(phi, weights, theta0, ridge: float = 0.0, gtol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Weighted PL maximum likelihood for utilities ``u[n, p] = phi[n, p] @ theta``, solved by Newton.

    ``phi`` [n_obs, m, d]: the features of each observation's items, best first (any linear model:
    tabular one-hot items, item features, context-arm features). Minimises
    ``f(theta) = -(1/W) sum_n w_n log P(order_n) + (ridge/2) ||theta||^2`` (convex; ``W = sum_n w_n``)
    with damped Newton steps (analytic Hessian, Armijo backtracking; least squares handles the flat
    directions that exist without a ridge) until ``max |grad f| <= gtol`` or the Newton decrement
    reaches machine precision. Returns theta (possibly large if the data push the maximum-likelihood
    estimate to infinity).
    """
    phi = np.asarray(phi, dtype=float)
    weights = np.asarray(weights, dtype=float)
    total = max(float(weights.sum()), 1e-300)
    theta = np.asarray(theta0, dtype=float).copy()

    def value(th):
        return -(weights @ ranked_log_likelihood(phi @ th)) / total + 0.5 * ridge * th @ th

    f = value(theta)
    for _ in range(max_iter):
        g, h = _pl_derivatives(phi, theta, weights)
        grad = -g / total + ridge * theta
        if np.max(np.abs(grad)) <= gtol:
            break
        hess = h / total + ridge * np.eye(theta.size)
        step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
        slope = float(grad @ step)
        if -slope <= 1e-15 * (1.0 + abs(f)):
            break  # Newton decrement at machine precision: f cannot improve further
        if slope >= 0:  # numerically flat: fall back to steepest descent
            step, slope = -grad, -float(grad @ grad)
        # Far from the optimum the logistic curvature is tiny and Newton overshoots: cap the
        # change of any utility at MAX_UTILITY_STEP nats before backtracking.
        t = min(1.0, MAX_UTILITY_STEP / max(np.max(np.abs(phi @ step)), 1e-300))
        while t > 1e-12:
            f_new = value(theta + t * step)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease left at machine precision
        theta, f = theta + t * step, f_new
    return theta


def fit_weighted_pl(features: np.ndarray, orders: np.ndarray, weights: np.ndarray, theta0: np.ndarray,
                    ridge: float = 0.0, gtol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """:func:`fit_ranked_pl` for item features ``features`` [n_items, d] and rankings ``orders``."""
    return fit_ranked_pl(ranked_features(features, orders), weights, theta0, ridge, gtol, max_iter)


@dataclass
class PLMixtureFit:
    """EM result: per-type coefficients ``theta`` [T, d], mixing weights ``eta`` [T], annotator
    posteriors ``gamma`` [n_annotators, T], final log-likelihood and its history.

    ``initial_theta``: the coefficients of the first M-step, fitted on the initial assignment
    (with a k-means initialisation these are the Cluster-DPO baseline); ``initial_labels``: the
    initial hard assignment when it was one (k-means), else None.
    """

    theta: np.ndarray
    eta: np.ndarray
    gamma: np.ndarray
    log_likelihood: float
    history: list = field(default_factory=list)
    n_iter: int = 0
    initial_theta: np.ndarray | None = None
    initial_labels: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """Maximum-a-posteriori type of each annotator."""
        return self.gamma.argmax(axis=1)

    def decisive_labels(self, min_confidence: float = 0.8) -> np.ndarray:
        """MAP type where the posterior is at least ``min_confidence``, else -1 (undecided)."""
        return np.where(self.gamma.max(axis=1) >= min_confidence, self.labels, -1)


def _posterior(ll: np.ndarray, eta: np.ndarray, annotator: np.ndarray, n_annotators: int):
    """Posterior over types per annotator, in log space (PAPERS.md §4.4, §6.3).

    ``a[i, k] = log eta_k + sum_{o in D_i} log P(o | theta_k)``; ``gamma = softmax_k(a)``.
    Returns ``(gamma, total log-likelihood sum_i logsumexp_k a[i, k])``.
    """
    scores = np.stack([np.bincount(annotator, weights=ll[:, k], minlength=n_annotators)
                       for k in range(ll.shape[1])], axis=1)
    a = np.log(eta)[None, :] + scores
    norm = logsumexp(a, axis=1, keepdims=True)
    return np.exp(a - norm), float(norm.sum())


def annotator_estimates(phi, inverse, annotator, n_annotators: int, ridge: float = 0.1) -> np.ndarray:
    """Each annotator's own ridge-penalised PL fit ``theta_i`` [n_annotators, d]: their features for k-means.

    ``phi`` [U, m, d] distinct observations, ``inverse`` [n_obs] maps each observation to its row
    of ``phi``, ``annotator`` [n_obs]. The ridge keeps annotators with few or separable votes finite.
    """
    est = np.zeros((n_annotators, phi.shape[2]))
    for i in range(n_annotators):
        rows, counts = np.unique(inverse[annotator == i], return_counts=True)
        if rows.size:
            est[i] = fit_ranked_pl(phi[rows], counts.astype(float), np.zeros(phi.shape[2]), ridge)
    return est


def kmeans_labels(points, n_clusters: int, rng: np.random.Generator, n_init: int = 20) -> np.ndarray:
    """Hard k-means labels (scipy's k-means, best of ``n_init`` seeded runs by distortion)."""
    from scipy.cluster.vq import kmeans, vq

    points = np.asarray(points, dtype=float)
    if n_clusters >= points.shape[0]:
        return np.arange(points.shape[0]) % n_clusters
    codebook, _ = kmeans(points, n_clusters, iter=n_init, rng=rng)
    labels, _ = vq(points, codebook)
    return labels


def fit_pl_mixture(orders, annotator, features, n_types: int, rng: np.random.Generator, *, max_iter: int = 200,
                   tol: float = 1e-7, ridge: float = 0.0, eta_floor: float = ETA_FLOOR, n_restarts: int = 3,
                   init_gamma=None, init: str = "dirichlet") -> PLMixtureFit:
    """EM for a mixture of Plackett-Luce (Bradley-Terry for pairs) models over annotators.

    ``orders`` [n_obs, m] index items with ``features`` [n_items, d]; identity features give the
    tabular gamma-weighted DPO/PL-DPO M-step. The likelihood depends on the data only through
    counts of distinct rankings, so the fit runs on those (:func:`fit_ranked_pl_mixture`).
    """
    features = np.asarray(features, dtype=float)
    orders = _check_orders(orders, features.shape[0])
    unique, inverse = np.unique(orders, axis=0, return_inverse=True)
    return fit_ranked_pl_mixture(features[unique], inverse.ravel(), annotator, n_types, rng, max_iter=max_iter,
                                 tol=tol, ridge=ridge, eta_floor=eta_floor, n_restarts=n_restarts,
                                 init_gamma=init_gamma, init=init)


def fit_ranked_pl_mixture(phi, inverse, annotator, n_types: int, rng: np.random.Generator, *, max_iter: int = 200,
                          tol: float = 1e-7, ridge: float = 0.0, eta_floor: float = ETA_FLOOR, n_restarts: int = 3,
                          init_gamma=None, init: str = "dirichlet", annotator_ridge: float = 0.1) -> PLMixtureFit:
    """EM over annotators for a mixture of linear PL models on observations ``phi[inverse]``.

    ``phi`` [U, m, d]: distinct observations' item features, best first; ``inverse`` [n_obs]:
    each observation's row of ``phi``; ``annotator`` [n_obs]: its annotator id.
    M-step: for each type k, gamma-weighted PL maximum likelihood (:func:`fit_ranked_pl`).
    E-step: log-space posterior. ``eta = mean_i gamma[i]`` floored at ``eta_floor`` (1e-6) and
    renormalised so no type dies. Initialisation (``init``): ``"dirichlet"``, random soft
    assignments gamma ~ Dirichlet(1) per annotator, best of ``n_restarts`` runs by
    log-likelihood; ``"kmeans"``, one-hot gamma from k-means clusters of the annotators' own
    fits (:func:`annotator_estimates`), the authors' EM-DPO initialisation (PAPERS.md §4.4), so
    the first M-step is Cluster-DPO; or an explicit ``init_gamma``. Stops when the
    log-likelihood gains less than ``tol * (1 + |ll|)`` or after ``max_iter`` EM iterations.
    """
    phi = np.asarray(phi, dtype=float)
    inverse = np.asarray(inverse, dtype=int).ravel()
    annotator = np.asarray(annotator, dtype=int)
    if phi.ndim != 3 or phi.shape[1] < 2:
        raise ValueError(f"phi must be [n_distinct, m >= 2, d] ranked item features, got shape {phi.shape}")
    if inverse.shape != annotator.shape or inverse.min() < 0 or inverse.max() >= phi.shape[0]:
        raise ValueError("inverse must map every observation to a row of phi, one entry per annotator id")
    if annotator.ndim != 1 or annotator.min() < 0:
        raise ValueError("annotator must hold one non-negative annotator id per observation")
    if n_types < 1:
        raise ValueError(f"n_types must be >= 1, got {n_types}")
    if init not in ("dirichlet", "kmeans"):
        raise ValueError(f"init must be 'dirichlet' or 'kmeans', got {init!r}")
    n_ann = int(annotator.max()) + 1
    initial_labels = None
    if init_gamma is None and init == "kmeans":
        initial_labels = kmeans_labels(annotator_estimates(phi, inverse, annotator, n_ann, annotator_ridge),
                                       n_types, rng)
        init_gamma = np.eye(n_types)[initial_labels]
    best = None
    for _ in range(n_restarts if init_gamma is None else 1):
        gamma = rng.dirichlet(np.ones(n_types), size=n_ann) if init_gamma is None else np.asarray(init_gamma, float)
        theta = np.zeros((n_types, phi.shape[2]))
        history: list[float] = []
        initial_theta = None
        for it in range(1, max_iter + 1):
            eta = np.maximum(gamma.mean(axis=0), eta_floor)
            eta /= eta.sum()
            for k in range(n_types):
                counts = np.bincount(inverse, weights=gamma[annotator, k], minlength=phi.shape[0])
                theta[k] = fit_ranked_pl(phi, counts, theta[k], ridge)
            if initial_theta is None:
                initial_theta = theta.copy()
            obs_ll = ranked_log_likelihood(np.einsum("umd,kd->kum", phi, theta)).T[inverse]  # [n_obs, T]
            gamma, ll = _posterior(obs_ll, eta, annotator, n_ann)
            history.append(ll)
            if it > 1 and abs(history[-1] - history[-2]) < tol * (1 + abs(ll)):
                break
        fit = PLMixtureFit(theta=theta.copy(), eta=eta, gamma=gamma, log_likelihood=history[-1],
                           history=history, n_iter=len(history), initial_theta=initial_theta,
                           initial_labels=initial_labels)
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    return best
