"""Per-token regularisers of on-policy RLHF: KL (k1, k2, k3), PM and conditional PM.

Pure functions of per-token log-probs [N, T] of the sampled response tokens a_t in states
s_t = (x, y_<t): ``logp`` = log pi(a_t|s_t) under the policy, ``ref_logp`` = log pi_ref(a_t|s_t).
Each returns the per-token *penalty* c_t (coefficient included); the shaped per-token reward is

    reward_t = -c_t   (+ the sequence score at the last response token)

as in Xiao et al. 2405.16455 (PM-RLHF), authors' code ``ppo_trainer.py:compute_rewards``.
Positions outside ``mask`` (padding, after EOS) are 0. ``sequence_penalty`` sums a token
penalty over the response: with k1 that is beta * log(pi(y|x) / pi_ref(y|x)), the sequence KL
sample of standard RLHF, max_pi E[r - beta log(pi/pi_ref)], optimum pi_ref exp(r/beta) / Z.

Where the penalty enters, and the gradient caveat (samples a_t ~ pi, per state):

* **In the reward** (detached, k1; TRL's RLOO/PPO default): E_pi[k1] = KL(pi || pi_ref) and the
  score-function gradient of E[r - beta k1] is the exact gradient of the regularised objective
  (the extra E[grad log pi] term vanishes). k2 and k3 in the reward are biased (their mean is
  not the KL; k3 is unbiased in value, E_pi[k3] = KL, but its score-function gradient is not the
  KL's).
* **In the loss** (differentiated, GRPO's k3): grad E_{a~pi}[k3] with the samples held fixed is
  E_pi[(1 - pi_ref/pi) grad log pi] = grad KL(pi_ref || pi), the *forward* KL's gradient, not the
  reverse KL's; k1 in the loss has zero expected gradient; k2 in the loss gives
  E_pi[(log pi - log pi_ref) grad log pi] = grad KL(pi || pi_ref) per state (the unbiased
  per-token gradient, ignoring the effect on later states).

The PM and conditional-PM penalties are meant for the reward (detached): -beta log pi in the
reward makes the objective E[r] + beta H(pi), optimum softmax(r/beta) (the PM policy).

**The direct term** (coefficients that depend on the action). Write a k1-type penalty as
c_t = b(s_t, a_t) (log pi(a_t|s_t) - k_t log pi_ref(a_t|s_t)) with coefficient b. The objective
J = E_{y~pi}[s(y) - sum_t c_t] has the gradient

    grad J = E[(s - sum_t c_t) grad log pi(y|x)]  -  E[sum_t b(s_t, a_t) grad log pi(a_t|s_t)],

a score-function term (what detaching the penalty into the reward gives) plus a direct term from
differentiating c_t itself. Per state, E_{a~pi}[b(s,a) grad log pi(a|s)] = sum_a b(s,a) grad pi(a|s),
which vanishes when b does not depend on a (sum_a grad pi(a|s) = 0): KL (k1) and PM need nothing
more. Conditional PM with beta_pm != beta_kl has b = beta_kl + (beta_pm - beta_kl) 1[pi_ref(a|s) > alpha];
its beta_kl part has zero mean (a state-only baseline, left out to save variance), and the rest is
the per-token weight w_t of :func:`direct_weight`. The loop adds it to the loss as a per-token
advantage correction, A_t -> A_t - w_t at token t alone, so the update is the exact gradient of J
and the LM reaches the token-tree optimum of :mod:`pluralign.lab.token_tree` for any coefficients
(w = 0 when beta_pm = beta_kl: the released code's estimator is then already exact). k2 and k3 in
the reward also have action-dependent derivatives (beta d and beta (1 - pi_ref/pi)); no direct term
is added for them: they stay the biased reward shapings described above.
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def _masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return values if mask is None else values * mask.to(values.dtype)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token samples of KL(pi || pi_ref) at a_t ~ pi (Schulman's estimators), d = log pi - log pi_ref:

        k1 = d,   k2 = d^2 / 2,   k3 = exp(-d) - 1 + d   (>= 0; unbiased, low variance).
    """
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {list(KL_ESTIMATORS)}")


def kl_penalty(logp, ref_logp, beta: float, estimator: str = "k1", mask=None) -> torch.Tensor:
    """c_t = beta * k(a_t) with k one of :func:`kl_estimate`: the standard RLHF penalty
    (Xiao et al. eq. of standard RLHF; beta is the code's ``kl_ctl``, TRL's ``beta``)."""
    return _masked(beta * kl_estimate(logp, ref_logp, estimator), mask)


