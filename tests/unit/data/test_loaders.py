"""load_preferences / save_preferences: every source kind, every row format, errors and real data."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from pluralign.data.loaders import (
    DataError,
    load_preferences,
    save_preferences,
    split_implicit_prompt,
)
from pluralign.data.records import PreferenceRecord

# The real HH-RLHF test split lives in the shared data folder next to the repository (../shared);
# a clone without it skips the test that reads it.
HH_FILE = (Path(__file__).resolve().parents[3].parent / "shared" / "data"
           / "hh-rlhf-harmless-base-test.jsonl.gz")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

EXPLICIT_ROWS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Grass is", "chosen": " green.", "rejected": " blue.", "annotator_id": 7,
     "weight": 0.5},
]
EXPLICIT_RECORDS = [
    PreferenceRecord("The sky is", (" blue.", " green."), (0, 1)),
    PreferenceRecord("Grass is", (" green.", " blue."), (0, 1), annotator_id="7", weight=0.5),
]
RANKED_ROWS = [
    {"prompt": "Pick:", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1],
     "annotator_id": "u1"},
    {"prompt": "Pick:", "responses": ["a", "b", "c", "d"], "ranking": [3], "annotator_id": "u2"},
    {"prompt": "Pick:", "responses": ["a", "b", "c"], "ranking": [1, 2]},
    {"prompt": "Rate:", "responses": ["x", "y", "z"], "scores": [0.5, 2.0, 1.0], "weight": 2},
]
RANKED_RECORDS = [
    PreferenceRecord("Pick:", ("a", "b", "c", "d"), (2, 0, 3, 1), "u1"),
    PreferenceRecord("Pick:", ("a", "b", "c", "d"), (3,), "u2"),
    PreferenceRecord("Pick:", ("a", "b", "c"), (1, 2, 0)),
    PreferenceRecord("Rate:", ("x", "y", "z"), (1, 2, 0), weight=2.0),
]


@pytest.fixture(scope="module")
def chat_tokenizer():
    """Byte-level BPE over the 256 byte symbols, no merges, with a small chat template; offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def write_csv(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:  # list cells are written as JSON text (the documented CSV encoding)
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


# ------------------------------------------------------------------------------ source kinds
@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "json-data", "parquet", "csv",
                                  "dataset", "list"])
@pytest.mark.parametrize("rows, expected, row_format", [
    (EXPLICIT_ROWS, EXPLICIT_RECORDS, "explicit_prompt"),
    (RANKED_ROWS, RANKED_RECORDS, "ranked"),
])
def test_every_source_kind_loads_the_same_records(tmp_path, kind, rows, expected, row_format):
    if kind in ("parquet", "dataset"):
        # columnar sources take their columns from the first row: absent fields become nulls
        columns = list(dict.fromkeys(key for row in rows for key in row))
        rows = [{key: row.get(key) for key in columns} for row in rows]
    if kind == "jsonl":
        source = write_jsonl(tmp_path / "data.jsonl", rows)
    elif kind == "jsonl.gz":
        source = write_jsonl(tmp_path / "data.jsonl.gz", rows, opener=gzip.open)
    elif kind == "json":
        source = tmp_path / "data.json"
        source.write_text(json.dumps(rows))
    elif kind == "json-data":
        source = tmp_path / "data.json"
        source.write_text(json.dumps({"data": rows}))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
    elif kind == "csv":
        source = write_csv(tmp_path / "data.csv", rows)
    elif kind == "dataset":
        import datasets

        source = datasets.Dataset.from_list(rows)
    else:
        source = rows
    result = load_preferences(source)
    assert result.records == expected
    report = result.report
    assert report.format == row_format
    assert report.source_kind == kind.split("-")[0]
    assert report.rows_read == len(rows) and report.records_loaded == len(rows)
    assert report.skipped == 0 and report.problems == []
    assert [r.source for r in result.records] == [f"{report.source} row {n}" for n in range(1, len(rows) + 1)]


def test_report_counts_record_kinds():
    report = load_preferences(RANKED_ROWS).report
    assert (report.num_pairs, report.num_rankings, report.num_partial) == (0, 3, 1)
    assert report.num_with_annotator == 2
    summary = report.summary()
    assert "records loaded: 4" in summary and "partial rankings: 1" in summary


