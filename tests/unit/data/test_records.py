"""PreferenceRecord: validation, ranking normalisation, implied pairs and score-to-ranking ties."""

import math

import numpy as np
import pytest

from pluralign.data.records import PreferenceRecord, RankingTieError, RecordError, TieError

RESPONSES4 = ("a", "b", "c", "d")


def test_pair_record_properties():
    record = PreferenceRecord.from_pair("Q:", " yes", " no", annotator_id="ann-1", weight=0.5)
    assert record.responses == (" yes", " no")
    assert record.ranking == (0, 1)
    assert record.num_responses == 2 and record.num_ranked == 2
    assert record.is_pair and record.is_full_ranking
    assert record.chosen == " yes"
    assert record.annotator_id == "ann-1" and record.weight == 0.5
    assert record.implied_pairs() == [(0, 1)]


def test_lists_are_stored_as_tuples_and_records_hash():
    a = PreferenceRecord("p", ["x", "y", "z"], [2, 0, 1])
    b = PreferenceRecord("p", ("x", "y", "z"), (2, 0, 1))
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.responses, tuple) and isinstance(a.ranking, tuple)


def test_numpy_inputs_are_accepted():
    record = PreferenceRecord("p", np.array(["x", "y", "z"]), np.array([1, 2, 0]))
    assert record.ranking == (1, 2, 0)
    assert all(type(i) is int for i in record.ranking)


@pytest.mark.parametrize("ranking, expected", [
    ((1,), (1, 0)),                 # K=2, length K-1
    ((2, 0), (2, 0, 1)),            # K=3, length K-1
    ((3, 1, 0), (3, 1, 0, 2)),      # K=4, length K-1
])
def test_ranking_of_length_k_minus_1_is_completed(ranking, expected):
    responses = RESPONSES4[:len(expected)]
    record = PreferenceRecord("p", responses, ranking)
    assert record.ranking == expected
    assert record.is_full_ranking and record.num_ranked == len(expected)


def test_partial_ranking_is_kept():
    record = PreferenceRecord("p", RESPONSES4, (2, 0))
    assert record.ranking == (2, 0)
    assert record.num_ranked == 2 and not record.is_full_ranking and not record.is_pair
    assert record.unranked == (1, 3)


@pytest.mark.parametrize("ranking, count", [((0, 1, 2, 3), 6), ((0,), 3), ((0, 1), 5), ((0, 1, 2), 6)])
def test_implied_pair_counts_k4(ranking, count):
    # k(k-1)/2 + k(K-k) with K = 4
    assert len(PreferenceRecord("p", RESPONSES4, ranking).implied_pairs()) == count


def test_implied_pairs_exact_lists():
    full = PreferenceRecord("p", RESPONSES4, (2, 0, 3, 1))
    assert full.implied_pairs() == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    top2 = PreferenceRecord("p", RESPONSES4, (3, 1))
    assert top2.implied_pairs() == [(3, 1), (3, 0), (3, 2), (1, 0), (1, 2)]
    top1 = PreferenceRecord("p", RESPONSES4, (2,))
    assert top1.implied_pairs() == [(2, 0), (2, 1), (2, 3)]