def pm_penalty(logp, beta_pm: float, mask=None) -> torch.Tensor:
    """c_t = beta_pm * log pi(a_t|s_t): the preference-matching regulariser R(pi) = -log pi of
    Xiao et al. (PM-RLHF), per token; reward_t = -beta_pm log pi(a_t|s_t). Summed over a
    response it is beta_pm * log pi(y|x), so PM-RLHF maximises E[r(x,y) - beta_pm log pi(y|x)]
    with optimum pi = softmax(r / beta_pm) (beta_pm = 1: the reward model's PM policy)."""
    return _masked(beta_pm * logp, mask)


def conditional_pm_penalty(logp, ref_logp, alpha: float, beta_pm: float, beta_kl: float, mask=None) -> torch.Tensor:
    """Conditional PM-RLHF (Xiao et al.), token by token:

        c_t = beta_pm * log pi(a_t|s_t)                          if alpha > 0 and pi_ref(a_t|s_t) > alpha
        c_t = beta_kl * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  otherwise (the KL branch, k1).

    Tokens the reference finds plausible are preference-matched; the rest stay tied to the
    reference. alpha = 0 is plain KL-RLHF on every token (as in the released code, whose test
    is guarded by ``alpha_ctl > 0``); beta_pm = beta_kl = beta reproduces the released code,
    which uses one coefficient ``kl_ctl`` for both branches.
    """
    kl = beta_kl * (logp - ref_logp)
    branch = pm_branch(ref_logp, alpha)
    return _masked(kl if branch is None else torch.where(branch, beta_pm * logp, kl), mask)


def pm_branch(ref_logp: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Where conditional PM takes its PM branch: pi_ref(a_t|s_t) > alpha (the released code's
    ``ref_log_probs > log(alpha_ctl)``); None for alpha = 0 (no token: plain KL)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"conditional PM: alpha is a probability threshold in [0, 1], got {alpha}")
    return None if alpha == 0.0 else ref_logp > math.log(alpha)


def conditional_pm_direct_weight(ref_logp, alpha: float, beta_pm: float, beta_kl: float, mask=None):
    """Direct-term weight of conditional PM (module doc, "The direct term"):

        w_t = (beta_pm - beta_kl) * 1[pi_ref(a_t|s_t) > alpha],

    so that -E[sum_t w_t grad log pi(a_t|s_t)] is the part of grad E[s - sum_t c_t] that the
    detached penalty misses. None when it is 0 everywhere (beta_pm = beta_kl, or alpha = 0).
    """
    branch = pm_branch(ref_logp, alpha)
    if branch is None or beta_pm == beta_kl:
        return None
    return _masked((beta_pm - beta_kl) * branch.to(ref_logp.dtype), mask)


def sequence_penalty(token_penalty: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence-level form: sum_t c_t over the response tokens ([N, T] -> [N]). With the k1 KL
    penalty this is beta log(pi(y|x)/pi_ref(y|x)); with PM, beta_pm log pi(y|x)."""
    return _masked(token_penalty, mask).sum(-1)


# Name -> function(logp, ref_logp, mask, **args) -> per-token penalty [N, T]. One line per penalty.
PENALTIES = {
    "kl": lambda logp, ref_logp, mask, beta, estimator="k1": kl_penalty(logp, ref_logp, beta, estimator, mask),
    "pm": lambda logp, ref_logp, mask, beta: pm_penalty(logp, beta, mask),
    "conditional_pm": lambda logp, ref_logp, mask, alpha, beta_pm, beta_kl: conditional_pm_penalty(
        logp, ref_logp, alpha, beta_pm, beta_kl, mask),
    "none": lambda logp, ref_logp, mask: torch.zeros_like(logp),
}


# Name -> function(ref_logp, mask, **args) -> w_t [N, T] or None, for the penalties whose coefficient
# depends on the action; every other penalty's direct term is 0.
DIRECT_WEIGHTS = {
    "conditional_pm": lambda ref_logp, mask, alpha, beta_pm, beta_kl: conditional_pm_direct_weight(
        ref_logp, alpha, beta_pm, beta_kl, mask),
}


def direct_weight(name: str, ref_logp, mask, args: dict | None = None) -> torch.Tensor | None:
    """Per-token direct-term weight w_t of penalty ``name`` (module doc), or None where it is 0."""
    fn = DIRECT_WEIGHTS.get(name)
    return None if fn is None else fn(ref_logp, mask, **(args or {}))


def compute_penalty(name: str, logp, ref_logp, mask, args: dict | None = None) -> torch.Tensor:
    """Per-token penalty c_t of the penalty registered as ``name`` with keyword ``args``."""
    if name not in PENALTIES:
        raise ValueError(f"unknown penalty {name!r}; expected one of {sorted(PENALTIES)}")
    try:
        return PENALTIES[name](logp, ref_logp, mask, **(args or {}))
    except TypeError as err:
        raise ValueError(f"penalty {name!r}: bad arguments {sorted(args or {})}: {err}") from None
