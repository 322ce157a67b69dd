"""On a bandit (prompt -> one of K tokens), sampled RLOO with a per-token penalty in the reward
converges to the closed-form optima: PM to softmax(r / beta), KL to pi_ref exp(r / beta) / Z, and
conditional PM with separate coefficients (its direct term in the loss) to the lab's exact optimum.

The policy is a table of logits per prompt (an LM whose responses are one token long); each step
draws k completions per prompt, shapes rewards with the penalty functions, takes RLOO advantages
and descends the score-function loss: the estimator and penalty code of the RL loop, full batch.
"""

import numpy as np
import pytest
import torch

from pluralign.lab.optima import mixed_entropy_argmax
from pluralign.lab.token_tree import TokenTree, conditional_pm_penalty, solve_token_tree
from pluralign.objectives.penalties import compute_penalty, direct_weight, sequence_penalty
from pluralign.rl.estimators import policy_gradient_loss, rloo_advantages, with_direct_term

R = torch.tensor([[1.0, 0.2, -0.5, 0.0], [0.3, 0.9, 0.0, -1.0]])  # rewards, 2 prompts x K = 4
REF = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.25, 0.05, 0.6, 0.1]])  # pi_ref, far from both optima


def _run_bandit(penalty: str, args: dict, steps: int = 200, k: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = REF.log().clone().requires_grad_(True)  # start at the reference
    opt = torch.optim.Adam([logits], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s / 50))
    B, K = R.shape
    for _ in range(steps):
        logp_all = torch.log_softmax(logits, -1)
        with torch.no_grad():
            actions = torch.multinomial(logp_all.exp(), k, replacement=True, generator=gen)  # [B, k]
        logp = logp_all.gather(1, actions).reshape(B * k, 1)  # one response token per completion
        ref = REF.log().gather(1, actions).reshape(B * k, 1)
        mask = torch.ones_like(logp, dtype=torch.bool)
        c = compute_penalty(penalty, logp.detach(), ref, mask, args)  # in the reward: detached
        total = R.gather(1, actions).reshape(B * k) - sequence_penalty(c, mask)
        adv = rloo_advantages(total.view(B, k)).reshape(B * k)
        adv = with_direct_term(adv, direct_weight(penalty, ref, mask, args), mask)  # the penalty's direct term
        loss = policy_gradient_loss(logp, adv, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.softmax(logits.detach(), -1)


def _tv(p, q) -> float:
    return float(0.5 * (p - q).abs().sum(-1).max())


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_pm_penalty_converges_to_softmax_r_over_beta(beta):
    pi = _run_bandit("pm", {"beta": beta})
    assert _tv(pi, torch.softmax(R / beta, -1)) < 0.02


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_kl_penalty_converges_to_reference_tilted_by_reward(beta):
    pi = _run_bandit("kl", {"beta": beta, "estimator": "k1"})
    target = REF * torch.exp(R / beta)
    assert _tv(pi, target / target.sum(-1, keepdim=True)) < 0.02
    # and it is not the PM optimum: the reference's bias stays (Xiao et al.'s algorithmic bias)
    assert _tv(pi, torch.softmax(R / beta, -1)) > 0.1


def test_conditional_pm_with_all_tokens_plausible_is_pm_and_alpha_zero_is_kl():
    pm = _run_bandit("conditional_pm", {"alpha": 0.01, "beta_pm": 1.0, "beta_kl": 1.0})
    assert _tv(pm, torch.softmax(R, -1)) < 0.02
    kl = _run_bandit("conditional_pm", {"alpha": 0.0, "beta_pm": 1.0, "beta_kl": 1.0})
    target = REF * torch.exp(R)
    assert _tv(kl, target / target.sum(-1, keepdim=True)) < 0.02


def conditional_pm_bandit_optimum(alpha: float, beta_pm: float, beta_kl: float, direct: bool = True) -> torch.Tensor:
    """max_pi sum_a pi_a (r_a - c_a) per prompt: b_a = r_a (+ beta_kl log pi_ref on the KL branch),
    coefficient beta_pm or beta_kl (:func:`pluralign.lab.optima.mixed_entropy_argmax`). With
    ``direct=False``, where the score-function gradient of the detached penalty alone vanishes
    (b_a - c_a log pi_a equal across a: log pi_a = (b_a - lambda)/c_a, the argmax for b + c)."""
    pm = REF > alpha
    b = torch.where(pm, R, R + beta_kl * REF.log()).double().numpy()
    c = torch.where(pm, beta_pm, beta_kl).double().numpy()
    b = b if direct else b + c
    return torch.tensor(np.stack([mixed_entropy_argmax(b[x], c[x])[0] for x in range(R.shape[0])]), dtype=torch.float32)


def test_conditional_pm_with_separate_coefficients_reaches_the_exact_optimum():
    args = {"alpha": 0.2, "beta_pm": 1.0, "beta_kl": 0.3}
    exact = conditional_pm_bandit_optimum(**args)
    assert _tv(conditional_pm_bandit_optimum(**args, direct=False), exact) > 0.05  # the bias the direct term removes
    assert _tv(_run_bandit("conditional_pm", args), exact) < 0.02


REF_A = [0.6, 0.3, 0.1]  # pi_ref(a), pi_ref(b|a) and r(a, b) of the two-token tree
REF_B = [[0.7, 0.2, 0.1], [0.5, 0.45, 0.05], [0.2, 0.4, 0.4]]
TWO_TOKEN_R = torch.tensor([[0.0, 1.0, 0.5], [1.5, -0.5, 2.0], [0.3, 0.0, 1.0]])
TWO_TOKEN_REF_A, TWO_TOKEN_REF_B = torch.tensor(REF_A), torch.tensor(REF_B)


def _two_token_tree_run(alpha: float, beta_pm: float, beta_kl: float) -> torch.Tensor:
    """Responses a b (3 x 3 tokens), tabular pi(a) and pi(b|a), RLOO with the conditional-PM
    penalty and its direct term; the leaf distribution pi(a, b), flat."""
    gen = torch.Generator().manual_seed(0)
    ref_a, ref_b, r, k = TWO_TOKEN_REF_A, TWO_TOKEN_REF_B, TWO_TOKEN_R, 256
    args = {"alpha": alpha, "beta_pm": beta_pm, "beta_kl": beta_kl}
    la = ref_a.log().clone().requires_grad_(True)
    lb = ref_b.log().clone().requires_grad_(True)
    opt = torch.optim.Adam([la, lb], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s / 50))
    for _ in range(150):
        pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
        with torch.no_grad():
            a = torch.multinomial(pa.exp(), k, replacement=True, generator=gen)
            b = torch.multinomial(pb.exp()[a], 1, generator=gen).squeeze(1)
        logp = torch.stack([pa[a], pb[a, b]], 1)  # [k, 2] per-token log-probs
        ref = torch.stack([ref_a.log()[a], ref_b.log()[a, b]], 1)
        mask = torch.ones_like(logp, dtype=torch.bool)
        c = compute_penalty("conditional_pm", logp.detach(), ref, mask, args)
        adv = rloo_advantages((r[a, b] - sequence_penalty(c, mask))[None]).reshape(-1)
        adv = with_direct_term(adv, direct_weight("conditional_pm", ref, mask, args), mask)
        loss = policy_gradient_loss(logp, adv, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return (torch.softmax(la.detach(), -1)[:, None] * torch.softmax(lb.detach(), -1)).reshape(-1)


def test_conditional_pm_on_a_two_token_tree_reaches_its_closed_form():
    """Per-token conditional PM with beta_pm = beta_kl = beta has the optimum
    pi(y) ∝ exp(r(y)/beta) prod_{t on the KL branch} pi_ref(a_t|s_t) (PM branch where pi_ref > alpha)."""
    alpha, beta = 0.25, 1.0
    pi = _two_token_tree_run(alpha, beta, beta)
    kl_a = torch.where(TWO_TOKEN_REF_A > alpha, 1.0, TWO_TOKEN_REF_A)  # pi_ref enters only on KL-branch tokens
    kl_b = torch.where(TWO_TOKEN_REF_B > alpha, 1.0, TWO_TOKEN_REF_B)
    target = (torch.exp(TWO_TOKEN_R / beta) * kl_a[:, None] * kl_b).reshape(-1)
    assert _tv(pi[None], (target / target.sum())[None]) < 0.02


def test_conditional_pm_with_separate_coefficients_on_a_two_token_tree_reaches_the_tree_solver():
    """beta_pm != beta_kl has no product form; the lab's backward induction gives the optimum, and
    the RLOO run with the direct term in the loss reaches it."""
    alpha, beta_pm, beta_kl = 0.25, 1.0, 0.3
    tree = TokenTree.from_dict(
        {(): dict(enumerate(REF_A)), **{(a,): dict(enumerate(REF_B[a])) for a in range(3)}},
        {(a, b): float(TWO_TOKEN_R[a, b]) for a in range(3) for b in range(3)})
    exact = torch.tensor(solve_token_tree(tree, conditional_pm_penalty(beta_pm, alpha, beta_kl)).leaf_prob,
                         dtype=torch.float32)  # leaves in breadth-first order: (a, b) row-major
    assert _tv(_two_token_tree_run(alpha, beta_pm, beta_kl)[None], exact[None]) < 0.02
