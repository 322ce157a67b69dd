"""Mixture study: EM-DPO and MMRA on the tiny LM, next to the lab's exact and tabular answers (paper 3).

The world (:func:`mixture_world`): 4 prompts, each with the one-byte candidates A-D, and two
annotator groups, a 70% majority and a 30% minority, whose Bradley-Terry rewards over four roles
are

    role               majority   minority
    M  majority's pick    +2.0      -1.0
    N  minority's pick    -1.0      +2.5
    S  shared second      +0.5      +0.5
    B  shared last        -1.5      -1.5

(the roles rotate over the candidates from prompt to prompt). The study:

1. SFT the tiny LM on the candidates (the reference pi_SFT, near uniform on them), then hand the
   same finite problem to the lab with pi_SFT as the reference: each group's own optimum, the
   pooled (PL-)DPO optimum that ignores the annotators (it collapses the minority: its mass on N
   is what the report shows) and the exact min-max-regret (MMRA) mixture of the group optima.
2. Draw two data sets from the world: several rankings of 3 shown candidates per annotator, and
   one binary comparison per annotator. Every annotator also has a feature vector, a noisy
   indicator of its group (one-hot + N(0, FEATURE_NOISE^2)), for the k-means initialisation.
3. On each data set: EM-DPO on the tiny LM (``pluralign.em``, k-means initialised; its round-0
   policies are Cluster-DPO) and the lab's tabular EM-DPO on the same votes from the same
   k-means clusters; the adjusted Rand index of both against the true groups, beside the ARI
   that the true rewards themselves would reach (the posterior with the true types) and the
   chance level of random labels.
4. Pooled PL-DPO on the rankings (the LM, and the lab's tabular fit of the same votes).
5. MMRA on the LM's type policies (``pluralign.mixture``: the exact regret matrix on the world,
   LP weights, a MixturePolicy) and on the Cluster-DPO policies; every policy's true regret for
   each group, computed exactly on the world (``pluralign.lab.mixture_world.group_regrets``).

``run_mixture_study(out_dir, quick, seed)`` writes ``mixture.md``, ``summary.json`` and PNG plots.
Every number in the report is computed by the run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pluralign import lab
from pluralign.data.records import PreferenceRecord
from pluralign.lab import mixture_world as mw
from pluralign.lab.em_dpo import TabularWorld, em_dpo_tabular
from pluralign.lab.identify import adjusted_rand_index, ari_chance_level
from pluralign.lab.plackett_luce import kmeans_labels
from pluralign.worlds import World

log = logging.getLogger(__name__)

BETA = 0.5  # DPO / PL-DPO beta of every policy (M-steps, pooled), and of the lab's optima
SHARES = (0.7, 0.3)
ROLE_REWARDS = np.array([[2.0, -1.0, 0.5, -1.5],   # majority, over roles M, N, S, B
                         [-1.0, 2.5, 0.5, -1.5]])  # minority
CANDIDATES = [["A", "B", "C", "D"], ["W", "X", "Y", "Z"]]  # one byte token each; disjoint sets
FEATURE_NOISE = 0.8  # std of the Gaussian noise on the one-hot group indicator (k-means features)
GROUP_NAMES = ["majority", "minority"]


def mixture_world(annotators_per_group: int = 1000) -> World:
    """The study's world (module doc): candidate c of prompt x plays role (c - x) mod 4."""
    return World(prompts=["Pick a letter:", "Say one:"], candidates=[list(c) for c in CANDIDATES],
                 group_names=list(GROUP_NAMES), group_weights=np.array(SHARES),
                 rewards=[np.roll(ROLE_REWARDS, x, axis=1) for x in range(len(CANDIDATES))], minority_group=1,
                 annotators_per_group=annotators_per_group)


def tabular_world(world: World, pi_ref: list[np.ndarray], beta: float) -> TabularWorld:
    """The world as the lab's :class:`TabularWorld` (equal candidate counts), reference ``pi_ref``."""
    return TabularWorld(np.stack(world.rewards, axis=1), world.group_weights.copy(), np.stack(pi_ref), beta)


