"""The E-step of EM-DPO (Chidambaram et al. 2510.15716; PAPERS.md section 4.4) on sequence log-probs.

Under type k with policy pi_k, a record's likelihood is that of the M-step's objective: the DPO
pair likelihood sigma(beta h) or the Plackett-Luce likelihood of a (top-k) ranking with implicit
rewards r_k = beta (log pi_k - log pi_ref). Both objectives' per-record loss is exactly minus that
log-likelihood, so the E-step calls the objective registry instead of a second implementation:

    log l_k(o) = -loss_k(o),
    a[i, k] = log eta_k + sum_{o in D_i} w_o log l_k(o),      gamma[i, :] = softmax_k a[i, :],

in log space (w_o is the record weight, 1 for an ordinary record: a weight-2 record counts twice),
and the marginal log-likelihood sum_i logsumexp_k a[i, k]. Type weights eta = mean_i gamma[i]
are floored and renormalised so that no type dies.
"""

from __future__ import annotations

import numpy as np
import torch

from pluralign.data.tokenize import TokenizedDataset
from pluralign.lab.plackett_luce import _posterior
from pluralign.objectives import PreferenceLogps, compute_objective


def example_tensors(data: TokenizedDataset, indices=None) -> dict[str, torch.Tensor]:
    """Ranking [N, Kmax] (-1 padded), num_ranked [N], response_mask [N, Kmax] and preference [N]
    of the examples ``indices`` (default all), in that order: the non-log-prob fields of
    :class:`~pluralign.objectives.PreferenceLogps`."""
    indices = range(len(data)) if indices is None else indices
    examples = [data[i] for i in indices]
    kmax = max(len(ex.response_ids) for ex in data.examples)
    ranking = torch.full((len(examples), kmax), -1, dtype=torch.long)
    mask = torch.zeros((len(examples), kmax), dtype=torch.bool)
    for row, ex in enumerate(examples):
        ranking[row, : len(ex.ranking)] = torch.tensor(ex.ranking)
        mask[row, : len(ex.response_ids)] = True
    return {"ranking": ranking, "num_ranked": torch.tensor([len(ex.ranking) for ex in examples]),
            "response_mask": mask, "preference": torch.tensor([ex.preference for ex in examples])}


def record_scores(objective: str, beta: float, args: dict, policy: torch.Tensor, reference: torch.Tensor,
                  counts: torch.Tensor, fields: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(log-likelihood [N] of each record under one type, per-record stats such as
    ``rewards/accuracies``) from that type's and the reference's summed log-probs [N, Kmax]."""
    inputs = PreferenceLogps(policy.double(), reference.double(), counts, fields["ranking"], fields["num_ranked"],
                             fields["response_mask"], fields["preference"])
    losses, stats = compute_objective(objective, inputs, beta, args)
    return -losses.numpy(), {name: value.numpy() for name, value in stats.items()}


def floor_weights(eta, floor: float) -> np.ndarray:
    """eta floored at ``floor`` and renormalised to sum to 1."""
    eta = np.maximum(np.asarray(eta, dtype=float), floor)
    return eta / eta.sum()


def posterior(loglik: np.ndarray, annotator: np.ndarray, n_annotators: int, eta: np.ndarray,
              weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(gamma [n_annotators, K], marginal log-likelihood) from per-record log-likelihoods
    ``loglik`` [N, K] of records by annotators ``annotator`` [N] (indices), prior ``eta`` [K] and
    record weights [N]. An annotator without records keeps the prior."""
    ll = np.asarray(loglik, dtype=float)
    if weights is not None:
        ll = ll * np.asarray(weights, dtype=float)[:, None]
    return _posterior(ll, np.asarray(eta, dtype=float), np.asarray(annotator, dtype=int), n_annotators)