def test_csv_empty_optional_cells_mean_absent(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected,annotator_id,weight\n'
                    'Q,"a, with comma","b\nmultiline",,\n'
                    'Q2,x,y,ann,0.25\n', encoding="utf-8")
    records = load_preferences(path).records
    assert records == [PreferenceRecord("Q", ("a, with comma", "b\nmultiline"), (0, 1)),
                       PreferenceRecord("Q2", ("x", "y"), (0, 1), "ann", 0.25)]


def test_max_records_stops_early(tmp_path):
    rows = [{"prompt": "p", "chosen": f"c{i}", "rejected": "r"} for i in range(10)]
    result = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows), max_records=3)
    assert [r.responses[0] for r in result.records] == ["c0", "c1", "c2"]
    assert result.report.rows_read == 3


def test_blank_jsonl_lines_are_not_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(EXPLICIT_ROWS[0]) + "\n\n" + json.dumps(EXPLICIT_ROWS[1]) + "\n\n")
    result = load_preferences(path)
    assert result.records == EXPLICIT_RECORDS and result.report.rows_read == 2


# ----------------------------------------------------------------------- implicit prompt (HH)
def test_split_implicit_prompt_space_rule():
    # divergence right after a space: the space moves to the responses
    assert split_implicit_prompt("The sky is blue.", "The sky is green.") == (
        "The sky is", " blue.", " green.")
    # divergence inside a word: no step back
    assert split_implicit_prompt("Say: cat", "Say: car") == ("Say: ca", "t", "r")
    # one a prefix of the other: TRL's loop stops one element short of the shorter text
    assert split_implicit_prompt("abc", "abcd") == ("ab", "c", "cd")
    # no shared prefix: empty prompt (no wrap-around to the last character)
    assert split_implicit_prompt("x y ", "z") == ("", "x y ", "z")
    with pytest.raises(ValueError, match="identical"):
        split_implicit_prompt("same", "same")


def test_split_implicit_prompt_messages():
    user = {"role": "user", "content": "hi"}
    chosen = [user, {"role": "assistant", "content": "hello"}]
    rejected = [user, {"role": "assistant", "content": "go away"}]
    assert split_implicit_prompt(chosen, rejected) == ([user], chosen[1:], rejected[1:])


def test_implicit_prompt_rows():
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: Hello there.",
             "rejected": "\n\nHuman: hi\n\nAssistant: Go away."},
            {"chosen": "same", "rejected": "same"}]
    # identical responses carry no preference: skipped and counted under either on_error
    for on_error in ("raise", "skip"):
        result = load_preferences(rows, on_error=on_error)
        assert result.report.format == "implicit_prompt"
        assert result.records == [PreferenceRecord(
            "\n\nHuman: hi\n\nAssistant:", (" Hello there.", " Go away."), (0, 1))]
        assert result.report.skipped_by_reason == {"identical_responses": 1}
        assert result.report.problems == [
            "list row 2, field 'rejected': chosen and rejected are identical"]


@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"real HH-RLHF data not present at {HH_FILE}")
def test_real_hh_rlhf_file():
    result = load_preferences(HH_FILE, on_error="skip")
    report = result.report
    assert report.rows_read == 2312
    assert report.records_loaded + report.skipped == 2312
    assert report.records_loaded == 2312  # measured: every row of this split loads
    assert report.format == "implicit_prompt" and report.source_kind == "jsonl.gz"
    first = result.records[0]
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert first.prompt.endswith("\n\nAssistant:")
    assert first.responses[0].startswith(" No, sorry!")
    assert all(response.startswith(" ") for response in first.responses)
    # concatenation gives back the original texts
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        row = json.loads(handle.readline())
    assert first.prompt + first.responses[0] == row["chosen"]
    assert first.prompt + first.responses[1] == row["rejected"]


# ------------------------------------------------------------------------------ conversational
def test_conversational_explicit(chat_tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "Sky colour?"}],
             "chosen": [{"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "assistant", "content": "Green."}],
             "annotator_id": 3}]
    result = load_preferences(rows, tokenizer=chat_tokenizer)
    assert result.report.format == "conversational"
    assert result.records == [PreferenceRecord(
        "<|user|>Sky colour?\n<|assistant|>", ("Blue.\n", "Green.\n"), (0, 1), "3")]


