"""Min-max-regret aggregation (MMRA) of per-type policies on language models, and the mixture policy
that deploys it (paper 3, PAPERS.md §4.5): :class:`MixturePolicy`, the regret matrix
(:mod:`pluralign.mixture.regret`), and ``pluralign aggregate RUN_DIR`` (:mod:`pluralign.mixture.aggregate`)."""

from pluralign.mixture.policy import MixtureError, MixturePolicy, conditioned_mixture, mixture_logprob
from pluralign.mixture.regret import (LogRatios, mmra_weights, regret_from_log_ratios, sampled_log_ratios,
                                      world_log_ratios)

__all__ = ["LogRatios", "MixtureError", "MixturePolicy", "conditioned_mixture", "mixture_logprob", "mmra_weights", "regret_from_log_ratios",
           "sampled_log_ratios", "world_log_ratios"]
