"""The per-pair soft label ``preference`` = P(chosen > rejected): loaded, validated, carried to the batch."""

import json

import pytest

from pluralign.data.collate import Collator
from pluralign.data.loaders import DataError, load_preferences, save_preferences
from pluralign.data.records import PreferenceRecord, RecordError
from pluralign.data.tokenize import tokenize_records
from pluralign.models import load_tokenizer


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preference_defaults_to_one_and_is_carried_to_the_batch(tmp_path):
    rows = [{"prompt": "Q:", "chosen": " a", "rejected": " b", "preference": 0.25},
            {"prompt": "Q:", "chosen": " c", "rejected": " d"}]
    records = load_preferences(_jsonl(tmp_path / "p.jsonl", rows)).records
    assert [r.preference for r in records] == [0.25, 1.0]
    tok = load_tokenizer("byte")
    data = tokenize_records(records, tok, max_length=32, max_prompt_length=16)
    for layout in ("plain", "shared"):
        batch = Collator(tok.pad_token_id, layout)(data.examples)
        assert batch.preference.tolist() == [0.25, 1.0]
    # round trip through the ranked JSONL writer, and the same field in CSV and ranked rows
    back = load_preferences(save_preferences(records, tmp_path / "back.jsonl")).records
    assert back == records
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected,preference\nQ:, a, b,0.6\nQ:, c, d,\n")
    assert [r.preference for r in load_preferences(tmp_path / "p.csv").records] == [0.6, 1.0]
    ranked = [{"prompt": "Q:", "responses": [" a", " b"], "ranking": [1, 0], "preference": 0.9}]
    assert load_preferences(ranked).records[0].preference == 0.9


@pytest.mark.parametrize("value, expected", [(1.5, "in \\[0, 1\\]"), (-0.1, "in \\[0, 1\\]"), (float("nan"), "in \\[0, 1\\]"),
                                             ("high", "expected a number"), (True, "expected a number")])
def test_bad_preference_is_an_error_naming_file_row_and_field(tmp_path, value, expected):
    rows = [{"prompt": "Q:", "chosen": " a", "rejected": " b"},
            {"prompt": "Q:", "chosen": " a", "rejected": " b", "preference": value}]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=expected) as info:
        load_preferences(path)
    assert "bad.jsonl" in str(info.value) and "row 2" in str(info.value) and "preference" in str(info.value)
    report = load_preferences(path, on_error="skip").report
    assert report.skipped == 1 and sum(report.skipped_by_reason.values()) == 1


def test_soft_label_on_a_ranking_of_three_is_an_error():
    with pytest.raises(RecordError, match="pairs only"):
        PreferenceRecord("Q:", (" a", " b", " c"), (0, 1, 2), preference=0.5)
    assert PreferenceRecord("Q:", (" a", " b", " c"), (0, 1, 2), preference=1.0).preference == 1.0
