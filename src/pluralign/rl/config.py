"""Recipes of the reward-model and RL loops: the offline run's sections plus one section each.

``pluralign rm``: :class:`RMRunConfig` = model, reference, data, optim, train (as for ``pluralign
train``) + ``reward_model``. ``pluralign rl``: :class:`RLRunConfig` = the same (data: the prompts)
+ ``rl``. Neither has the offline run's ``objective`` section (their losses are set by
``reward_model`` and ``rl``); a recipe that carries one is refused with an error naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from pluralign.objectives.penalties import KL_ESTIMATORS, PENALTIES
from pluralign.rl.estimators import ADVANTAGES
from pluralign.train.config import ConfigError, RunConfig

ESTIMATORS = (*ADVANTAGES, "ppo")
CRITICS = ("auto", "shared", "head", "reward_model")  # pluralign.rl.critic


@dataclass
class RewardModelConfig:
    head: str = "classifier"  # classifier (sequence-classification head) | value (value head on the causal LM)
    center_coefficient: float = 0.0  # TRL's center_rewards_coefficient: adds c * (sum_k r_k)^2 per example
    margin: float | None = None  # Bradley-Terry margin m in -log sigma(r_w - r_l - m) (pairs only)

    def __post_init__(self):
        if self.head not in ("classifier", "value"):
            raise ConfigError(f"reward_model.head = {self.head!r}; expected 'classifier' or 'value'")
        if not self.center_coefficient >= 0:
            raise ConfigError(f"reward_model.center_coefficient = {self.center_coefficient!r}; expected a number >= 0")


# RunConfig's sections except ``objective``, derived from it so that a section added there is here too.
LoopRunConfig = dataclasses.make_dataclass(
    "LoopRunConfig",
    [(f.name, typing.get_type_hints(RunConfig)[f.name], field(default_factory=f.default_factory))
     for f in dataclasses.fields(RunConfig) if f.name != "objective"],
    namespace={"__doc__": ":class:`pluralign.train.config.RunConfig` without its ``objective`` section.",
               "__module__": __name__})


@dataclass
class RMRunConfig(LoopRunConfig):
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)


@dataclass
class RLConfig:
    # where rewards come from: world (data.world's true reward) | model (a saved reward model) | functions
    reward: str = "world"
    world_reward: str = "population"  # population (log of the population's top-choice share) | mean | a group name
    off_candidate_reward: float | None = None  # world reward of a completion that is no candidate (None: error)
    reward_model: str | None = None  # folder written by `pluralign rm` (its checkpoints/step-N/model)
    reward_functions: list[str] = field(default_factory=list)  # "module:function", f(prompts, completions, **cols)
    reward_weights: list[float] | None = None  # one per reward function (default 1 each)
    penalty: str = "kl"  # kl | pm | conditional_pm | none   (pluralign.objectives.penalties)
    beta: float = 0.1  # kl: beta_KL; pm: beta_PM
    kl_estimator: str = "k1"  # kl: k1 | k2 | k3 (all enter the reward; k1 is the unbiased choice)
    alpha: float = 0.0  # conditional_pm: PM branch where pi_ref(a_t|s_t) > alpha (0 = plain KL)
    beta_pm: float = 0.1  # conditional_pm: coefficient of the PM branch
    beta_kl: float = 0.1  # conditional_pm: coefficient of the KL branch (equal to beta_pm = released code)
    estimator: str = "rloo"  # rloo | group_normalized | ppo (clipped PPO with GAE and a critic)
    # ppo: auto (reward_model when rewards come from a reward model with the policy's vocabulary, else head) |
    # shared (value head on the policy; the value loss trains the policy too) | head (the same, gradient stopped
    # at the policy's hidden state) | reward_model (a separate critic initialised from rl.reward_model)
    critic: str = "auto"
    ppo_epochs: int = 1  # ppo: passes over each rollout (the first seed paper's authors: 1)
    num_minibatches: int = 1  # ppo: optimizer steps per pass, each over train.batch_size / this many prompts
    cliprange: float = 0.2  # ppo: policy ratio clip epsilon
    cliprange_value: float = 0.2  # ppo: value clip around the rollout's values
    vf_coef: float = 0.1  # ppo: weight of the value loss (TRL's vf_coef)
    gamma: float = 1.0  # ppo: GAE discount
    lam: float = 0.95  # ppo: GAE lambda
    score_clip: float | None = 5.0  # ppo: the score is clipped to +-score_clip at the last token (None: no clip)
    whiten_advantages: bool = False  # ppo: normalise advantages over each micro-batch's tokens
    num_completions: int = 4  # k completions per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    missing_eos_penalty: float | None = None  # subtracted from the reward of completions cut at max_new_tokens
    eval_world: bool = True  # with data.world: exact PM divergence, minority mass, TV to target at logged steps

    def __post_init__(self):
        checks = [
            ("reward", self.reward in ("world", "model", "functions"), "world | model | functions"),
            ("penalty", self.penalty in PENALTIES, " | ".join(PENALTIES)),
            ("kl_estimator", self.kl_estimator in KL_ESTIMATORS, " | ".join(KL_ESTIMATORS)),
            ("estimator", self.estimator in ESTIMATORS, " | ".join(ESTIMATORS)),
            ("critic", self.critic in CRITICS, " | ".join(CRITICS)),
            ("critic", self.critic != "reward_model" or self.reward_model is not None,
             "auto | shared | head when rl.reward_model is not set (reward_model initialises the critic from it)"),
            ("ppo_epochs", self.ppo_epochs >= 1, "an integer >= 1"),
            ("num_minibatches", self.num_minibatches >= 1, "an integer >= 1 dividing train.batch_size"),
            ("cliprange", self.cliprange > 0, "a number > 0"),
            ("cliprange_value", self.cliprange_value > 0, "a number > 0"),
            ("vf_coef", self.vf_coef >= 0, "a number >= 0"),
            ("gamma", 0 <= self.gamma <= 1, "a number in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "a number in [0, 1]"),
            ("score_clip", self.score_clip is None or self.score_clip > 0, "a number > 0 or null"),
            ("num_completions", self.num_completions >= 2, "an integer >= 2 (leave-one-out and group baselines)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("alpha", 0 <= self.alpha <= 1, "a probability in [0, 1]"),
            ("beta", self.beta > 0, "a number > 0"),
            ("temperature", self.temperature > 0, "a number > 0"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"rl.{key} = {getattr(self, key)!r}; expected {expected}")

    def penalty_args(self) -> dict:
        """Keyword arguments of the configured penalty function."""
        return {
            "kl": {"beta": self.beta, "estimator": self.kl_estimator},
            "pm": {"beta": self.beta},
            "conditional_pm": {"alpha": self.alpha, "beta_pm": self.beta_pm, "beta_kl": self.beta_kl},
            "none": {},
        }[self.penalty]


@dataclass
class RLRunConfig(LoopRunConfig):
    rl: RLConfig = field(default_factory=RLConfig)

    def __post_init__(self):
        if self.rl.estimator == "ppo" and self.train.batch_size % self.rl.num_minibatches:
            raise ConfigError(f"rl.num_minibatches = {self.rl.num_minibatches} must divide train.batch_size = "
                              f"{self.train.batch_size} (PPO minibatches split each micro-batch's prompts)")
