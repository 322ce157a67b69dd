"""A tiny causal LM trained with ``train_rl`` on a token tree reaches the tree solver's exact optimum.

The LM is the offline tiny Llama over a 3-token vocabulary (a, b, EOS); for the prompt "ba" every
completion of at most 3 tokens is a leaf of a finite token tree (15 leaves), whose per-token
reference probabilities are the LM's own at the start (its final norm scaled by 2 so that they
spread: 0.08 to 0.78, some below alpha = 0.2) and whose leaf rewards are N(0, 1) draws.
:func:`pluralign.lab.token_tree.solve_token_tree` gives the exact optimum of token-level
conditional-PM (and KL) RLHF; the RL loop (sampling, per-token penalties in the reward, RLOO,
AdamW, cosine schedule) must bring the LM's exact leaf distribution (products of its next-token
probabilities) to it.

Tolerance: TV over the 15 leaves; measured after 150 steps of k = 64 (model seeds 0, 1, 2; the
test uses 0): conditional PM 0.0056, 0.0074, 0.0009; KL 0.0008, 0.0047, 0.0022, from a start 0.21
to 0.36 away. The test allows 0.03, while the LM's conditional-PM result (seed 0) is 0.15 from the
KL optimum and 0.56 from the PM optimum of the same tree. PM (every token on the PM branch,
optimum softmax(r/beta) over the leaves) starts 0.62 to 0.70 away and gets slower: 0.033, 0.031,
0.040 after 150 steps (0.016, 0.029, 0.039 after 300), so it is held to 0.05, a tenth of the
0.50 to 0.59 between the PM and KL optima of these trees. Separate coefficients
(beta_pm != beta_kl) need the penalty's direct term in the loss; see ``SEPARATE_TOLERANCE``.
"""

import numpy as np
import pytest
import torch

from pluralign.lab.optima import mixed_entropy_argmax, safe_log
from pluralign.lab.token_tree import (
    TokenTree,
    conditional_pm_penalty,
    kl_penalty,
    leaf_distribution,
    pm_penalty,
    solve_token_tree,
)

PROMPT = [1, 0]  # "ba": a prompt of distinct tokens, so every prefix is a distinct state for the LM
EOS = 2
ALPHA, BETA = 0.2, 1.0
# Separate coefficients (beta_pm = BETA, beta_kl = 2): the loss must carry the penalty's direct term. The
# tiny LM's states that end in the same token are hard to tell apart, which limits how close it gets on
# this tree (seed 0, 150 steps: 0.034; 300 steps: 0.012), so the tolerance is looser; the loop without
# the direct term lands 0.181 from the exact optimum (0.008 from the biased stationary point).
BETA_KL = 2.0
SEPARATE_TOLERANCE = 0.08
TOLERANCE = {"conditional_pm": 0.03, "kl": 0.03, "pm": 0.05}


def three_token_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "<eos>": EOS}, merges=[]))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


@torch.no_grad()
def next_token_probs(model, prefix) -> np.ndarray:
    logits = model(input_ids=torch.tensor([PROMPT + list(prefix)])).logits[0, -1]
    return torch.softmax(logits.double(), -1).numpy()