def test_conversational_implicit(chat_tokenizer):
    user = {"role": "user", "content": "Hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Hello!"}],
             "rejected": [user, {"role": "assistant", "content": "Bye."}]},
            {"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
             "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "x"}]},
            {"chosen": [user, {"role": "assistant", "content": "Hello!"}], "rejected": [user]}]
    result = load_preferences(rows, tokenizer=chat_tokenizer, on_error="skip")
    assert result.report.format == "conversational_implicit_prompt"
    assert result.records == [PreferenceRecord(
        "<|user|>Hi\n<|assistant|>", ("Hello!\n", "Bye.\n"), (0, 1))]
    assert result.report.problems == [
        "list row 2, field 'chosen': chosen and rejected share no leading messages, so there is "
        "no prompt",
        "list row 3, field 'rejected[0]': the last message is the response being judged and must "
        "have role 'assistant', got 'user'"]


def test_conversational_csv_cells_hold_json(tmp_path, chat_tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "Q"}],
             "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]}]
    result = load_preferences(write_csv(tmp_path / "conv.csv", rows), tokenizer=chat_tokenizer)
    assert result.records == [PreferenceRecord("<|user|>Q\n<|assistant|>", ("good\n", "bad\n"),
                                               (0, 1))]


def test_conversational_needs_a_chat_template(chat_tokenizer):
    rows = [{"chosen": [{"role": "user", "content": "Hi"}], "rejected": [{"role": "user",
                                                                           "content": "Yo"}]}]
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        load_preferences(rows)
    without_template = type("NoTemplate", (), {"chat_template": None})()
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        load_preferences(rows, tokenizer=without_template, on_error="skip")


def test_conversational_template_not_prefix_stable(chat_tokenizer):
    class DroppingTemplate:  # renders the generation prompt differently from a finished turn
        chat_template = "custom"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt=False):
            text = "".join(f"[{m['role']}]{m['content']}" for m in messages)
            return text + ("[assistant-start]" if add_generation_prompt else "")

    rows = [{"prompt": [{"role": "user", "content": "Q"}],
             "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    with pytest.raises(DataError, match=r"list row 1, field 'chosen': the chat template's "
                                        r"rendering of prompt \+ response does not start"):
        load_preferences(rows, tokenizer=DroppingTemplate())


# ------------------------------------------------------------------------------ ties via loader
TIE_ROWS = [
    {"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [4, 3, 3, 1]},
    {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 1, 0]},
    {"prompt": "p", "responses": ["a", "b", "c"], "scores": [3, 2, 1]},
]


def test_ties_truncate():
    with pytest.raises(DataError, match=r"list row 2, field 'scores': the best score is tied"):
        load_preferences(TIE_ROWS, ties="truncate")
    result = load_preferences(TIE_ROWS, ties="truncate", on_error="skip")
    assert [r.ranking for r in result.records] == [(0,), (0, 1, 2)]
    assert result.report.skipped_by_reason == {"tie": 1}
    assert result.report.num_partial == 1 and result.report.num_rankings == 1


def test_ties_error():
    with pytest.raises(DataError, match=r"list row 1, field 'scores': tied scores"):
        load_preferences(TIE_ROWS, ties="error")
    result = load_preferences(TIE_ROWS, ties="error", on_error="skip")
    assert [r.ranking for r in result.records] == [(0, 1, 2)]
    assert result.report.skipped_by_reason == {"tie": 2}


def test_ties_skip_never_raises():
    result = load_preferences(TIE_ROWS, ties="skip", on_error="raise")
    assert [r.ranking for r in result.records] == [(0, 1, 2)]
    assert result.report.skipped == 2 and result.report.skipped_by_reason == {"tie": 2}
    assert result.report.problems[0].startswith("list row 1, field 'scores': tied scores")


# ------------------------------------------------------------------------------ malformed rows
BAD_ROWS = [
    (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}), None, None),
    (json.dumps({"prompt": "p", "chosen": "a", "rejected": None}),
     "data.jsonl row 2, field 'rejected': expected a string, got null", "wrong_type"),
    (json.dumps({"prompt": "p", "chosen": "a"}),
     "data.jsonl row 3, field 'rejected': missing", "missing_field"),
    (json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}),
     "data.jsonl row 4, field 'chosen': empty string", "empty_response"),
    ('{"prompt": "p", "chosen": "a", ', "data.jsonl row 5: invalid JSON", "invalid_json"),
    (json.dumps(["not", "an", "object"]), "data.jsonl row 6: expected an object, got list",
     "not_an_object"),
    (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "weight": -2}),
     "data.jsonl row 7, field 'weight': expected a finite number >= 0 (at most 3.403e+38, the "
     "float32 limit), got -2.0", "bad_weight"),
    (json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "annotator_id": True}),
     "data.jsonl row 8, field 'annotator_id': expected a string or integer", "wrong_type"),
    (json.dumps({"prompt": 5, "chosen": "a", "rejected": "b"}),
     "data.jsonl row 9, field 'prompt': expected a string, got number", "wrong_type"),
]


