"""Recipe of ``pluralign em``: the offline run's sections plus ``em``.

``model``, ``reference``, ``data``, ``objective``, ``optim`` are those of ``pluralign train``; the
``train`` section configures every M-step (one ``pluralign train`` run per type per round:
``train.epochs`` per M-step, batch size, seed) and ``train.output_dir`` is the EM run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pluralign.train.config import ConfigError, RunConfig

KINDS = ("lora", "full")
INITS = ("auto", "kmeans", "random")
ESTEPS = ("exact", "last_epoch")
EM_OBJECTIVES = ("plackett_luce", "dpo")  # their per-record loss is minus the log-likelihood of the record


@dataclass
class EMConfig:
    n_types: int = 2  # K latent annotator types (K = 1 is plain DPO / PL-DPO)
    rounds: int = 5  # EM rounds, each an M-step per type then an E-step (the authors use 5)
    kind: str = "lora"  # lora: one adapter per type on a shared base (needs model.lora) | full: one model copy per type
    init: str = "auto"  # kmeans (needs features) | random (a random partition of the annotators) | auto: kmeans when features are given
    features: str | None = None  # JSONL/JSON/CSV of per-annotator feature vectors (annotator_id + features) for k-means
    split_halves: bool | None = None  # E-step on one half of each annotator's votes, M-step on the other, alternating
    #   (None: on for a random initialisation, which would otherwise freeze; off for k-means)
    warm_start: bool = False  # false: every round re-initialises each type from the SFT model (the authors' choice)
    eta_floor: float = 1e-3  # type weights are floored at this and renormalised, so no type dies
    true_groups: str | None = None  # JSON {annotator_id: group}; default: the GROUP of ids "GROUP/aN" (worlds) when all have one
    estep: str = "exact"  # exact: the E-step scores every record under every trained type | last_epoch: each type's
    #   per-record losses from its M-step's last epoch (an approximation, see pluralign.em.loop; needs split_halves off)
    score_batch_size: int | None = None  # examples per E-step scoring batch (a forward in inference mode keeps no
    #   activations for a backward); None: 4 x train.batch_size
    save_cluster_dpo: bool = True  # k-means init: save the round-0 policies (the Cluster-DPO baseline) to cluster_dpo/
    seed: int = 0  # initialisation (k-means, the random partition, half splits)

    def __post_init__(self):
        checks = [
            ("n_types", isinstance(self.n_types, int) and self.n_types >= 1, "an integer >= 1"),
            ("rounds", isinstance(self.rounds, int) and self.rounds >= 1, "an integer >= 1"),
            ("score_batch_size", self.score_batch_size is None or (isinstance(self.score_batch_size, int)
                                                                    and self.score_batch_size >= 1),
             "null or an integer >= 1"),
            ("kind", self.kind in KINDS, " | ".join(KINDS)),
            ("init", self.init in INITS, " | ".join(INITS)),
            ("estep", self.estep in ESTEPS, " | ".join(ESTEPS)),
            ("eta_floor", 0 < self.eta_floor < 1.0 / max(1, self.n_types), f"a number in (0, 1/n_types = "
                                                                            f"{1.0 / max(1, self.n_types):.3g})"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"em.{key} = {getattr(self, key)!r}; expected {expected}")
        if self.init == "kmeans" and self.features is None:
            raise ConfigError("em.init = 'kmeans' needs em.features (a file of per-annotator feature vectors)")
        if self.estep == "last_epoch" and self.resolved_split_halves:
            raise ConfigError("em.estep = 'last_epoch' reads the E-step's log-likelihoods off the M-step, so every "
                              "M-step must train on every record: set em.split_halves=false (split halves are on by "
                              "default with a random initialisation)")

    @property
    def resolved_init(self) -> str:
        return self.init if self.init != "auto" else ("kmeans" if self.features else "random")

    @property
    def resolved_split_halves(self) -> bool:
        return self.split_halves if self.split_halves is not None else self.resolved_init == "random"


@dataclass
class EMRunConfig(RunConfig):
    em: EMConfig = field(default_factory=EMConfig)


def check_em_config(cfg: EMRunConfig) -> None:
    """Cross-section checks, before any model is loaded."""
    cfg.em.__post_init__()
    if cfg.objective.name not in EM_OBJECTIVES:
        raise ConfigError(f"objective.name = {cfg.objective.name!r}; EM-DPO trains one of {list(EM_OBJECTIVES)} "
                          "(their per-record loss is the E-step's minus log-likelihood)")
    if cfg.objective.args.get("label_smoothing", 0.0):
        raise ConfigError("objective.args.label_smoothing must be 0 for EM: the E-step reads the loss as a "
                          "log-likelihood of the observed label")
    if cfg.em.kind == "lora" and cfg.model.lora is None:
        raise ConfigError("em.kind = 'lora' needs model.lora (the adapter shape of every type), e.g. "
                          "model.lora={r: 8, alpha: 16}; or em.kind=full for one model copy per type")
    if cfg.em.kind == "full" and cfg.model.lora is not None:
        raise ConfigError("em.kind = 'full' trains whole model copies; set model.lora=null (or em.kind=lora)")
    if cfg.reference.name is not None:
        raise ConfigError("reference.name must be null for EM: the reference of every type is the base (SFT) "
                          "model, shared by all types")
