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
test uses 0): conditional PM 0.0058, 0.0064, 0.0013; KL 0.0013, 0.0054, 0.0013, from a start 0.21
to 0.36 away. The test allows 0.03, while the LM's conditional-PM result (seed 0) is 0.15 from the
KL optimum and 0.56 from the PM optimum of the same tree.
"""

import numpy as np
import pytest
import torch

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
TOLERANCE = 0.03


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


def train_on_tree(tok, model, rewards, out, penalty: str, steps: int = 150, k: int = 64, lr: float = 3e-3):
    from pluralign.rl.config import RLConfig, RLRunConfig
    from pluralign.rl.training import train_rl
    from pluralign.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    def tree_reward(prompts, completions, **columns):
        return [rewards[c] for c in completions]

    rl = RLConfig(reward="functions", penalty=penalty, beta=BETA, alpha=ALPHA, beta_pm=BETA, beta_kl=BETA,
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


@pytest.mark.parametrize("penalty", ["conditional_pm", "kl"])
def test_lm_on_a_token_tree_reaches_the_exact_optimum(tmp_path, penalty):
    tok, model, tree, rewards = tree_problem(seed=0)
    solver = {"conditional_pm": conditional_pm_penalty(BETA, ALPHA), "kl": kl_penalty(BETA)}[penalty]
    exact = solve_token_tree(tree, solver).leaf_prob
    start = lm_leaf_distribution(model, tree)
    assert tv(start, exact) > 0.2  # the run has somewhere to go
    pi = lm_leaf_distribution(train_on_tree(tok, model, rewards, tmp_path / "run", penalty), tree)
    assert tv(pi, exact) < TOLERANCE
    if penalty == "conditional_pm":  # and the optimum reached is not the KL or the PM one
        assert tv(pi, solve_token_tree(tree, kl_penalty(BETA)).leaf_prob) > 0.1
        assert tv(pi, solve_token_tree(tree, pm_penalty(BETA)).leaf_prob) > 0.4
        assert np.any(tree.ref_prob[1:] < ALPHA) and np.any(tree.ref_prob[1:] > ALPHA)  # both branches in use
