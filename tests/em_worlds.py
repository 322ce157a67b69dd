"""Worlds for the EM-DPO tests: two groups with opposite rewards over one-byte candidates."""

import numpy as np

from pluralign.worlds.world import World

PERMS = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [1, 0, 2], [2, 1, 0]]


def opposite_world(n_prompts: int = 4, scale: float = 2.0, pool: int = 200) -> World:
    """Groups g0 / g1 at 50/50; on every prompt g0's rewards are a permutation of (scale, 0, -scale) over
    the candidates "A", "B", "C" and g1's are their negation (Lemma 4.1's +theta / -theta mixture)."""
    r = np.array([[scale, 0.0, -scale], [-scale, 0.0, scale]])
    return World(prompts=[f"{chr(80 + x % 8)}{x // 8 or ''}:" for x in range(n_prompts)],
                 candidates=[["A", "B", "C"]] * n_prompts, group_names=["g0", "g1"], group_weights=np.array([0.5, 0.5]),
                 rewards=[r[:, PERMS[x % 6]] for x in range(n_prompts)], minority_group=1, annotators_per_group=pool)


def em_overrides(out, *extra) -> list[str]:
    """A cheap EM recipe on the tiny model: LoRA types, one-token responses, short M-steps."""
    return ["model.lora={r: 4, alpha: 8}", "objective.name=plackett_luce", "objective.beta=1.0", "optim.lr=2e-2",
            "optim.scheduler=constant", "train.batch_size=32", "train.epochs=4", "train.progress_bar=false",
            "train.report_to=[]", "data.max_length=16", "data.max_prompt_length=8", f"train.output_dir={out}",
            *extra]
