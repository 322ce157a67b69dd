"""Start-up checks of the objective against the data: fail before any model is loaded."""

from __future__ import annotations

from collections import Counter

import torch

from pluralign.objectives import PreferenceLogps, check_objective_args, compute_objective
from pluralign.train.config import ConfigError


def accepts_responses(objective: str, k: int, beta: float, args: dict) -> bool:
    """Whether ``objective`` takes examples of ``k`` responses: it is run once on zeros of that shape
    (objectives reject shapes they cannot score with ValueError)."""
    zeros = torch.zeros(1, k)
    inputs = PreferenceLogps(zeros, zeros, torch.ones(1, k), torch.arange(k)[None], torch.tensor([k]),
                             torch.ones(1, k, dtype=torch.bool))
    try:
        compute_objective(objective, inputs, beta, args)
    except ValueError:
        return False
    return True


def check_objective_fits_data(objective: str, beta: float, args: dict, records, what: str = "the training data") -> None:
    """ConfigError naming the objective, the number of examples with each count K of responses, and
    what to use, when the objective cannot take some of them (a pairwise loss on rankings)."""
    try:
        check_objective_args(objective, args)
    except ValueError as exc:
        raise ConfigError(f"objective.args: {exc}") from None
    sizes = Counter(len(r.responses) for r in records)
    rejected = sorted(k for k in sizes if not accepts_responses(objective, k, beta, args))
    if rejected:
        counts = ", ".join(f"{n} with K = {k}" for k, n in sorted(sizes.items()))
        raise ConfigError(f"objective.name = {objective!r} takes pairs (K = 2 responses), but {what} has {counts} "
                          f"responses per prompt; use objective.name=plackett_luce for rankings (K = 2 is DPO), "
                          f"or pairs data")