def test_malformed_rows_raise_at_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [line for line, _, _ in BAD_ROWS])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert str(info.value) == BAD_ROWS[1][1]
    assert (info.value.row, info.value.field, info.value.reason) == (2, "rejected", "wrong_type")


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [line for line, _, _ in BAD_ROWS])
    result = load_preferences(path, on_error="skip")
    report = result.report
    assert report.records_loaded == 1 and report.rows_read == len(BAD_ROWS)
    assert report.skipped == len(BAD_ROWS) - 1
    assert report.skipped_by_reason == {"wrong_type": 3, "missing_field": 1, "empty_response": 1,
                                        "invalid_json": 1, "not_an_object": 1, "bad_weight": 1}
    assert len(report.problems) == len(BAD_ROWS) - 1
    for message, (_, expected, _) in zip(report.problems, BAD_ROWS[1:]):
        assert message.startswith(expected), (message, expected)
    summary = report.summary()
    assert "skipped: 8" in summary and "data.jsonl row 5: invalid JSON" in summary


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 3]},
     "field 'ranking': index 3 is out of range for 3 responses"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 1]},
     "field 'ranking': index 1 appears more than once"),
    ({"prompt": "p", "responses": ["a", "", "c"], "ranking": [0]},
     "field 'responses[1]': empty string"),
    ({"prompt": "p", "responses": ["a", 2], "ranking": [0]},
     "field 'responses[1]': expected a string, got number"),
    ({"prompt": "p", "responses": "ab", "ranking": [0]},
     "field 'responses': expected a list of strings, got string"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]},
     "field 'responses': need at least 2 responses"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0, float("nan")]},
     "field 'scores': score 1 is nan, expected a finite number"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0]},
     "field 'scores': expected 2 scores"),
    ({"prompt": "p", "responses": ["a", "b"]},
     "field 'ranking': missing (a ranked row needs 'ranking' or 'scores')"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0], "scores": [1, 0]},
     "field 'ranking': give either 'ranking' or 'scores', not both"),
])
def test_malformed_ranked_rows(row, message):
    good = {"prompt": "p", "responses": ["a", "b"], "ranking": [1]}
    with pytest.raises(DataError) as info:
        load_preferences([good, row])
    assert str(info.value).startswith("list row 2, " + message)
    result = load_preferences([good, row], on_error="skip")
    assert result.records == [PreferenceRecord("p", ("a", "b"), (1, 0))]
    assert result.report.skipped == 1


def test_nan_score_in_jsonl_file(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "scores": [NaN, 1.0]}\n')
    with pytest.raises(DataError, match=r"scores.jsonl row 1, field 'scores': score 0 is nan"):
        load_preferences(path)


def test_format_mismatch_inside_a_data_set(chat_tokenizer):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": [{"role": "user", "content": "q"}],
             "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    with pytest.raises(DataError, match=r"list row 2: row format conversational \(prompt \+ chosen "
                       r"\+ rejected message lists\) differs from explicit_prompt \(prompt \+ "
                       r"chosen \+ rejected strings\) of row 1; a file must use one format"):
        load_preferences(rows, tokenizer=chat_tokenizer, on_error="skip")


