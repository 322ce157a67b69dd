"""Where a round's responses come from, behind one interface the loop (:mod:`.rounds`) reads.

A source turns the policy at the start of round t into that round's :class:`RoundData` (drawn
responses, ranked groups, the snapshot log-probs the reference is built from), gives the loop the
table it trains on with the round's geometric reference per row (:class:`RoundView`), and tells the
monitor the state to record (a candidate distribution per prompt) and the preference matrices the
stability criteria read.

* :class:`CandidateSource`: each prompt's fixed candidate set; a sampler picks candidates and
  the loss reads the per-prompt rows of one :class:`~.candidates.CandidateTable`.
* :class:`~.freetext.FreeTextSource`: generated text; one row per labelled group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pluralign.online.candidates import CandidateTable, ResponseTable, renormalised
from pluralign.online.monitor import PreferenceCounts
from pluralign.online.problem import draw_labels
from pluralign.online.reference import geometric_reference
from pluralign.online.samplers import SamplingContext


@dataclass
class RoundData:
    """Everything round ``round`` trains on, stored in ``online/round-NNNNNN.json``.

    Candidates: ``logp[x]`` is log pi_t of prompt x's candidates; ``rankings`` index candidates.
    Free text: ``texts[x]`` are the responses drawn for prompt x, ``rankings`` index them, and
    ``logp[g]`` / ``logp_ref[g]`` are log pi_t / log pi_ref of group g's responses in ranked order;
    ``probe_logp[x]`` is log pi_t of probe prompt x's fixed responses (the monitor's state).
    """

    round: int
    logp: list[np.ndarray]
    prompts: np.ndarray  # [N] prompt index of each ranked group
    rankings: np.ndarray  # [N, m] response indices, best first
    sources: np.ndarray  # [X * n] source code of every draw
    texts: list[list[str]] | None = None
    logp_ref: list[np.ndarray] | None = None
    probe_logp: list[np.ndarray] | None = None
    stats: dict = field(default_factory=dict)  # per-round draw statistics for the monitor row

    def save(self, path: Path) -> None:
        arrays = {k: None if v is None else [a.tolist() for a in v]
                  for k, v in (("logp", self.logp), ("logp_ref", self.logp_ref), ("probe_logp", self.probe_logp))}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"round": self.round, **arrays, "prompts": self.prompts.tolist(),
                                   "rankings": self.rankings.tolist(), "sources": self.sources.tolist(),
                                   "texts": self.texts, "stats": self.stats}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "RoundData":
        d = json.loads(path.read_text())
        arrays = {k: None if d.get(k) is None else [np.array(v, dtype=float) for v in d[k]]
                  for k in ("logp", "logp_ref", "probe_logp")}
        return cls(d["round"], arrays["logp"], np.array(d["prompts"], dtype=np.int64),
                   np.array(d["rankings"], dtype=np.int64), np.array(d["sources"], dtype=np.int64),
                   texts=d.get("texts"), logp_ref=arrays["logp_ref"], probe_logp=arrays["probe_logp"],
                   stats=d.get("stats") or {})

    @property
    def num_groups(self) -> int:
        return len(self.prompts)


@dataclass
class RoundView:
    """What the loss reads in one round: the table it scores the policy on, the round's reference
    per table row (padded [rows, K_max]), and for each labelled group its row and the columns of its
    responses best first."""

    table: ResponseTable
    reference: torch.Tensor
    rows: np.ndarray  # [N]
    columns: np.ndarray  # [N, m]


def padded(values: list[np.ndarray], device) -> torch.Tensor:
    out = torch.zeros(len(values), max(v.size for v in values), dtype=torch.float32)
    for x, v in enumerate(values):
        out[x, : v.size] = torch.as_tensor(v, dtype=torch.float32)
    return out.to(device)


def mixed_reference(logp_t: list[np.ndarray], logp_ref: list[np.ndarray], alpha: float) -> list[np.ndarray]:
    return [geometric_reference(torch.as_tensor(a), torch.as_tensor(b), alpha).numpy() for a, b in zip(logp_t, logp_ref)]


class CandidateSource:
    """Fixed candidate sets: round t samples candidate indices with ``sampler`` from the snapshot's
    distributions, labels them with ``labeler.matrix(x)``; the monitor's P_hat counts the labels."""

    def __init__(self, cfg, table: CandidateTable, sampler, labeler, logp_ref: list[np.ndarray]):
        self.cfg, self.table, self.sampler, self.labeler, self.logp_ref = cfg, table, sampler, labeler, logp_ref
        o = cfg.online
        self.pi_0 = [renormalised(v) if o.initial == "policy" else np.full(v.size, 1.0 / v.size) for v in logp_ref]
        self.counts = PreferenceCounts(table.sizes)

    def draw(self, r: int, scorer, device) -> RoundData:
        """Sample and label round r's groups (depends only on the seed, r, the snapshot and counts)."""
        o = self.cfg.online
        logp = self.table.snapshot(scorer, device)
        rng = np.random.default_rng([self.cfg.train.seed, r])
        ctx = SamplingContext([renormalised(v) for v in logp], self.pi_0,
                              [self.counts.p_hat(x) for x in range(len(logp))])
        prompts, rankings, sources = [], [], []
        for x in range(len(logp)):
            idx, src = self.sampler.draw(x, o.responses_per_prompt, ctx, rng)
            ranked, _ = draw_labels(self.labeler, x, idx.reshape(-1, o.group_size), rng)
            prompts.append(np.full(ranked.shape[0], x))
            rankings.append(ranked)
            sources.append(src)
        rankings = np.concatenate(rankings)
        stats = {"online/identical_pairs": float(np.mean(rankings[:, 0] == rankings[:, 1]))}
        return RoundData(r, logp, np.concatenate(prompts), rankings, np.concatenate(sources), stats=stats)

    def final(self, r: int, scorer, device) -> RoundData:
        m = self.cfg.online.group_size
        return RoundData(r, self.table.snapshot(scorer, device), np.zeros(0, dtype=np.int64),
                         np.zeros((0, m), dtype=np.int64), np.zeros(0, dtype=np.int64))

    def view(self, data: RoundData, device) -> RoundView:
        ref = padded(mixed_reference(data.logp, self.logp_ref, self.cfg.online.alpha), device)
        return RoundView(self.table, ref, data.prompts, data.rankings)

    def observe(self, data: RoundData) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """(monitor state, P_hat per prompt, whether any label was counted) after adding data's labels."""
        for x in range(len(self.table)):
            self.counts.add(x, data.rankings[data.prompts == x])
        return ([renormalised(v) for v in data.logp], [self.counts.p_hat(x) for x in range(len(self.table))],
                self.counts.labelled)
