"""Samplers of the online loop behind one interface (paper 4, PAPERS.md §5.1-5.3).

``sampler.draw(x, n, context, rng) -> (candidate indices [n], source codes [n])`` where
``context`` holds the round's candidate distributions: ``pi_t`` (current policy), ``pi_0``
(initial policy or uniform pool) and ``p_hat`` (the preferences estimated from all labels so far).
Source codes: :data:`FROM_POLICY`, :data:`FROM_INITIAL`, :data:`FROM_POOL`, :data:`FROM_RULE`.

* :class:`MixtureSampler`: each response comes from ``pi_t`` with probability lambda, else from
  ``pi_0``, so the draws follow ``mu_t = lambda pi_t + (1 - lambda) pi_0`` and the source of every
  draw is known (lambda = 1 fully on-policy; lambda = 0 the fixed initial/offline sampler);
* :class:`UniformSampler`: uniform over the prompt's candidate pool;
* :class:`InstanceSampler`: ``mu_x = rule(p_hat_x, pi_0_x)``, a per-prompt rule given the estimated
  preferences, mixed with ``floor`` of the uniform pool (the default rule is the lab's
  :func:`~pluralign.lab.sampling.instance_dependent_sampler`, which puts the Condorcet winner or
  Smith set of P on top of the IPO optimum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

FROM_POLICY, FROM_INITIAL, FROM_POOL, FROM_RULE = 0, 1, 2, 3
SOURCE_NAMES = {FROM_POLICY: "policy", FROM_INITIAL: "initial", FROM_POOL: "pool", FROM_RULE: "rule"}


@dataclass
class SamplingContext:
    pi_t: list[np.ndarray]  # per prompt: the current policy's candidate distribution
    pi_0: list[np.ndarray]  # per prompt: the initial / offline sampler
    p_hat: list[np.ndarray]  # per prompt: estimated preference matrix (1/2 where nothing was labelled)


def _draw(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return rng.choice(p.size, size=n, p=p / p.sum())


class MixtureSampler:
    def __init__(self, lam: float):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        self.lam = lam

    def sources(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Where each of n draws comes from: :data:`FROM_POLICY` with probability lambda, else
        :data:`FROM_INITIAL` (the free-text source generates each draw from the model this names)."""
        return np.where(rng.random(n) < self.lam, FROM_POLICY, FROM_INITIAL)

    def draw(self, x: int, n: int, ctx: SamplingContext, rng: np.random.Generator):
        from_policy = self.sources(n, rng) == FROM_POLICY
        idx = np.empty(n, dtype=np.int64)
        k = int(from_policy.sum())
        idx[from_policy] = _draw(ctx.pi_t[x], k, rng)
        idx[~from_policy] = _draw(ctx.pi_0[x], n - k, rng)
        return idx, np.where(from_policy, FROM_POLICY, FROM_INITIAL)

    def distribution(self, x: int, ctx: SamplingContext) -> np.ndarray:
        return self.lam * ctx.pi_t[x] + (1 - self.lam) * ctx.pi_0[x]


class UniformSampler:
    def draw(self, x: int, n: int, ctx: SamplingContext, rng: np.random.Generator):
        return _draw(self.distribution(x, ctx), n, rng), np.full(n, FROM_POOL)

    def distribution(self, x: int, ctx: SamplingContext) -> np.ndarray:
        K = ctx.pi_t[x].size
        return np.full(K, 1.0 / K)


def default_instance_rule(beta: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The lab's max-margin instance-dependent sampler at preference strength ``beta``."""
    from pluralign.lab.sampling import instance_dependent_sampler

    return lambda P, pi_ref: instance_dependent_sampler(P, pi_ref, beta).mu


class InstanceSampler:
    def __init__(self, rule: Callable[[np.ndarray, np.ndarray], np.ndarray], floor: float):
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"instance sampler floor must be in [0, 1], got {floor}")
        self.rule, self.floor = rule, floor

    def distribution(self, x: int, ctx: SamplingContext) -> np.ndarray:
        K = ctx.pi_t[x].size
        mu = np.asarray(self.rule(ctx.p_hat[x], ctx.pi_0[x]), dtype=float)
        if mu.shape != (K,) or not np.all(np.isfinite(mu)) or np.any(mu < 0) or mu.sum() <= 0:
            raise ValueError(f"instance sampler rule: prompt {x}: expected {K} non-negative weights, got {mu!r}")
        return (1 - self.floor) * mu / mu.sum() + self.floor / K

    def draw(self, x: int, n: int, ctx: SamplingContext, rng: np.random.Generator):
        return _draw(self.distribution(x, ctx), n, rng), np.full(n, FROM_RULE)


def build_sampler(ocfg, beta: float, rule=None):
    """The configured sampler; ``rule`` replaces the instance sampler's default rule."""
    if ocfg.sampler == "mixture":
        return MixtureSampler(ocfg.lam)
    if ocfg.sampler == "uniform":
        return UniformSampler()
    return InstanceSampler(rule or default_instance_rule(beta), ocfg.instance_floor)
