"""Exact token-level RLHF on a finite token tree: KL, PM and conditional PM (paper 1, PAPERS.md §2).

A token tree holds every response a policy can produce for one prompt: the root is the empty
response, each internal node s (a prefix) has one child per allowed next token a with reference
probability ``pi_ref(a|s)`` (summing to 1 over the children; 0 is allowed), and each leaf is a
complete response y with a reward ``r(y)`` (responses end at an EOS token or at the maximum
length). A policy is a distribution ``pi(.|s)`` over the children of every internal node; its leaf
distribution is ``pi(y) = prod_t pi(a_t|s_t)``.

Token-level RLHF maximises, with per-token penalties as in the authors' PPO code
(``ppo_trainer.py:compute_rewards``; PAPERS.md §2.2-2.3, §2.6)::

    J(pi) = E_{y ~ pi} [ r(y) - sum_t c_t ( log pi(a_t|s_t) - k_t log pi_ref(a_t|s_t) ) ]

* KL-RLHF: ``c_t = beta``, ``k_t = 1`` on every token;
* PM-RLHF: ``c_t = beta``, ``k_t = 0`` on every token (the regulariser ``-beta log pi``);
* conditional PM-RLHF: the PM branch (``c_t = beta_pm``, ``k_t = 0``) where
  ``pi_ref(a_t|s_t) > alpha``, the KL branch (``c_t = beta_kl``, ``k_t = 1``) elsewhere; with
  ``alpha = 0`` the PM branch is off and this is KL-RLHF (the code's ``if alpha > 0`` guard);
  ``beta_pm = beta_kl`` reproduces the released code, which has one coefficient.

Because the tree is deterministic and the penalty of a token depends only on its own node, the
optimum follows by backward induction (soft Bellman). With ``V(leaf) = r(leaf)``, at node s::

    V(s) = max_{pi(.|s)} sum_a pi(a|s) [ V(s a) + k_a c_a log pi_ref(a|s) - c_a log pi(a|s) ]

which is strictly concave per node (:func:`pluralign.lab.optima.mixed_entropy_argmax`). Closed forms:

* KL: ``pi(a|s) ∝ pi_ref(a|s) exp(V(s a)/beta)``, ``V(s) = beta log sum_a pi_ref(a|s) exp(V(s a)/beta)``;
  the leaf distribution is ``pi_ref(y) exp(r(y)/beta) / Z``, the sequence-level KL optimum.
* PM: ``sum_t log pi(a_t|s_t) = log pi(y)``, so the per-token PM objective is exactly the
  sequence-level one, ``E_pi[r(y) - beta log pi(y)]``, and the leaf distribution is
  ``softmax(r/beta)`` over all leaves, including responses the reference never produces.
* conditional PM with ``beta_pm = beta_kl = beta``: ``pi(y) ∝ exp(r(y)/beta) prod_{t in KL(y)} pi_ref(a_t|s_t)``
  (the reference enters only through the tokens on the KL branch). With different coefficients
  there is no product form; each node solves its one-dimensional normalisation exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ._checks import DIST_ATOL, as_positive
from .optima import mixed_entropy_argmax, safe_log

Prefix = tuple[int, ...]


@dataclass(frozen=True)
class TokenTree:
    """A finite token tree for one prompt; nodes in breadth-first order, node 0 the root ``()``.

    ``prefixes[i]``: node i's tokens; ``parent[i]`` (-1 at the root); ``ref_prob[i]``:
    ``pi_ref(last token of i | parent)`` (1 at the root); ``reward[i]``: r at leaves, NaN at
    internal nodes; ``children[i]``: child node indices in token order (empty at leaves).
    Build one with :meth:`from_dict`, :meth:`enumerate` or :func:`random_token_tree`.
    """

    prefixes: tuple[Prefix, ...]
    parent: np.ndarray
    ref_prob: np.ndarray
    reward: np.ndarray
    children: tuple[np.ndarray, ...]

    @classmethod
    def from_dict(cls, ref: Mapping[Prefix, Mapping[int, float]], rewards: Mapping[Prefix, float]) -> "TokenTree":
        """Tree from ``ref[prefix] = {token: pi_ref(token | prefix)}`` at internal nodes and
        ``rewards[leaf] = r(leaf)``. Every child ``prefix + (token,)`` must be internal (a key of
        ``ref``) or a leaf (a key of ``rewards``), and every key must be reachable from ``()``.
        """
        ref = {tuple(k): v for k, v in ref.items()}
        rewards = {tuple(k): float(v) for k, v in rewards.items()}
        if () not in ref:
            raise ValueError("ref must hold the root prefix () (a tree with at least one token)")
        both = set(ref) & set(rewards)
        if both:
            raise ValueError(f"prefix {sorted(both)[0]} is both internal (in ref) and a leaf (in rewards)")
        prefixes, parent, ref_prob, reward, children = [()], [-1], [1.0], [np.nan], []
        head = 0
        while head < len(prefixes):
            node = prefixes[head]
            if node in rewards:
                if not np.isfinite(rewards[node]):
                    raise ValueError(f"reward of leaf {node} must be finite, got {rewards[node]!r}")
                reward[head] = rewards[node]
                children.append(np.zeros(0, dtype=int))
                head += 1
                continue
            dist = ref[node]
            if not dist:
                raise ValueError(f"internal node {node} has no next tokens")
            tokens = sorted(dist)
            probs = np.array([float(dist[t]) for t in tokens])
            if not np.all(np.isfinite(probs)) or np.any(probs < 0):
                raise ValueError(f"pi_ref(.|{node}) must be finite and non-negative, got {probs.tolist()}")
            if abs(probs.sum() - 1.0) > DIST_ATOL * max(1, probs.size):
                raise ValueError(f"pi_ref(.|{node}) must sum to 1 over its next tokens, got {probs.sum():.12g}")
            kids = []
            for token, p in zip(tokens, probs):
                child = node + (int(token),)
                if child not in ref and child not in rewards:
                    raise ValueError(f"child {child} of {node} is neither internal (in ref) nor a leaf (in rewards)")
                kids.append(len(prefixes))
                prefixes.append(child)
                parent.append(head)
                ref_prob.append(p)
                reward.append(np.nan)
            children.append(np.array(kids, dtype=int))
            head += 1
        seen = set(prefixes)
        orphans = sorted((set(ref) | set(rewards)) - seen)
        if orphans:
            raise ValueError(f"prefix {orphans[0]} is not reachable from the root ()")
        return cls(tuple(prefixes), np.array(parent), np.array(ref_prob), np.array(reward), tuple(children))

    @classmethod
    def enumerate(cls, vocab_size: int, max_length: int, ref_probs: Callable[[Prefix], np.ndarray],
                  reward: Callable[[Prefix], float], eos: int | None = None) -> "TokenTree":
        """Every token sequence over ``range(vocab_size)`` up to ``max_length`` tokens.

        A sequence is complete when its last token is ``eos`` or it has ``max_length`` tokens;
        ``ref_probs(prefix)`` gives ``pi_ref(.|prefix)`` over the whole vocabulary (length
        ``vocab_size``; zeros allowed) and ``reward(sequence)`` the reward of a complete one.
        """
        if vocab_size < 1 or max_length < 1:
            raise ValueError(f"need vocab_size >= 1 and max_length >= 1, got {vocab_size}, {max_length}")
        if eos is not None and not 0 <= eos < vocab_size:
            raise ValueError(f"eos must be a token in [0, {vocab_size}), got {eos}")
        ref: dict[Prefix, dict[int, float]] = {}
        rewards: dict[Prefix, float] = {}
        frontier: list[Prefix] = [()]
        while frontier:
            node = frontier.pop()
            if node and (len(node) == max_length or node[-1] == eos):
                rewards[node] = reward(node)
                continue
            probs = np.asarray(ref_probs(node), dtype=float)
            if probs.shape != (vocab_size,):
                raise ValueError(f"ref_probs({node}) must return {vocab_size} probabilities, got shape {probs.shape}")
            ref[node] = dict(enumerate(probs.tolist()))
            frontier.extend(node + (t,) for t in range(vocab_size))
        return cls.from_dict(ref, rewards)

    @property
    def n_nodes(self) -> int:
        return len(self.prefixes)

    @property
    def leaves(self) -> np.ndarray:
        """Indices of the leaves (complete responses), in breadth-first order."""
        return np.array([i for i, c in enumerate(self.children) if c.size == 0], dtype=int)

    @property
    def internal(self) -> np.ndarray:
        return np.array([i for i, c in enumerate(self.children) if c.size > 0], dtype=int)

    def index(self, prefix) -> int:
        """Node index of ``prefix`` (KeyError naming it if the tree does not hold it)."""
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            lookup = {p: i for i, p in enumerate(self.prefixes)}
            object.__setattr__(self, "_lookup", lookup)
        try:
            return lookup[tuple(prefix)]
        except KeyError:
            raise KeyError(f"the tree holds no prefix {tuple(prefix)}") from None

    def leaf_sequences(self) -> list[Prefix]:
        return [self.prefixes[i] for i in self.leaves]

    def leaf_rewards(self) -> np.ndarray:
        return self.reward[self.leaves]

    def reference_node_probs(self) -> np.ndarray:
        """The reference policy in the node format of :func:`leaf_distribution`."""
        return self.ref_prob.copy()

    def node_probs_from(self, probs: Callable[[Prefix], np.ndarray], *, renormalise: bool = False) -> np.ndarray:
        """Node format of a policy given as ``probs(prefix)`` over token ids (e.g. an LM's softmax).

        Each internal node keeps the probabilities of its children's tokens; they must sum to 1
        (within 1e-6) unless ``renormalise`` (then mass on tokens outside the tree is dropped).
        """
        out = np.ones(self.n_nodes)
        for node in self.internal:
            kids = self.children[node]
            p = np.asarray(probs(self.prefixes[node]), dtype=float)
            tokens = [self.prefixes[k][-1] for k in kids]
            if p.ndim != 1 or p.size <= max(tokens):
                raise ValueError(f"probs({self.prefixes[node]}) must cover token ids up to {max(tokens)}")
            chosen = p[tokens]
            if np.any(chosen < 0) or not np.all(np.isfinite(chosen)):
                raise ValueError(f"probs({self.prefixes[node]}) must be finite and non-negative")
            total = chosen.sum()
            if renormalise:
                if total <= 0:
                    raise ValueError(f"probs({self.prefixes[node]}) puts no mass on the tree's tokens")
                chosen = chosen / total
            elif abs(total - 1.0) > 1e-6:
                raise ValueError(f"probs({self.prefixes[node]}) puts {total:.6g} on the tree's tokens, not 1 "
                                 "(pass renormalise=True to renormalise)")
            out[kids] = chosen
        return out


def random_token_tree(rng: np.random.Generator, *, vocab_size: int = 3, max_length: int = 3, eos: int | None = None,
                      reward_scale: float = 1.0, concentration: float = 1.0) -> TokenTree:
    """Full tree with ``pi_ref(.|s) ~ Dirichlet(concentration)`` per node and N(0, reward_scale^2) rewards."""
    return TokenTree.enumerate(vocab_size, max_length, lambda _: rng.dirichlet(np.full(vocab_size, concentration)),
                               lambda _: reward_scale * rng.standard_normal(), eos=eos)


@dataclass(frozen=True)
class TokenPenalty:
    """Per-token regulariser ``c_t (log pi(a_t|s_t) - k_t log pi_ref(a_t|s_t))`` (module doc).

    ``kind``: 'kl' (every token on the KL branch, coefficient ``beta_kl``), 'pm' (every token on
    the PM branch, ``beta_pm``) or 'conditional_pm' (PM branch where ``pi_ref(a|s) > alpha`` and
    alpha > 0, KL branch elsewhere). Build with :func:`kl_penalty`, :func:`pm_penalty`,
    :func:`conditional_pm_penalty`.
    """

    kind: str
    beta_pm: float
    beta_kl: float
    alpha: float = 0.0

    def pm_branch(self, ref_prob: np.ndarray) -> np.ndarray:
        """True where a token with reference probability ``ref_prob`` takes the PM branch."""
        ref_prob = np.asarray(ref_prob, dtype=float)
        if self.kind == "pm":
            return np.ones(ref_prob.shape, dtype=bool)
        if self.kind == "kl" or self.alpha == 0:
            return np.zeros(ref_prob.shape, dtype=bool)
        return ref_prob > self.alpha

    def coefficients(self, ref_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(c, k)`` per token: the coefficient and whether ``log pi_ref`` enters (KL branch)."""
        pm = self.pm_branch(ref_prob)
        return np.where(pm, self.beta_pm, self.beta_kl), ~pm


def kl_penalty(beta: float) -> TokenPenalty:
    """KL-RLHF: ``beta (log pi - log pi_ref)`` on every token."""
    beta = as_positive(beta, "beta")
    return TokenPenalty("kl", beta_pm=beta, beta_kl=beta)


def pm_penalty(beta: float) -> TokenPenalty:
    """PM-RLHF: ``beta log pi`` on every token (reward plus beta times entropy)."""
    beta = as_positive(beta, "beta")
    return TokenPenalty("pm", beta_pm=beta, beta_kl=beta)


def conditional_pm_penalty(beta_pm: float, alpha: float, beta_kl: float | None = None) -> TokenPenalty:
    """Conditional PM: PM branch (``beta_pm``) where ``pi_ref(a|s) > alpha > 0``, KL branch
    (``beta_kl``, default ``beta_pm`` as in the released code) elsewhere; ``alpha = 0`` is KL."""
    beta_pm = as_positive(beta_pm, "beta_pm")
    beta_kl = beta_pm if beta_kl is None else as_positive(beta_kl, "beta_kl")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
    return TokenPenalty("conditional_pm", beta_pm=beta_pm, beta_kl=beta_kl, alpha=float(alpha))


@dataclass(frozen=True)
class TokenTreeSolution:
    """Exact optimum of a token-level objective on a tree.

    ``node_prob[i]``: the optimal ``pi(last token of i | parent)`` (1 at the root);
    ``value[i]``: the soft value V of node i (``value[0]`` = the optimal objective J*).
    """

    tree: TokenTree
    penalty: TokenPenalty
    node_prob: np.ndarray
    value: np.ndarray

    @property
    def objective(self) -> float:
        return float(self.value[0])

    def policy(self, prefix) -> dict[int, float]:
        """``{token: pi(token | prefix)}`` at an internal node."""
        node = self.tree.index(prefix)
        kids = self.tree.children[node]
        if kids.size == 0:
            raise ValueError(f"{tuple(prefix)} is a leaf (a complete response); it has no next-token policy")
        return {self.tree.prefixes[k][-1]: float(self.node_prob[k]) for k in kids}

    @property
    def leaf_prob(self) -> np.ndarray:
        """``pi(y)`` over ``tree.leaves``."""
        return leaf_distribution(self.tree, self.node_prob)

    def leaf_distribution(self) -> dict[Prefix, float]:
        return dict(zip(self.tree.leaf_sequences(), self.leaf_prob.tolist()))


def _path_probs(tree: TokenTree, node_prob: np.ndarray) -> np.ndarray:
    node_prob = np.asarray(node_prob, dtype=float)
    if node_prob.shape != (tree.n_nodes,):
        raise ValueError(f"node_prob must have one entry per node ({tree.n_nodes}), got shape {node_prob.shape}")
    reach = np.ones(tree.n_nodes)
    for i in range(1, tree.n_nodes):  # breadth-first: a parent comes before its children
        reach[i] = reach[tree.parent[i]] * node_prob[i]
    return reach


def leaf_distribution(tree: TokenTree, node_prob) -> np.ndarray:
    """``pi(y) = prod_t pi(a_t|s_t)`` over ``tree.leaves`` for a policy in node format."""
    return _path_probs(tree, node_prob)[tree.leaves]


def token_tree_objective(tree: TokenTree, node_prob, penalty: TokenPenalty) -> float:
    """``J(pi)`` of the module doc for any policy in node format (0 log 0 = 0; -inf if a KL-branch
    token with ``pi_ref = 0`` gets mass)."""
    reach = _path_probs(tree, node_prob)
    node_prob = np.asarray(node_prob, dtype=float)
    c, uses_ref = penalty.coefficients(tree.ref_prob[1:])
    used = reach[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = safe_log(node_prob[1:]) - np.where(uses_ref, safe_log(tree.ref_prob[1:]), 0.0)
    if np.any(used & ~np.isfinite(log_ratio)):
        return float("-inf")
    penalty_total = np.sum(np.where(used, reach[1:] * c * np.where(used, log_ratio, 0.0), 0.0))
    leaves = tree.leaves
    return float(reach[leaves] @ tree.reward[leaves] - penalty_total)


def solve_token_tree(tree: TokenTree, penalty: TokenPenalty) -> TokenTreeSolution:
    """Exact optimum of token-level KL, PM or conditional-PM RLHF on ``tree`` by backward induction.

    See the module doc for the objective, the per-node Bellman step and the closed forms.
    """
    value = np.full(tree.n_nodes, np.nan)
    node_prob = np.ones(tree.n_nodes)
    leaves = tree.leaves
    value[leaves] = tree.reward[leaves]
    for node in tree.internal[::-1]:  # reverse breadth-first: children before parents
        kids = tree.children[node]
        c, uses_ref = penalty.coefficients(tree.ref_prob[kids])
        b = value[kids] + np.where(uses_ref, c * safe_log(tree.ref_prob[kids]), 0.0)
        node_prob[kids], value[node] = mixed_entropy_argmax(b, c)
    return TokenTreeSolution(tree=tree, penalty=penalty, node_prob=node_prob, value=value)


def token_tree_kl_optimum(tree: TokenTree, beta: float) -> TokenTreeSolution:
    """Token-level KL-RLHF optimum (leaf distribution ``pi_ref(y) exp(r(y)/beta) / Z``)."""
    return solve_token_tree(tree, kl_penalty(beta))


def token_tree_pm_optimum(tree: TokenTree, beta: float) -> TokenTreeSolution:
    """Token-level PM-RLHF optimum (leaf distribution ``softmax(r/beta)`` over all leaves)."""
    return solve_token_tree(tree, pm_penalty(beta))


def token_tree_conditional_pm_optimum(tree: TokenTree, beta_pm: float, alpha: float,
                                      beta_kl: float | None = None) -> TokenTreeSolution:
    """Token-level conditional PM-RLHF optimum (PM branch where ``pi_ref(a|s) > alpha > 0``)."""
    return solve_token_tree(tree, conditional_pm_penalty(beta_pm, alpha, beta_kl))