def test_csv_bad_cells(tmp_path):
    path = tmp_path / "ranked.csv"
    path.write_text('prompt,responses,ranking,weight\n'
                    'p,"[""a"", ""b""]","[1]",\n'
                    'p,not json,"[0]",\n'
                    'p,"[""a"", ""b""]","[0]",heavy\n'
                    'p,"[""a"", ""b""]"\n', encoding="utf-8")
    result = load_preferences(path, on_error="skip")
    assert result.records == [PreferenceRecord("p", ("a", "b"), (1, 0))]
    assert result.report.problems[0].startswith(
        "ranked.csv row 2, field 'responses': expected a JSON list in the CSV cell")
    assert result.report.problems[1] == "ranked.csv row 3, field 'weight': expected a number, got 'heavy'"
    assert result.report.problems[2] == "ranked.csv row 4: fewer cells than header columns"


# ------------------------------------------------------------------------------ file-level errors
def test_unknown_format_names_keys_and_expected_formats():
    with pytest.raises(DataError, match=r"found keys \['question', 'text'\]; expected .*ranked"):
        load_preferences([{"text": "x", "question": "y"}], on_error="skip")


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.jsonl", "", "no data rows"),
    ("blank.jsonl", "\n\n", "no data rows"),
    ("empty.json", "[]", "no data rows"),
    ("broken.json", '[{"prompt": ', "invalid JSON at line 1"),
    ("scalar.json", "3", "expected a JSON list of objects"),
    ("empty.csv", "", "no data rows"),
    ("bad.parquet", "not parquet", "cannot read file"),
    ("data.txt", "x", "unsupported file type"),
])
def test_file_errors(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        load_preferences(path, on_error="skip")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        load_preferences(EXPLICIT_ROWS, on_error="ignore")
    with pytest.raises(ValueError, match="ties"):
        load_preferences(EXPLICIT_ROWS, ties="average")
    with pytest.raises(ValueError, match="max_records"):
        load_preferences(EXPLICIT_ROWS, max_records=0)
    with pytest.raises(TypeError, match="source must be"):
        load_preferences(42)


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("name", ["out/ranked.jsonl", "ranked.jsonl.gz"])
def test_save_load_round_trip(tmp_path, name):
    records = EXPLICIT_RECORDS + RANKED_RECORDS + [
        PreferenceRecord('Quote "this"\n', ("ünïcode ✓", "tab\there"), (1, 0), "ann", 0.1)]
    path = save_preferences(records, tmp_path / name)
    result = load_preferences(path)
    assert result.records == records
    assert result.report.format == "ranked"


def test_save_rejects_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl"):
        save_preferences(EXPLICIT_RECORDS, tmp_path / "out.csv")


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("prompt,chosen,rejected\nq,a,b\n", encoding="utf-8-sig")
    assert load_preferences(path).records == [PreferenceRecord("q", ("a", "b"), (0, 1))]


# ------------------------------------------------------------------- format per row, degenerate
def test_a_later_prompt_field_is_never_silently_ignored():
    # the first row has no prompt (implicit); a later row's prompt would be dropped if the format
    # were decided once: a file must use one format, and the error names both rows
    rows = [{"chosen": "Q: a? A: yes", "rejected": "Q: a? A: no"},
            {"chosen": "Q: b? A: yes", "rejected": "Q: b? A: no"},
            {"prompt": "Q: c?", "chosen": " yes", "rejected": " no"}]
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=r"list row 3: row format explicit_prompt .* differs "
                                            r"from implicit_prompt .* of row 1"):
            load_preferences(rows, on_error=on_error)


def test_a_row_matching_no_format_is_named_by_its_missing_field():
    rows = [EXPLICIT_ROWS[0], {"prompt": "p", "chosen": "a"}]
    with pytest.raises(DataError, match=r"list row 2, field 'rejected': missing"):
        load_preferences(rows)


def test_identical_responses_are_skipped_under_raise():
    rows = [RANKED_ROWS[0], {"prompt": "p", "responses": ["a", "b", "a"], "ranking": [1]}]
    result = load_preferences(rows)
    assert len(result.records) == 1 and result.row_numbers == [1]
    assert result.report.skipped_by_reason == {"identical_responses": 1}
    assert result.report.problems == ["list row 2, field 'responses': responses 0 and 2 are "
                                      "identical ('a'); a preference needs distinct responses"]