@dataclass
class Votes:
    """A data set's votes as the lab reads them: ``orders`` [n, m] items ``x * K + y`` best first,
    ``annotator`` [n] indices into ``ids``, the true group of every annotator in ``types``."""

    orders: np.ndarray
    annotator: np.ndarray
    ids: list[str]
    types: np.ndarray


def votes(world: World, records: list[PreferenceRecord]) -> Votes:
    K = world.n_candidates(0)
    index: dict[str, int] = {}
    orders, annotator = [], []
    for r in records:
        x, ranked = world.record_indices(r)
        orders.append([x * K + y for y in ranked])
        annotator.append(index.setdefault(r.annotator_id, len(index)))
    ids = list(index)
    types = np.array([world.group_names.index(i.split("/", 1)[0]) for i in ids])
    return Votes(np.array(orders), np.array(annotator), ids, types)


def annotator_features(v: Votes, n_groups: int, noise: float, seed: int) -> np.ndarray:
    """[n_annotators, G]: one-hot of the annotator's true group plus N(0, noise^2) per entry."""
    rng = np.random.default_rng([seed, 7])
    return np.eye(n_groups)[v.types] + noise * rng.standard_normal((len(v.ids), n_groups))


def write_features(path: Path, v: Votes, features: np.ndarray) -> Path:
    """JSONL rows ``{"annotator_id", "features"}`` (what ``em.features`` reads)."""
    path.write_text("".join(json.dumps({"annotator_id": i, "features": f.tolist()}) + "\n"
                            for i, f in zip(v.ids, features)))
    return path


# ---------------------------------------------------------------- exact and tabular answers (the lab)
def policy_row(world: World, tw: TabularWorld, pi) -> dict:
    """Minority mass (mean over prompts of the mass on the minority's distinctive candidates) and the
    true regret of every group (``lab.mixture_world.group_regrets``) of a policy [X, K]."""
    pi = np.asarray(pi, dtype=float)
    regret = mw.group_regrets(tw, pi)
    mass = np.mean([lab.minority_mass(pi[x], world.minority_responses(x)) for x in range(world.n_prompts)])
    return {"minority_mass": float(mass), "regret": dict(zip(world.group_names, regret.tolist())),
            "worst_regret": float(regret.max())}


def exact_answers(world: World, tw: TabularWorld) -> dict:
    """The lab's exact answer on the world: each group's optimum, pooled DPO (pairs) and pooled
    PL-DPO (rankings of 3) population optima, and the exact MMRA mixture of the group optima."""
    optima = tw.type_policies()
    mmra = mw.mmra_of(optima, tw.pi_ref)
    rows = {f"{name} optimum": policy_row(world, tw, optima[g]) for g, name in enumerate(world.group_names)}
    rows["pooled DPO (pairs)"] = policy_row(world, tw, mw.pooled_optimum(tw, 2))
    rows["pooled PL-DPO (rankings of 3)"] = policy_row(world, tw, mw.pooled_optimum(tw, 3))
    rows["MMRA of the group optima"] = policy_row(world, tw, mmra["policy"])
    return {"policies": rows, "mmra_weights": mmra["weights"].tolist(), "mmra_value": float(mmra["worst_regret"])}


def tabular_answers(world: World, tw: TabularWorld, v: Votes, clusters: np.ndarray, seed: int) -> dict:
    """The lab's tabular EM-DPO on the same votes from the same k-means ``clusters`` (so its first
    M-step is tabular Cluster-DPO), MMRA over its policies and over the Cluster-DPO ones, pooled
    tabular (PL-)DPO, and the ARIs (EM, clusters, true-reward posterior, chance)."""
    rng = np.random.default_rng([seed, 11])
    n_types = world.n_groups
    em = em_dpo_tabular(v.orders, v.annotator, tw.pi_ref, tw.beta, n_types, rng, true_types=v.types,
                        init_gamma=np.eye(n_types)[clusters])
    pooled = em_dpo_tabular(v.orders, v.annotator, tw.pi_ref, tw.beta, 1, rng)
    em_mmra, cluster_mmra = mw.mmra_of(em.policies, tw.pi_ref), mw.mmra_of(em.cluster_policies, tw.pi_ref)
    return {
        "ari": float(em.ari), "cluster_ari": float(adjusted_rand_index(v.types, clusters)),
        "true_reward_ari": float(mw.oracle_ari(tw, v.orders, v.annotator, v.types)),
        "chance_ari_95": ari_chance_level(v.types, em.fit.labels, np.random.default_rng([seed, 13])),
        "type_weights": em.fit.eta.tolist(), "mmra_weights": em_mmra["weights"].tolist(),
        "cluster_mmra_weights": cluster_mmra["weights"].tolist(),
        "policies": {"pooled": policy_row(world, tw, pooled.policies[0]),
                     "MMRA of EM-DPO": policy_row(world, tw, em_mmra["policy"]),
                     "MMRA of Cluster-DPO": policy_row(world, tw, cluster_mmra["policy"])},
    }


