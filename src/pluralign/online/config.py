"""Recipe of ``pluralign online``: the offline run's sections plus ``online``.

The objective (``objective.name`` ipo | dpo | plackett_luce, ``objective.beta``), optimizer and
``train`` section are those of ``pluralign train``; ``train.batch_size`` counts labelled groups
(pairs, or lists of ``online.group_size`` responses) per micro-batch. ``data.world`` or
``online.problem`` gives the prompts, candidate sets and (for ``online.labels = preference``)
the population's preference matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pluralign.train.config import ConfigError, RunConfig

SAMPLERS = ("mixture", "uniform", "instance")
LABELS = ("preference", "judge", "reward_model")


@dataclass
class OnlineConfig:
    rounds: int = 10  # T rounds of sample -> label -> train
    steps_per_round: int = 50  # optimizer steps per round against the round's reference
    responses_per_prompt: int = 64  # responses drawn per prompt per round (grouped consecutively)
    group_size: int = 2  # responses per labelled group: 2 = pairs (ipo, dpo); > 2 = rankings (plackett_luce)
    alpha: float = 0.0  # reference refresh: log pi_ref^(t) = alpha log pi_t + (1 - alpha) log pi_ref
    lam: float = 1.0  # on-policy fraction: mu_t = lam pi_t + (1 - lam) pi_0
    sampler: str = "mixture"  # mixture | uniform (over the candidate pool) | instance (per-prompt rule)
    initial: str = "policy"  # pi_0: policy (the initial model's candidate distribution) | pool (uniform)
    instance_floor: float = 0.1  # instance sampler: mix this much of the uniform pool into the rule's mu
    labels: str = "preference"  # preference (world / online.problem matrices) | judge | reward_model
    problem: str | None = None  # "module:function" -> OnlineProblem (prompts, candidates, preference)
    judge: str | None = None  # "module:function", f(prompt, response_a, response_b) -> Pr(a > b) or bool
    reward_model: str | None = None  # folder written by `pluralign rm`; labels ~ sigmoid(r_a - r_b)
    per_round_schedule: bool = True  # the LR schedule restarts every round (optim.scheduler over steps_per_round)
    window: int = 5  # rounds in the monitor's cycle-strength window
    collapse_entropy: float = 0.05  # nats: a prompt whose entropy falls below this has collapsed
    # cycle strength (sum of per-candidate variances of pi over a full window) above this counts as oscillation;
    # well above the sampling noise of a few thousand draws per round (about 1e-3), well below a real cycle (0.1)
    oscillation_threshold: float = 0.01
    plot: bool = True  # write online_dynamics.png at the end

    def __post_init__(self):
        checks = [
            ("rounds", self.rounds >= 1, "an integer >= 1"),
            ("steps_per_round", self.steps_per_round >= 1, "an integer >= 1"),
            ("group_size", self.group_size >= 2, "an integer >= 2"),
            ("responses_per_prompt", self.responses_per_prompt >= self.group_size
             and self.responses_per_prompt % self.group_size == 0, "a positive multiple of online.group_size"),
            ("alpha", 0 <= self.alpha <= 1, "a number in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "a number in [0, 1]"),
            ("sampler", self.sampler in SAMPLERS, " | ".join(SAMPLERS)),
            ("initial", self.initial in ("policy", "pool"), "policy | pool"),
            ("instance_floor", 0 <= self.instance_floor <= 1, "a number in [0, 1]"),
            ("labels", self.labels in LABELS, " | ".join(LABELS)),
            ("window", self.window >= 2, "an integer >= 2"),
            ("collapse_entropy", self.collapse_entropy > 0, "a number > 0"),
            ("oscillation_threshold", self.oscillation_threshold > 0, "a number > 0"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"online.{key} = {getattr(self, key)!r}; expected {expected}")
        if self.labels == "judge" and not self.judge:
            raise ConfigError("online.labels = 'judge' needs online.judge ('module:function')")
        if self.labels == "reward_model" and not self.reward_model:
            raise ConfigError("online.labels = 'reward_model' needs online.reward_model (a `pluralign rm` folder)")


@dataclass
class OnlineRunConfig(RunConfig):
    online: OnlineConfig = field(default_factory=OnlineConfig)


ONLINE_OBJECTIVES = ("ipo", "ipo_trl", "dpo", "plackett_luce")


def check_online_config(cfg: OnlineRunConfig) -> None:
    """Cross-section checks, before any model is loaded."""
    name, size = cfg.objective.name, cfg.online.group_size
    if name not in ONLINE_OBJECTIVES:
        raise ConfigError(f"objective.name = {name!r}; the online loop trains one of {list(ONLINE_OBJECTIVES)}")
    if size > 2 and name != "plackett_luce":
        raise ConfigError(f"online.group_size = {size} ranks lists; objective.name = {name!r} takes pairs "
                          "(use plackett_luce, or group_size 2)")
    if (cfg.data.world is None) == (cfg.online.problem is None):
        raise ConfigError("set exactly one of data.world and online.problem (the prompts and candidate sets)")
    if cfg.data.path is not None:
        raise ConfigError("data.path is not read by the online loop (it draws its own data); remove it")