def tree_problem(seed: int):
    from pluralign.models import build_tiny_model

    tok = three_token_tokenizer()
    model = build_tiny_model(tok, seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    rng = np.random.default_rng(0)
    tree = TokenTree.enumerate(3, 3, lambda p: next_token_probs(model, p), lambda _: float(rng.standard_normal()), eos=EOS)
    rewards = {tok.decode([t for t in seq if t != EOS]): float(tree.reward[i])
               for i, seq in zip(tree.leaves, tree.leaf_sequences())}
    return tok, model, tree, rewards


def train_on_tree(tok, model, rewards, out, penalty: str, steps: int = 150, k: int = 64, lr: float = 3e-3,
                  beta_pm: float = BETA, beta_kl: float = BETA):
    from pluralign.rl.config import RLConfig, RLRunConfig
    from pluralign.rl.training import train_rl
    from pluralign.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    def tree_reward(prompts, completions, **columns):
        return [rewards[c] for c in completions]

    rl = RLConfig(reward="functions", penalty=penalty, beta=BETA, alpha=ALPHA, beta_pm=beta_pm, beta_kl=beta_kl,
                  num_completions=k, max_new_tokens=3, eval_world=False)
    cfg = RLRunConfig(model=ModelConfig(name="tiny"), data=DataConfig(world=None), rl=rl,
                      optim=OptimConfig(lr=lr, scheduler="cosine", max_grad_norm=1.0),
                      train=TrainConfig(output_dir=str(out), batch_size=1, max_steps=steps, log_every=steps,
                                        save_every=None, progress_bar=False, overwrite=True, seed=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 3-token vocabulary: more threads only contend
    try:
        return train_rl(cfg, model=model, tokenizer=tok, prompts=[tok.decode(PROMPT)], reward_functions=[tree_reward]).model
    finally:
        torch.set_num_threads(threads)


def lm_leaf_distribution(model, tree) -> np.ndarray:
    return leaf_distribution(tree, tree.node_probs_from(lambda p: next_token_probs(model, p)))


def tv(p, q) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def stationary_without_direct_term(tree, penalty) -> np.ndarray:
    """Leaf distribution where the score-function gradient of the detached penalty alone vanishes:
    per node the return b_a - c_a log pi_a is equal across tokens, log pi_a = (b_a - lambda)/c_a,
    i.e. ``mixed_entropy_argmax(b + c, c)``, with that policy's true values passed up the tree.
    Equal coefficients make it the exact optimum; separate ones do not."""
    value = np.full(tree.n_nodes, np.nan)
    node_prob = np.ones(tree.n_nodes)
    value[tree.leaves] = tree.reward[tree.leaves]
    for node in tree.internal[::-1]:
        kids = tree.children[node]
        c, uses_ref = penalty.coefficients(tree.ref_prob[kids])
        b = value[kids] + np.where(uses_ref, c * safe_log(tree.ref_prob[kids]), 0.0)
        pi, _ = mixed_entropy_argmax(b + c, c)
        node_prob[kids] = pi
        value[node] = float(pi @ (b - c * safe_log(pi)))
    return leaf_distribution(tree, node_prob)


def test_separate_coefficients_reach_the_exact_optimum_with_the_direct_term(tmp_path):
    tok, model, tree, rewards = tree_problem(seed=0)
    penalty = conditional_pm_penalty(BETA, ALPHA, BETA_KL)
    exact = solve_token_tree(tree, penalty).leaf_prob
    equal = conditional_pm_penalty(BETA, ALPHA)
    assert tv(stationary_without_direct_term(tree, equal), solve_token_tree(tree, equal).leaf_prob) < 1e-9
    biased = stationary_without_direct_term(tree, penalty)
    assert tv(biased, exact) > 2 * SEPARATE_TOLERANCE  # the bias the direct term removes
    assert tv(exact, solve_token_tree(tree, equal).leaf_prob) > 0.1  # beta_kl matters here
    pi = lm_leaf_distribution(train_on_tree(tok, model, rewards, tmp_path / "run", "conditional_pm", beta_kl=BETA_KL),
                              tree)
    assert tv(pi, exact) < SEPARATE_TOLERANCE
    assert tv(pi, biased) > 2 * tv(pi, exact)


@pytest.mark.parametrize("penalty", ["conditional_pm", "kl", "pm"])
def test_lm_on_a_token_tree_reaches_the_exact_optimum(tmp_path, penalty):
    tok, model, tree, rewards = tree_problem(seed=0)
    solver = {"conditional_pm": conditional_pm_penalty(BETA, ALPHA), "kl": kl_penalty(BETA), "pm": pm_penalty(BETA)}[penalty]
    exact = solve_token_tree(tree, solver).leaf_prob
    start = lm_leaf_distribution(model, tree)
    assert tv(start, exact) > 0.2  # the run has somewhere to go
    pi = lm_leaf_distribution(train_on_tree(tok, model, rewards, tmp_path / "run", penalty), tree)
    assert tv(pi, exact) < TOLERANCE[penalty]
    if penalty == "conditional_pm":  # and the optimum reached is not the KL or the PM one
        assert tv(pi, solve_token_tree(tree, kl_penalty(BETA)).leaf_prob) > 0.1
        assert tv(pi, solve_token_tree(tree, pm_penalty(BETA)).leaf_prob) > 0.4
        assert np.any(tree.ref_prob[1:] < ALPHA) and np.any(tree.ref_prob[1:] > ALPHA)  # both branches in use
