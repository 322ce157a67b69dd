"""Synthetic worlds: prompts with finite candidate sets and annotator groups with known rewards.

A world makes alignment measurable: any policy's distribution over a prompt's candidates (for a
language model, its renormalised candidate log-probs) can be compared exactly with the
population's preferences (``evaluate_policy``), and the same finite problem can be handed to the
exact solvers in ``pluralign.lab`` (``lab_problem``). A world also emits its population data sets
(``population_pairs``, ``population_rankings``), on which training minimises the population
objective itself, whose exact optimum ``population_optimum`` gives. ``from_records`` builds a world
from real preference data and annotator types given as reward functions on text.
"""

from pluralign.worlds.default import bandit_world, default_world, tiny_world
from pluralign.worlds.from_records import from_records, length_reward, refusal_reward
from pluralign.worlds.evaluate import evaluate_policy, evaluate_prompt, lab_problem, renormalise
from pluralign.worlds.population import population_optimum, population_pairs, population_rankings
from pluralign.worlds.world import World

__all__ = [
    "World",
    "bandit_world",
    "default_world",
    "evaluate_policy",
    "evaluate_prompt",
    "from_records",
    "lab_problem",
    "length_reward",
    "population_optimum",
    "population_pairs",
    "population_rankings",
    "refusal_reward",
    "renormalise",
    "tiny_world",
]
