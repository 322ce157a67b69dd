"""Objective registry: name -> function of :class:`PreferenceLogps`.

A new loss is one pure function (pairwise.py, plackett_luce.py, ...), one adapter line here and
one test. The trainer looks the name up; it never branches on it.

Every registered objective returns per-example losses [B] (before example weights) and a dict of
per-example detached statistics named as in TRL (``rewards/chosen`` ...). ``beta`` is the KL weight
for every objective (for IPO it is tau, see :func:`pluralign.objectives.pairwise.ipo_loss`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from pluralign.objectives import pairwise
from pluralign.objectives.divergence import reference_kl
from pluralign.objectives.plackett_luce import plackett_luce_loss


@dataclass
class PreferenceLogps:
    """Summed log-probs of the K responses of B examples, with their ranking.

    ``preference`` [B] is each pair's soft label P(ranked first > ranked second) (None: all 1;
    rankings of 3+ responses always carry 1, see :class:`pluralign.data.records.PreferenceRecord`).
    """

    policy: torch.Tensor  # [B, K]
    reference: torch.Tensor  # [B, K]
    num_tokens: torch.Tensor  # [B, K]
    ranking: torch.Tensor  # [B, K] long, -1 padded
    num_ranked: torch.Tensor  # [B]
    response_mask: torch.Tensor  # [B, K] bool
    preference: torch.Tensor | None = None  # [B] float in [0, 1]

    def pair(self, mean: bool = False):
        """(policy_chosen, policy_rejected, ref_chosen, ref_rejected) for pair data (K == 2)."""
        if self.policy.shape[1] != 2 or not bool(self.response_mask.all()):
            raise ValueError(
                "this objective takes pairs (K = 2 responses per prompt); the batch has up to "
                f"{self.policy.shape[1]} responses: use 'plackett_luce' for rankings"
            )
        chosen, rejected = self.ranking[:, 0:1], self.ranking[:, 1:2]
        pol, ref = self.policy, self.reference
        if mean:
            pol, ref = pol / self.num_tokens.clamp_min(1), ref / self.num_tokens.clamp_min(1)
        take = lambda t, idx: t.gather(1, idx).squeeze(1)  # noqa: E731
        return take(pol, chosen), take(pol, rejected), take(ref, chosen), take(ref, rejected)

    def chosen_num_tokens(self) -> torch.Tensor:
        return self.num_tokens.gather(1, self.ranking[:, 0:1]).squeeze(1)

    def rejected_num_tokens(self) -> torch.Tensor:
        return self.num_tokens.gather(1, self.ranking[:, 1:2]).squeeze(1)


def preference_stats(inputs: PreferenceLogps, beta: float) -> dict[str, torch.Tensor]:
    """Per-example statistics with TRL's names, plus ranking accuracy for K > 2.

    rewards/* are implicit rewards beta * (log pi - log pi_ref) (summed log-probs); "chosen" is the
    top-ranked response and "rejected" the mean over the others; rewards/accuracies is 1 when the
    chosen reward beats every other response's; rewards/ranking_accuracy is the fraction of the
    ranking's implied pairs (winner above loser) that the implicit rewards order correctly;
    kl/reference is :func:`pluralign.objectives.divergence.reference_kl`, the KL of policy and
    reference over the example's responses (for reference-free objectives the loop passes zeros
    as the reference, so it is then the KL to uniform over the responses).
    """
    with torch.no_grad():
        r = beta * (inputs.policy - inputs.reference)
        mask = inputs.response_mask
        top = inputs.ranking[:, 0:1]
        is_top = torch.zeros_like(mask).scatter_(1, top, True)
        others = mask & ~is_top
        n_others = others.sum(1).clamp_min(1)
        r_top = r.gather(1, top).squeeze(1)
        r_rest = (r * others).sum(1) / n_others
        beats_all = torch.where(others, r_top[:, None] > r, torch.ones_like(mask)).all(1)
        logp_top = inputs.policy.gather(1, top).squeeze(1)
        logp_rest = (inputs.policy * others).sum(1) / n_others
        return {
            "rewards/chosen": r_top,
            "rewards/rejected": r_rest,
            "rewards/margins": r_top - r_rest,
            "rewards/accuracies": beats_all.float(),
            "rewards/ranking_accuracy": _ranking_accuracy(r, inputs),
            "logps/chosen": logp_top,
            "logps/rejected": logp_rest,
            "kl/reference": reference_kl(inputs.policy, inputs.reference, mask),
        }


def _ranking_accuracy(r: torch.Tensor, inputs: PreferenceLogps) -> torch.Tensor:
    B, K = r.shape
    pos = torch.full((B, K), K, dtype=torch.long, device=r.device)  # unranked responses sit below all ranked
    rows = torch.arange(B, device=r.device)
    for j in range(K):
        idx = inputs.ranking[:, j]
        ok = idx >= 0
        pos[rows[ok], idx[ok]] = j
    valid = inputs.response_mask
    implied = (pos[:, :, None] < pos[:, None, :]) & valid[:, :, None] & valid[:, None, :] & (pos[:, :, None] < K)
    correct = implied & (r[:, :, None] > r[:, None, :])
    return correct.sum((1, 2)).float() / implied.sum((1, 2)).clamp_min(1).float()


def _dpo(x: PreferenceLogps, beta: float, label_smoothing: float = 0.0):
    return pairwise.dpo_loss(*x.pair(), beta=beta, label_smoothing=label_smoothing, preference=x.preference)


def _ipo(x: PreferenceLogps, beta: float):
    return pairwise.ipo_loss(*x.pair(), tau=beta, preference=x.preference)


def _ipo_trl(x: PreferenceLogps, beta: float):
    return pairwise.ipo_loss(*x.pair(mean=True), tau=beta, preference=x.preference)


def _rpo(x: PreferenceLogps, beta: float, eta: float, label_smoothing: float = 0.0):
    return pairwise.rpo_loss(*x.pair(), beta=beta, eta=eta, label_smoothing=label_smoothing, preference=x.preference)


def _rpo_mean(x: PreferenceLogps, beta: float, nll_coef: float, label_smoothing: float = 0.0):
    return pairwise.rpo_mean_loss(*x.pair(), x.chosen_num_tokens(), beta=beta, nll_coef=nll_coef,
                                  label_smoothing=label_smoothing, preference=x.preference,
                                  rejected_num_tokens=x.rejected_num_tokens())


def _reverse_pairs(x: PreferenceLogps) -> torch.Tensor:
    """The ranking with each two-response row's order reversed (other rows unchanged)."""
    swapped = ranking = x.ranking
    if ranking.shape[1] >= 2:
        swapped = ranking.clone()
        swapped[:, [0, 1]] = ranking[:, [1, 0]]
    is_pair = (x.response_mask.sum(1) == 2)[:, None]
    return torch.where(is_pair, swapped, ranking)


def _plackett_luce(x: PreferenceLogps, beta: float):
    """PL-DPO; a pair's soft label p mixes the loss of its order and of the reversed order,
    p l(w > l) + (1 - p) l(l > w) (DPO's soft label, since K = 2 is DPO); rankings carry p = 1."""
    loss = plackett_luce_loss(x.policy, x.reference, x.ranking, x.num_ranked, x.response_mask, beta=beta)
    if x.preference is None or bool((x.preference == 1).all()):
        return loss
    reverse = plackett_luce_loss(x.policy, x.reference, _reverse_pairs(x), x.num_ranked,
                                 x.response_mask, beta=beta)
    return pairwise.winner_mix(loss, reverse, x.preference)


def _sft(x: PreferenceLogps, beta: float):
    """Token-mean NLL of the top-ranked response (supervised fine-tuning on chosen responses).

    With a pair's soft label p it is the expectation over the winner,
    -p log pi(y_w)/|y_w| - (1 - p) log pi(y_l)/|y_l|; rankings carry p = 1 (top response only)."""
    mean = x.policy / x.num_tokens.clamp_min(1)
    chosen = mean.gather(1, x.ranking[:, 0:1]).squeeze(1)
    if x.preference is None or x.policy.shape[1] < 2:
        return -chosen
    second = mean.gather(1, x.ranking[:, 1:2].clamp_min(0)).squeeze(1)  # -1 (top-1 of K > 2) has p = 1
    return -pairwise.winner_mix(chosen, second, x.preference)


def _sft_all(x: PreferenceLogps, beta: float):
    """Mean over the example's responses of their summed NLL: fits the model to every candidate alike."""
    mask = x.response_mask
    return -(x.policy * mask).sum(1) / mask.sum(1).clamp_min(1)


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "sft": _sft,  # token-mean NLL of the chosen response; no reference
    "sft_all": _sft_all,  # summed NLL averaged over all K responses; no reference
    "dpo": _dpo,  # sigmoid DPO, summed log-probs
    "ipo": _ipo,  # IPO, paper convention: summed log-probs, beta = tau
    "ipo_trl": _ipo_trl,  # IPO, TRL convention: per-token mean log-probs, beta = tau
    "rpo": _rpo,  # DPO + eta*beta*summed NLL(chosen)       (Liu et al., main text)
    "rpo_mean": _rpo_mean,  # DPO + nll_coef*mean-token NLL(chosen) (Liu et al., App. F)
    "plackett_luce": _plackett_luce,  # listwise DPO for full / top-k rankings; K = 2 is DPO
}


# Objectives that never read reference log-probs: the trainer then loads no reference at all.
REFERENCE_FREE = frozenset({"sft", "sft_all"})


def objective_params(name: str) -> dict[str, inspect.Parameter]:
    """The extra keyword parameters (beyond the inputs and beta) that objective ``name`` takes."""
    fn = get_objective(name)
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: p for p in params if p.name != "beta"}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def check_objective_args(name: str, args: dict) -> None:
    """Unknown or missing objective arguments are errors that name them."""
    params = objective_params(name)
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"objective {name!r} has no argument(s) {unknown}; it takes {sorted(params)}")
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in args]
    if missing:
        raise ValueError(f"objective {name!r} needs argument(s) {missing} in objective_args")


def compute_objective(name: str, inputs: PreferenceLogps, beta: float, args: dict | None = None):
    """(per-example losses [B], per-example detached stats) for objective ``name``."""
    args = dict(args or {})
    check_objective_args(name, args)
    losses = get_objective(name)(inputs, beta=beta, **args)
    return losses, preference_stats(inputs, beta)