@pytest.mark.parametrize("kwargs, field, fragment", [
    (dict(responses=("only",), ranking=(0,)), "responses", "at least 2 responses"),
    (dict(responses=("a", ""), ranking=(0, 1)), "responses[1]", "empty string"),
    (dict(responses=("a", 3), ranking=(0, 1)), "responses[1]", "expected a string"),
    (dict(responses=("a", "b"), ranking=()), "ranking", "empty ranking"),
    (dict(responses=("a", "b"), ranking=(0, 2)), "ranking", "index 2 is out of range"),
    (dict(responses=("a", "b", "c"), ranking=(1, 1)), "ranking", "more than once"),
    (dict(responses=("a", "b"), ranking=(0, 1, 0)), "ranking", "exceeds"),
    (dict(responses=("a", "b"), ranking=(0.0, 1)), "ranking", "integer indices"),
    (dict(responses=("a", "b"), ranking=(True, 0)), "ranking", "integer indices"),
    (dict(responses=("a", "b"), ranking=(0, 1), weight=-1.0), "weight", ">= 0"),
    (dict(responses=("a", "b"), ranking=(0, 1), weight=math.nan), "weight", "finite"),
    (dict(responses=("a", "b"), ranking=(0, 1), weight="1"), "weight", "expected a number"),
    # finite as a Python float but inf as the float32 the batch holds
    (dict(responses=("a", "b"), ranking=(0, 1), weight=1e300), "weight", "float32 limit"),
    (dict(responses=("a", "b\x00"), ranking=(0, 1)), "responses[1]", "NUL character"),
    (dict(responses=("\ud83d", "b"), ranking=(0, 1)), "responses[0]", "lone surrogate"),
    (dict(responses=("a", "b"), ranking=(0, 1), annotator_id="x\x00"), "annotator_id", "NUL"),
    (dict(responses=("a", "b"), ranking=(0, 1), annotator_id=7), "annotator_id", "string"),
    (dict(responses="ab", ranking=(0, 1)), "responses", "expected a sequence"),
])
def test_invalid_records_raise_with_field(kwargs, field, fragment):
    with pytest.raises(RecordError) as info:
        PreferenceRecord("prompt", **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert f"'{field}'" in str(info.value)


def test_prompt_must_be_a_string():
    with pytest.raises(RecordError, match="prompt"):
        PreferenceRecord(None, ("a", "b"), (0, 1))


def test_weight_int_is_converted_to_float():
    record = PreferenceRecord("p", ("a", "b"), (0, 1), weight=2)
    assert record.weight == 2.0 and isinstance(record.weight, float)


def test_from_scores_without_ties_is_full_descending():
    record = PreferenceRecord.from_scores("p", RESPONSES4, [0.1, 2.5, -1.0, 0.7])
    assert record.ranking == (1, 3, 0, 2)
    assert record.is_full_ranking


@pytest.mark.parametrize("scores, expected", [
    ([3, 2, 2, 1], (0,)),           # tie in second place: only the winner is ranked
    ([3, 2, 1, 1], (0, 1)),         # tie at the bottom: top-2
    ([1, 1, 2, 3], (3, 2)),         # order follows scores, not positions
    ([5, 4, 3, 3, 3], (0, 1)),
    ([2, 1, 1], (0,)),
])
def test_from_scores_truncate_keeps_ranking_down_to_first_tie(scores, expected):
    responses = tuple("abcde"[:len(scores)])
    record = PreferenceRecord.from_scores("p", responses, scores, ties="truncate")
    assert record.ranking == expected
    assert set(record.unranked) == set(range(len(scores))) - set(expected)


def test_from_scores_truncate_tied_top_raises():
    with pytest.raises(TieError, match="best score is tied"):
        PreferenceRecord.from_scores("p", RESPONSES4, [2, 2, 1, 0], ties="truncate")
    with pytest.raises(TieError):
        PreferenceRecord.from_scores("p", ("a", "b"), [1.0, 1.0])


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_from_scores_error_and_skip_raise_on_any_tie(policy):
    with pytest.raises(TieError, match=r"responses \[2, 3\] share score 1"):
        PreferenceRecord.from_scores("p", RESPONSES4, [3, 2, 1, 1], ties=policy)
    # no tie: same result as truncate
    record = PreferenceRecord.from_scores("p", RESPONSES4, [3, 2, 1, 0], ties=policy)
    assert record.ranking == (0, 1, 2, 3)


def test_tie_error_hierarchy():
    assert RankingTieError is TieError
    assert issubclass(TieError, RecordError) and issubclass(TieError, ValueError)
    try:
        PreferenceRecord.from_scores("p", ("a", "b"), [0, 0], ties="error")
    except TieError as error:
        assert error.field == "scores" and error.reason == "tie"


@pytest.mark.parametrize("scores, fragment", [
    ([1.0, math.nan], "finite"),
    ([1.0, math.inf], "finite"),
    ([1.0, None], "expected a number"),
    ([1.0], "expected 2 scores"),
    ([1.0, True], "expected a number"),
])
def test_from_scores_bad_scores(scores, fragment):
    with pytest.raises(RecordError, match=fragment) as info:
        PreferenceRecord.from_scores("p", ("a", "b"), scores)
    assert not isinstance(info.value, TieError)
    assert info.value.field == "scores"


def test_from_scores_unknown_policy():
    with pytest.raises(ValueError, match="ties must be one of"):
        PreferenceRecord.from_scores("p", ("a", "b"), [1, 0], ties="random")