def test_no_usable_records_and_zero_weights_are_errors():
    same = [{"prompt": "p", "chosen": "a", "rejected": "a"}] * 2
    with pytest.raises(DataError, match=r"list: no usable records: all 2 rows were skipped "
                                        r"\(identical_responses: 2\); first: list row 1"):
        load_preferences(same)
    assert load_preferences(same, allow_empty=True).records == []
    zero = [{**row, "weight": 0} for row in EXPLICIT_ROWS]
    with pytest.raises(DataError, match=r"every record has weight 0"):
        load_preferences(zero)
    assert len(load_preferences([zero[0], EXPLICIT_ROWS[1]]).records) == 2  # some weight > 0


def test_strings_with_nul_or_lone_surrogates_name_the_row(tmp_path):
    path = tmp_path / "chars.jsonl"
    path.write_text(json.dumps(EXPLICIT_ROWS[0]) + "\n"
                    + '{"prompt": "p", "chosen": "a\\u0000", "rejected": "b"}\n'
                    + '{"prompt": "\\udc80", "chosen": "a", "rejected": "b"}\n')
    result = load_preferences(path, on_error="skip")
    assert result.report.skipped_by_reason == {"bad_characters": 2}
    assert result.report.problems == [
        "chars.jsonl row 2, field 'responses[0]': contains a NUL character '\\x00' at character 1",
        "chars.jsonl row 3, field 'prompt': contains a lone surrogate (invalid Unicode) '\\udc80' "
        "at character 0"]


def test_invalid_utf8_bom_crlf_and_paths(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps(EXPLICIT_ROWS[0]).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + b'{"prompt": "\xc3"}\r\n' + good + b"\r\n")
    result = load_preferences(path, on_error="skip")
    assert result.records == [EXPLICIT_RECORDS[0]] * 2  # BOM and CR are not part of any field
    assert result.report.problems == ["mixed.jsonl row 2: not valid UTF-8 at byte 12 of the line: "
                                      "invalid continuation byte"]
    with pytest.raises(DataError, match=r"is a directory; expected a data file"):
        load_preferences(tmp_path)
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        load_preferences(tmp_path / "nope.jsonl")


def test_every_parser_names_its_record_by_file_row(tmp_path, chat_tokenizer):
    """``record.source`` is the row's ``"FILE row N"`` (its JSONL line: blank lines and skipped rows
    count), set by each format's parser, and is not part of equality."""
    user = {"role": "user", "content": "Hi"}
    cases = [  # (rows, load options, what the format's parser is)
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], {}, "explicit"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], {"chat_template": True}, "explicit as a chat"),
        ([{"chosen": "p a", "rejected": "p b"}], {}, "implicit"),
        ([{"prompt": [user], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}], {}, "conversational"),
        ([{"chosen": [user, {"role": "assistant", "content": "a"}],
           "rejected": [user, {"role": "assistant", "content": "b"}]}], {}, "conversational, implicit"),
        ([{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0]}], {}, "ranked"),
        ([{"prompt": "p", "responses": ["a", "b", "c"], "scores": [1.0, 3.0, 2.0]}], {}, "scored"),
    ]
    for rows, options, what in cases:
        bad = {**rows[0], "weight": "heavy"}  # a skipped row before the good one
        path = tmp_path / "d.jsonl"
        path.write_text("\n" + json.dumps(bad) + "\n\n" + json.dumps(rows[0]) + "\n")
        result = load_preferences(path, tokenizer=chat_tokenizer, on_error="skip", **options)
        assert result.report.skipped_by_reason == {"bad_weight": 1}, what
        (record,) = result.records
        assert record.source == "d.jsonl row 4", what
        assert result.row_numbers == [4], what
        assert record == load_preferences(rows, tokenizer=chat_tokenizer, **options).records[0], what
    csv_rows = [{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}] * 2
    result = load_preferences(write_csv(tmp_path / "r.csv", csv_rows))
    assert [r.source for r in result.records] == ["r.csv row 1", "r.csv row 2"]
