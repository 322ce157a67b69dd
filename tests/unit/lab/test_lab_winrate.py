"""The RPO paper's two-order win-rate rule reproduces its four MT-Bench numbers."""

import pytest

from pluralign.lab.winrate import outcome_counts, two_order_outcome, two_order_win_rate, win_rate_from_counts


@pytest.mark.parametrize("wins, losses, ties, percent", [(113, 5, 42, 83.75), (103, 11, 46, 78.75),
                                                         (47, 22, 91, 57.81), (30, 33, 97, 49.06)])
def test_paper_numbers(wins, losses, ties, percent):
    assert round(100 * win_rate_from_counts(wins, losses, ties), 2) == percent


def test_a_win_needs_both_orders():
    assert two_order_outcome("win", "win") == "win"
    assert two_order_outcome("loss", "loss") == "loss"
    assert two_order_outcome("win", "loss") == "tie"   # the orders disagree
    assert two_order_outcome("win", "tie") == "tie"
    assert two_order_outcome("tie", "tie") == "tie"


def test_judgments_to_the_first_paper_number():
    # 113 agreed wins, 5 agreed losses, 42 ties made of every kind of disagreement
    judgments = ([("win", "win")] * 113 + [("loss", "loss")] * 5 + [("win", "loss")] * 10
                 + [("loss", "win")] * 10 + [("win", "tie")] * 8 + [("tie", "loss")] * 7 + [("tie", "tie")] * 7)
    assert outcome_counts(judgments) == (113, 5, 42)
    assert two_order_win_rate(judgments) == pytest.approx(0.8375, rel=1e-15)


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="model_second"):
        two_order_outcome("win", "draw")
    with pytest.raises(ValueError, match="judgment 1"):
        outcome_counts([("win", "win"), "win"])
    with pytest.raises(ValueError, match="zero judged"):
        win_rate_from_counts(0, 0, 0)
