"""Online iterative preference optimisation with explicit reference and sampler schedules.

Round t of ``pluralign online RECIPE.yaml`` (paper 4, PAPERS.md §5.3, on a causal LM):

1. snapshot the policy's sequence log-probs ``log pi_t(y|x)`` on every prompt's candidate set;
2. draw responses per prompt from ``mu_t = lam pi_t + (1 - lam) pi_0`` (or another sampler);
3. label them (a preference function such as a world's population, a pairwise judge, or a reward
   model read as Bradley-Terry);
4. train a set number of steps with a registered objective (IPO, DPO, Plackett-Luce) against the
   geometric reference ``log pi_ref^(t) = alpha log pi_t + (1 - alpha) log pi_ref``, built from
   stored log-probs of frozen snapshots (the per-prompt normaliser cancels in pairwise and
   listwise losses, so no second model is needed);
5. the monitor records the candidate distribution, entropy, cycle strength, collapse, the
   estimated ``||P - 1/2||`` and whether (alpha, beta, lambda) sit in the lab's stable regime.

Modules: :mod:`.config` (the ``online`` recipe section), :mod:`.problem` (prompts, candidates,
labels), :mod:`.samplers`, :mod:`.reference`, :mod:`.candidates` (exact candidate log-probs),
:mod:`.rounds` (the loop), :mod:`.monitor`, :mod:`.plots`, :mod:`.cli`, :mod:`.demo_study`.
"""
