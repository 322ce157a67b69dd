"""Synthetic worlds: prompts with finite candidate sets and annotator groups with known rewards.

A world makes alignment measurable: any policy's distribution over a prompt's candidates (for a
language model, its renormalised candidate log-probs) can be compared exactly with the
population's preferences (``evaluate_policy``), and the same finite problem can be handed to the
exact solvers in ``pluralign.lab`` (``lab_problem``).
"""

from pluralign.worlds.default import bandit_world, default_world, tiny_world
from pluralign.worlds.evaluate import evaluate_policy, evaluate_prompt, lab_problem, renormalise
from pluralign.worlds.world import World

__all__ = [
    "World",
    "bandit_world",
    "default_world",
    "evaluate_policy",
    "evaluate_prompt",
    "lab_problem",
    "renormalise",
    "tiny_world",
]
