"""EM-DPO on causal LMs: latent annotator types, one policy per type (Chidambaram et al. 2510.15716).

:mod:`pluralign.em.loop` (the rounds), :mod:`pluralign.em.estep` (posteriors from the objectives'
per-record losses), :mod:`pluralign.em.types` (LoRA adapters or full copies), :mod:`pluralign.em.init`
(k-means / random initialisation, split halves), :mod:`pluralign.em.rundir` (the run directory).
"""

from pluralign.em.config import EMConfig, EMRunConfig

__all__ = ["EMConfig", "EMRunConfig"]
