"""Pairwise win rate with both answer orders judged (paper 2's MT-Bench scoring, PAPERS.md §3.6).

A judge compares the model's answer with a baseline's twice per question, once with the model's
answer shown first and once with it shown second (position bias cancels). The rule that
reproduces all four of the paper's numbers (113/5/42 -> 83.75%, 103/11/46 -> 78.75%,
47/22/91 -> 57.81%, 30/33/97 -> 49.06%, n = 160 = 80 questions x 2 turns each) is:

* a question is a **win** only when both orders say the model wins, a **loss** only when both say
  it loses, and a **tie** otherwise (an explicit tie in either order, or the two orders disagree);
* ``win rate = (W + T/2) / (W + L + T)``: ties count half.

Neither ``W / n`` (ties worth nothing: 70.6% for the first) nor ``W / (W + L)`` (ties dropped:
95.8%) reproduces any of the four.
"""

from __future__ import annotations

from collections.abc import Iterable

VERDICTS = ("win", "loss", "tie")


def _verdict(v, name: str) -> str:
    if v not in VERDICTS:
        raise ValueError(f"{name} must be one of {VERDICTS} (from the model's side), got {v!r}")
    return v


def two_order_outcome(model_first: str, model_second: str) -> str:
    """One question's outcome from its two judgments, each 'win', 'loss' or 'tie' for the model.

    ``model_first``: the verdict with the model's answer shown first; ``model_second``: with it
    shown second (already translated to the model's side). Win or loss only if both agree.
    """
    a = _verdict(model_first, "model_first")
    b = _verdict(model_second, "model_second")
    return a if a == b and a != "tie" else "tie"


def outcome_counts(judgments: Iterable[tuple[str, str]]) -> tuple[int, int, int]:
    """``(wins, losses, ties)`` over questions given as ``(model_first, model_second)`` verdicts."""
    counts = dict.fromkeys(VERDICTS, 0)
    for i, pair in enumerate(judgments):
        try:
            first, second = pair
        except (TypeError, ValueError):
            raise ValueError(f"judgment {i} must be a (model_first, model_second) pair, got {pair!r}") from None
        counts[two_order_outcome(first, second)] += 1
    return counts["win"], counts["loss"], counts["tie"]


def win_rate_from_counts(wins: int, losses: int, ties: int) -> float:
    """``(W + T/2) / (W + L + T)`` as a fraction in [0, 1]."""
    values = (wins, losses, ties)
    if any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"wins, losses and ties must be non-negative integers, got {values}")
    n = wins + losses + ties
    if n == 0:
        raise ValueError("win rate of zero judged questions is undefined")
    return (wins + 0.5 * ties) / n


def two_order_win_rate(judgments: Iterable[tuple[str, str]]) -> float:
    """Win rate of the model over questions judged in both orders (see the module doc)."""
    return win_rate_from_counts(*outcome_counts(judgments))
