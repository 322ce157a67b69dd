"""pluralign.lab: exact alignment on finite response sets (numpy/scipy only, no torch).

Closed-form and exactly solved optima (KL-RLHF, PM-RLHF, conditional PM, IPO, DPO, RPO), policy
metrics (PM divergence, KL, TV, entropy, minority mass), preference collapse, samplers and
social-choice structure, exact token-level KL/PM/conditional-PM RLHF on token trees, the two-order
pairwise win rate, MRS-IPO/MRS-DPO dynamics, identifiability of annotator types, tabular
EM-DPO and min-max-regret aggregation. Equations and conventions are in each docstring; the
papers are summarised in PAPERS.md.
"""

from .collapse import collapse_reference_numbers, preference_collapse_table
from .dpo import (chosen_distribution, dpo_first_order_residual, dpo_is_sampling_invariant, dpo_optimum,
                  dpo_population_loss, rpo_optimum)
from .dynamics import (MRSRun, contraction_bound, cycle_instability, cycle_strength, entropy_collapsed,
                       logit_map_jacobian, mrs_dpo_run, mrs_ipo_run, mrs_ipo_step, parameter_grid)
from .em_dpo import TabularWorld, em_dpo_tabular, random_world, simulate_annotators
from .generators import TRANSITIVE_EXAMPLE, attribute_preference_matrices, classify_matrix, cyclic_matrix, sample_matrices
from .identify import (LatentTypePopulation, adjusted_rand_index, identifiability_experiment, plus_minus_population,
                       simulate_rankings)
from .metrics import entropy, kl, minority_mass, pm_divergence, pm_divergence_softmax, policy_preferences, total_variation
from .mmra import mmra_hedge, mmra_lp, payoff_matrix, regret_matrix, worst_case_regret
from .optima import (bradley_terry_matrix, conditional_pm_optimum, ipo_optimum, is_bradley_terry, kl_rlhf_optimum,
                     mixed_entropy_argmax, pm_rlhf_optimum, reference_support)
from .plackett_luce import fit_pl_mixture, pl_log_likelihood
from .sampling import (first_order_dominates, has_row_advantage, instance_dependent_sampler, ipo_logit_gaps,
                       max_margin_sampler, on_policy_sampler, shift_sharpens, uniform_sampler)
from .token_tree import (TokenPenalty, TokenTree, TokenTreeSolution, conditional_pm_penalty, kl_penalty,
                         leaf_distribution, pm_penalty, random_token_tree, solve_token_tree,
                         token_tree_conditional_pm_optimum, token_tree_kl_optimum, token_tree_objective,
                         token_tree_pm_optimum)
from .tournament import condorcet_winner, copeland_ranking, is_cyclic, is_strongly_transitive, smith_set
from .winrate import outcome_counts, two_order_outcome, two_order_win_rate, win_rate_from_counts

__all__ = [
    "MRSRun", "LatentTypePopulation", "TabularWorld", "TRANSITIVE_EXAMPLE", "TokenPenalty", "TokenTree",
    "TokenTreeSolution", "conditional_pm_penalty", "kl_penalty", "leaf_distribution", "mixed_entropy_argmax",
    "outcome_counts", "pm_divergence_softmax", "pm_penalty", "random_token_tree", "solve_token_tree",
    "token_tree_conditional_pm_optimum", "token_tree_kl_optimum", "token_tree_objective", "token_tree_pm_optimum",
    "two_order_outcome", "two_order_win_rate", "win_rate_from_counts",
    "adjusted_rand_index", "attribute_preference_matrices", "bradley_terry_matrix", "chosen_distribution",
    "classify_matrix", "collapse_reference_numbers", "condorcet_winner", "conditional_pm_optimum",
    "contraction_bound", "copeland_ranking", "cycle_instability", "cycle_strength", "cyclic_matrix",
    "dpo_first_order_residual", "dpo_is_sampling_invariant", "dpo_optimum", "dpo_population_loss",
    "em_dpo_tabular", "entropy", "entropy_collapsed", "first_order_dominates", "fit_pl_mixture",
    "has_row_advantage", "identifiability_experiment", "instance_dependent_sampler", "ipo_logit_gaps",
    "ipo_optimum", "is_bradley_terry", "is_cyclic", "is_strongly_transitive", "kl", "kl_rlhf_optimum",
    "logit_map_jacobian", "max_margin_sampler", "minority_mass", "mmra_hedge", "mmra_lp", "mrs_dpo_run",
    "mrs_ipo_run", "mrs_ipo_step", "on_policy_sampler", "parameter_grid", "payoff_matrix", "pl_log_likelihood",
    "plus_minus_population", "pm_divergence", "pm_rlhf_optimum", "policy_preferences",
    "preference_collapse_table", "random_world", "reference_support", "regret_matrix", "rpo_optimum",
    "sample_matrices", "shift_sharpens", "simulate_annotators", "simulate_rankings", "smith_set",
    "total_variation", "uniform_sampler", "worst_case_regret",
]
