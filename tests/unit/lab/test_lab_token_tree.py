"""The token-tree solver against closed forms and a brute-force maximisation of the objective."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

from pluralign.lab import kl_rlhf_optimum
from pluralign.lab.token_tree import (TokenTree, conditional_pm_penalty, leaf_distribution, random_token_tree,
                                      solve_token_tree, token_tree_conditional_pm_optimum, token_tree_kl_optimum,
                                      token_tree_objective, token_tree_pm_optimum)

from tolerance import assert_close_scaled


def reference_leaf_probs(tree):
    return leaf_distribution(tree, tree.reference_node_probs())


@pytest.fixture(scope="module")
def tree():
    # vocabulary {0, 1, 2}, token 2 is EOS, up to 3 tokens: 1 + 2 + 4 + 8 = 15 leaves
    return random_token_tree(np.random.default_rng(3), vocab_size=3, max_length=3, eos=2, reward_scale=1.5)


def test_tree_shape_and_reference_leaf_distribution(tree):
    seqs = tree.leaf_sequences()
    assert len(seqs) == 15 and (2,) in seqs and (0, 1, 0) in seqs and (0, 2) in seqs
    assert all(s[-1] == 2 or len(s) == 3 for s in seqs)
    assert reference_leaf_probs(tree).sum() == pytest.approx(1.0, rel=1e-12)


def test_kl_leaf_distribution_is_the_closed_form(tree):
    beta = 0.7
    sol = token_tree_kl_optimum(tree, beta)
    ref, r = reference_leaf_probs(tree), tree.leaf_rewards()
    expected = ref * np.exp(r / beta) / np.sum(ref * np.exp(r / beta))
    assert_close_scaled(sol.leaf_prob, expected, rel=1e-12)
    assert_close_scaled(sol.leaf_prob, kl_rlhf_optimum(r, ref, beta), rel=1e-12)
    assert sol.objective == pytest.approx(beta * np.log(np.sum(ref * np.exp(r / beta))), rel=1e-12)
    # per-node policy: pi(a|s) ∝ pi_ref(a|s) exp(V(s a) / beta) at the root
    kids = tree.children[0]
    root = np.array(list(sol.policy(()).values()))
    assert_close_scaled(root, softmax(np.log(tree.ref_prob[kids]) + sol.value[kids] / beta), rel=1e-12)


def test_pm_leaf_distribution_is_softmax_of_rewards(tree):
    beta = 0.4
    sol = token_tree_pm_optimum(tree, beta)
    assert_close_scaled(sol.leaf_prob, softmax(tree.leaf_rewards() / beta), rel=1e-12)
    # it does not depend on the reference at all
    uniform = np.where(np.arange(tree.n_nodes) > 0, 1.0 / 3.0, 1.0)
    other = TokenTree(tree.prefixes, tree.parent, uniform, tree.reward, tree.children)
    assert_close_scaled(token_tree_pm_optimum(other, beta).leaf_prob, sol.leaf_prob, rel=1e-12)


def test_pm_gives_mass_to_responses_the_reference_never_produces():
    tree = TokenTree.from_dict({(): {0: 1.0, 1: 0.0}}, {(0,): 0.0, (1,): 0.0})
    assert token_tree_pm_optimum(tree, 1.0).leaf_prob.tolist() == pytest.approx([0.5, 0.5])
    assert token_tree_kl_optimum(tree, 1.0).leaf_prob.tolist() == [1.0, 0.0]
    assert token_tree_conditional_pm_optimum(tree, 1.0, 0.3).leaf_prob.tolist() == [1.0, 0.0]


def test_conditional_pm_with_alpha_zero_is_kl_on_every_token(tree):
    for beta_kl in (0.5, 2.0):
        cond = token_tree_conditional_pm_optimum(tree, beta_pm=0.3, alpha=0.0, beta_kl=beta_kl)
        kl = token_tree_kl_optimum(tree, beta_kl)
        assert_close_scaled(cond.node_prob, kl.node_prob, rel=1e-12)
        assert_close_scaled(cond.value, kl.value, rel=1e-12)


def test_conditional_pm_with_equal_coefficients_has_the_product_form(tree):
    beta, alpha = 0.6, 0.3
    sol = token_tree_conditional_pm_optimum(tree, beta, alpha)
    weight = []
    for seq in tree.leaf_sequences():
        w = 1.0
        for t in range(1, len(seq) + 1):
            p = tree.ref_prob[tree.index(seq[:t])]
            w *= p if p <= alpha else 1.0  # KL branch keeps the reference factor
        weight.append(w)
    expected = np.array(weight) * np.exp(tree.leaf_rewards() / beta)
    assert_close_scaled(sol.leaf_prob, expected / expected.sum(), rel=1e-11)
    # and alpha below every reference probability puts every token on the PM branch
    assert_close_scaled(token_tree_conditional_pm_optimum(tree, beta, 1e-9).leaf_prob,
                        token_tree_pm_optimum(tree, beta).leaf_prob, rel=1e-12)


def test_backward_induction_equals_brute_force_maximisation():
    small = random_token_tree(np.random.default_rng(11), vocab_size=3, max_length=2, eos=2, reward_scale=2.0)
    penalty = conditional_pm_penalty(beta_pm=0.8, alpha=0.35, beta_kl=0.25)
    assert penalty.pm_branch(small.ref_prob[1:]).any() and not penalty.pm_branch(small.ref_prob[1:]).all()
    sol = solve_token_tree(small, penalty)
    internal = small.internal

    def node_probs(logits):
        out = np.ones(small.n_nodes)
        z = logits.reshape(len(internal), 3)
        for row, node in enumerate(internal):
            out[small.children[node]] = softmax(z[row])
        return out

    res = minimize(lambda z: -token_tree_objective(small, node_probs(z), penalty), np.zeros(3 * len(internal)),
                   method="BFGS", options={"gtol": 1e-10})
    assert -res.fun == pytest.approx(sol.objective, rel=1e-9)
    assert token_tree_objective(small, sol.node_prob, penalty) == pytest.approx(sol.objective, rel=1e-12)
    assert_close_scaled(leaf_distribution(small, node_probs(res.x)), sol.leaf_prob, rel=1e-4)


def test_bad_trees_are_errors_naming_the_prefix():
    with pytest.raises(ValueError, match=r"\(0,\).*sum to 1"):
        TokenTree.from_dict({(): {0: 1.0}, (0,): {0: 0.5, 1: 0.4}}, {(0, 0): 1.0, (0, 1): 0.0})
    with pytest.raises(ValueError, match=r"child \(1,\)"):
        TokenTree.from_dict({(): {0: 0.5, 1: 0.5}}, {(0,): 1.0})
    with pytest.raises(ValueError, match=r"\(5,\) is not reachable"):
        TokenTree.from_dict({(): {0: 1.0}}, {(0,): 1.0, (5,): 0.0})
    with pytest.raises(KeyError, match=r"\(9,\)"):
        TokenTree.from_dict({(): {0: 1.0}}, {(0,): 1.0}).index((9,))
