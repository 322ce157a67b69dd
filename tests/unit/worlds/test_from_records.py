"""worlds.from_records: a world from preference records and annotator types given as rewards on text."""

from pathlib import Path

import numpy as np
import pytest

from pluralign.data.loaders import load_preferences
from pluralign.data.records import PreferenceRecord
from pluralign.worlds import evaluate_policy, from_records, length_reward, refusal_reward
from pluralign.worlds.from_records import RecordsWorldError

HH_FILE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

RECORDS = [
    PreferenceRecord("Q1", ("a b c", "a", "no"), (0, 1, 2), annotator_id="u1"),
    PreferenceRecord("Q2", ("I cannot help.", "Sure, here it is"), (1, 0)),
    PreferenceRecord("Q1", ("a", "x y"), (1, 0)),  # adds one candidate to Q1
]


def first_char_reward(prompts, completions, **columns):
    return [float(ord(c[0])) for c in completions]


def test_prompts_candidates_and_rewards_exact():
    world = from_records(RECORDS, {"long": length_reward(per=1.0), "polite": refusal_reward(sign=-1)},
                         group_weights=[0.75, 0.25], scale=2.0)
    assert world.prompts == ["Q1", "Q2"]
    assert world.candidates == [["a b c", "a", "no", "x y"], ["I cannot help.", "Sure, here it is"]]
    assert world.group_names == ["long", "polite"] and world.minority_group == 1
    # words: 3, 1, 1, 2 (times scale 2); refusals: none for Q1, the first candidate of Q2
    np.testing.assert_array_equal(world.rewards[0], [[6.0, 2.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(world.rewards[1], [[6.0, 8.0], [-2.0, 0.0]])
    # the world's Bradley-Terry preference of group "long" for "a b c" over "a" is sigmoid(6 - 2)
    assert world.group_preference_matrix(0, 0)[0, 1] == pytest.approx(1 / (1 + np.exp(-4.0)), rel=1e-12)
    assert world.record_indices(RECORDS[2]) == (0, (3, 1))


def test_a_list_of_named_functions_and_uniform_weights():
    world = from_records(RECORDS, [first_char_reward, length_reward(unit="chars", sign=-1, per=1.0)], max_prompts=1)
    assert world.group_names == ["first_char_reward", "brevity_chars"]
    np.testing.assert_array_equal(world.group_weights, [0.5, 0.5])
    np.testing.assert_array_equal(world.rewards[0], [[97, 97, 110, 120], [-5, -1, -2, -3]])


def test_same_candidates_mode_names_the_inconsistent_record():
    with pytest.raises(RecordsWorldError, match=r"record 2: field responses differs from record 0's .*'x y'"):
        from_records(RECORDS, {"long": length_reward()}, candidates="same")
    same = [RECORDS[0], PreferenceRecord("Q1", ("no", "a b c", "a"), (0,))]
    assert from_records(same, {"long": length_reward()}, candidates="same").candidates == [["a b c", "a", "no"]]


@pytest.mark.parametrize("records, types, kwargs, message", [
    ([PreferenceRecord("Q", ("a", "b", "a"), (0,))], {"t": length_reward()}, {},
     r"record 0: field responses\[2\] repeats responses\[0\]"),
    ([{"prompt": "Q"}], {"t": length_reward()}, {}, r"record 0: expected a PreferenceRecord"),
    (RECORDS, {"t": lambda p, c: [1.0]}, {}, r"type 't' on the prompt of record 0: expected 4 rewards"),
    (RECORDS, {"t": lambda p, c: [1.0] * len(c) if p[0] == "Q1" else [1.0, float("nan")]}, {},
     r"type 't' on the prompt of record 1: non-finite reward nan for candidate 1"),
    (RECORDS, {"t": length_reward(), "u": length_reward()}, {"group_weights": [1.0]}, r"group_weights: expected 2"),
    (RECORDS, {}, {}, r"at least one annotator type"),
    ([], {"t": length_reward()}, {}, r"at least one record"),
])
def test_errors_name_record_field_or_type(records, types, kwargs, message):
    with pytest.raises(RecordsWorldError, match=message):
        from_records(records, types, **kwargs)


@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"real HH-RLHF data not present at {HH_FILE}")
def test_hh_rlhf_records_make_a_world_that_samples_and_scores():
    records = load_preferences(HH_FILE, max_records=8).records
    world = from_records(records, {"brief": length_reward(sign=-1), "no_refusal": refusal_reward(sign=-1)},
                         group_weights=[0.7, 0.3])
    assert world.n_prompts == len({r.prompt for r in records})
    for x, prompt in enumerate(world.prompts):
        recs = [r for r in records if r.prompt == prompt]
        assert set(world.candidates[x]) == {y for r in recs for y in r.responses}
        for k, y in enumerate(world.candidates[x]):  # each reward recomputed from the text itself
            assert world.rewards[x][0, k] == pytest.approx(-len(y.split()) / 10.0)
            refuses = any(p in y.lower().replace("\u2019", "'") for p in ("i can't", "i cannot", "i don't think i can",
                                                                         "i'm sorry", "i won't", "i'm not able"))
            assert world.rewards[x][1, k] == (-1.0 if refuses else 0.0)
    assert world.rewards[2][1].tolist() == [0.0, -1.0]  # "... I don't think I can do this for you ..."
    rows = world.sample_rankings(20, seed=0, n_per_annotator=2)
    assert {r.annotator_id.split("/")[0] for r in rows} <= {"brief", "no_refusal"}
    assert all(world.record_indices(r)[0] < world.n_prompts for r in rows)
    # the minority's own top choice scores zero regret for it, exactly
    best = [np.eye(world.n_candidates(x))[np.argmax(world.rewards[x][1])] for x in range(world.n_prompts)]
    assert evaluate_policy(world, best)["mean"]["regret"]["no_refusal"] == 0.0
