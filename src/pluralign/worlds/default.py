"""Ready-made worlds: a majority/minority population where KL-regularised alignment collapses.

Construction of ``default_world`` (each prompt has four candidates playing four roles):

    role                      majority reward   minority reward
    M  majority favourite          +1.5              -1.0
    N  minority favourite           0.0              +2.0
    S  shared second choice        +0.3              +0.3   (same value for both groups)
    B  shared last choice          -1.5              -1.5   (same value for both groups)

plus a uniform jitter in [-0.15, 0.15] per (prompt, role, group) drawn from the seed (S and B
get one jitter shared by both groups), and a seeded assignment of roles to the four candidates
of each prompt. The jitter is small enough that the minority's log-partition always exceeds the
majority's (e^{2-J} + e^{-1-J} > e^{1.5+J} + e^{J} for J = 0.15), so the shared responses S and
B get less top-choice probability from the minority than from the majority, and N is the
minority's only distinctive response. With shares 0.7 / 0.3 this gives (before jitter):

* contested pair M vs N: the population prefers M with probability
  0.7 sigmoid(1.5) + 0.3 sigmoid(-3) ~= 0.587, only mildly above 1/2. A Bradley-Terry reward
  fitted to the population therefore ranks M first, and KL-regularised alignment (RLHF, DPO)
  drains N as beta shrinks, towards all mass on M: preference collapse (Xiao et al. 2405.16455).
  For seed 0 the exact population DPO optimum (uniform reference and sampler) keeps minority
  mass 0.293 at beta = 1, 0.238 at beta = 0.3 and 0.076 at beta = 0.1.
* population target (sum_g w_g softmax(r_g)): about 0.34 of the mass on N, the minority's only
  distinctive response (``World.minority_responses`` returns exactly {N}, checked on construction).
  For seed 0 the exact average over prompts is 0.3328 (0.315 to 0.353 per prompt), and the
  contested-pair preference ranges from 0.566 to 0.612.

All |rewards| <= 2.15.
"""

from __future__ import annotations

import numpy as np

from pluralign.worlds.world import World

# (prompt, four candidates). Prompts end without a trailing space; candidates start with one,
# so that a tokenizer splits prompt + candidate at the boundary.
DEFAULT_PROMPTS: list[tuple[str, list[str]]] = [
    ("Q: What should I drink with breakfast?\nA:", [" Tea.", " Coffee.", " Orange juice.", " Water."]),
    ("Q: Which pet should I get?\nA:", [" A dog.", " A cat.", " A fish.", " A rabbit."]),
    ("Q: Where should I go on holiday?\nA:", [" The beach.", " The mountains.", " A city.", " Stay home."]),
    ("Q: What should I cook for dinner?\nA:", [" Pasta.", " Curry.", " Salad.", " Soup."]),
    ("Q: How should I get to work?\nA:", [" By bike.", " By car.", " By train.", " On foot."]),
    ("Q: What should I read next?\nA:", [" A novel.", " Poetry.", " A history book.", " The news."]),
    ("Q: What music should we play at the party?\nA:", [" Pop.", " Jazz.", " Rock.", " Classical."]),
    ("Q: What colour should I paint the kitchen?\nA:", [" White.", " Blue.", " Green.", " Yellow."]),
]

# Role order M, N, S, B; rows: majority, minority.
ROLE_REWARDS = np.array([[1.5, 0.0, 0.3, -1.5], [-1.0, 2.0, 0.3, -1.5]])
JITTER = 0.15


def default_world(
    seed: int = 0, *, minority_share: float = 0.3, annotators_per_group: int = 50
) -> World:
    """The 8-prompt, 4-candidate majority/minority world described in the module docstring.

    Deterministic in ``seed`` (which only moves the jitter and the role assignment).
    ``minority_share`` is the minority's population weight w_1 (majority w_0 = 1 - w_1).
    """
    if not 0.0 < minority_share < 0.5:
        raise ValueError(f"minority_share: expected a share in (0, 0.5), got {minority_share!r}")
    rng = np.random.default_rng(seed)
    prompts, candidates, rewards = [], [], []
    for prompt, cands in DEFAULT_PROMPTS:
        roles = rng.permutation(4)  # roles[c] = role of candidate c
        jitter = rng.uniform(-JITTER, JITTER, size=(2, 4))
        jitter[1, 2:] = jitter[0, 2:]  # S and B stay shared between the groups
        role_rewards = ROLE_REWARDS + jitter
        prompts.append(prompt)
        candidates.append(list(cands))
        rewards.append(role_rewards[:, roles])
    world = World(
        prompts=prompts,
        candidates=candidates,
        group_names=["majority", "minority"],
        group_weights=np.array([1.0 - minority_share, minority_share]),
        rewards=rewards,
        minority_group=1,
        annotators_per_group=annotators_per_group,
    )
    for x in range(world.n_prompts):
        minority_favourite = int(np.argmax(rewards[x][1]))
        if world.minority_responses(x).tolist() != [minority_favourite]:
            raise RuntimeError(
                f"default_world: prompt {x} lost its single distinctive minority response"
            )
    return world


def tiny_world() -> World:
    """Two prompts with three candidates and hand-set rewards, for fast tests.

    Shares 0.7 (majority) / 0.3 (minority). Rewards (majority row, minority row):
        prompt 0 " Tea." / " Coffee." / " Water.":  [1.0, 0.0, -1.0] and [-0.5, 1.5, -1.0]
        prompt 1 " Cat." / " Dog." / " Fish.":      [0.0, 1.0, -1.0] and [1.5, -0.5, -1.0]
    so the minority's distinctive response is " Coffee." for prompt 0 and " Cat." for prompt 1.
    """
    return World(
        prompts=["Q: Tea or coffee?\nA:", "Q: Cat or dog?\nA:"],
        candidates=[[" Tea.", " Coffee.", " Water."], [" Cat.", " Dog.", " Fish."]],
        group_names=["majority", "minority"],
        group_weights=np.array([0.7, 0.3]),
        rewards=[
            np.array([[1.0, 0.0, -1.0], [-0.5, 1.5, -1.0]]),
            np.array([[0.0, 1.0, -1.0], [1.5, -0.5, -1.0]]),
        ],
        minority_group=1,
        annotators_per_group=20,
    )


def bandit_world() -> World:
    """Two prompts with four short candidates each, for LM-vs-lab convergence tests.

    Prompt 0's candidates are one byte token each ("A".."D"), prompt 1's one or two ("x", "yz", "w",
    "uv"); with the byte tokenizer and EOS a candidate is 2 or 3 tokens. Shares 0.7 / 0.3; rewards
    (majority row, minority row) follow the M/N/S/B roles of ``default_world`` without jitter:
        prompt 0 (M, N, S, B):        [1.5, 0.0, 0.3, -1.5] and [-1.0, 2.0, 0.3, -1.5]
        prompt 1 (S, M, B, N):        [0.3, 1.5, -1.5, 0.0] and [0.3, -1.0, -1.5, 2.0]
    so the population preference matrix is not Bradley-Terry and the minority's response is
    "B" for prompt 0 and "uv" for prompt 1.
    """
    return World(
        prompts=["Pick:", "Say:"],
        candidates=[["A", "B", "C", "D"], ["x", "yz", "w", "uv"]],
        group_names=["majority", "minority"],
        group_weights=np.array([0.7, 0.3]),
        rewards=[ROLE_REWARDS.copy(), ROLE_REWARDS[:, [2, 0, 3, 1]].copy()],
        minority_group=1,
        annotators_per_group=10,
    )