# ---------------------------------------------------------------- the tiny LM
@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``quick`` or full)."""

    rank_annotators: int  # annotators of the rankings data set
    rankings_per_annotator: int  # rankings of 3 shown candidates each
    binary_annotators: int  # annotators of the binary data set, one comparison each
    sft_steps: int
    mstep_steps: int  # full-batch optimizer steps per M-step (and for pooled PL-DPO)
    rounds: int  # EM rounds after the k-means initialisation
    lr: float = 2e-2


QUICK = Settings(rank_annotators=60, rankings_per_annotator=4, binary_annotators=240, sft_steps=40, mstep_steps=30,
                 rounds=2)
FULL = Settings(rank_annotators=100, rankings_per_annotator=4, binary_annotators=400, sft_steps=60, mstep_steps=50,
                rounds=3)


def _run_config(out: Path, objective: str, steps: int, batch: int, lr: float, seed: int, model_name: str = "tiny"):
    from pluralign.train.config import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, TrainConfig

    # full batch, cosine to 0, no clipping: the loss is a smooth function of a few candidate log-probs
    return RunConfig(model=ModelConfig(name=model_name, tokenizer="byte", seed=seed),
                     objective=ObjectiveConfig(name=objective, beta=BETA),
                     optim=OptimConfig(lr=lr, scheduler="cosine", max_grad_norm=None),
                     train=TrainConfig(output_dir=str(out), batch_size=batch, max_steps=steps, log_every=steps,
                                       keep_checkpoints=1, overwrite=True, progress_bar=False, seed=seed))


def sft_reference(world: World, out: Path, settings: Settings, seed: int):
    """SFT of the tiny LM on every candidate alike (near uniform on them, most mass on the
    candidates); returns (model, tokenizer, saved model folder)."""
    from pluralign.models import load_model, load_tokenizer
    from pluralign.train.offline import train

    tokenizer = load_tokenizer("byte")
    records = [PreferenceRecord(prompt=p, responses=tuple(c), ranking=tuple(range(len(c))))
               for p, c in zip(world.prompts, world.candidates)]
    result = train(_run_config(out, "sft_all", settings.sft_steps, len(records), 1e-2, seed),
                   model=load_model("tiny", tokenizer, seed=seed), tokenizer=tokenizer, records=records)
    folder = out / "model"
    result.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return result.model, tokenizer, folder


def distinct_records(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    """Identical observations (annotators dropped) merged into one record weighted by their count,
    scaled to average weight 1: the same weighted mean loss over fewer rows."""
    counts: dict[tuple, int] = {}
    for r in records:
        key = (r.prompt, r.responses, r.ranking)
        counts[key] = counts.get(key, 0) + 1
    scale = len(counts) / len(records)
    return [PreferenceRecord(prompt=p, responses=resp, ranking=rank, weight=n * scale)
            for (p, resp, rank), n in counts.items()]


def pooled_lm(sft_model, tokenizer, records, out: Path, settings: Settings, seed: int):
    """Pooled PL-DPO on the tiny LM: every record alike, annotators ignored (full batch over the
    distinct observations, weighted by their counts)."""
    from pluralign.train.offline import train

    data = distinct_records(records)
    cfg = _run_config(out, "plackett_luce", settings.mstep_steps, len(data), settings.lr, seed)
    return train(cfg, model=copy.deepcopy(sft_model), tokenizer=tokenizer, records=data).model
