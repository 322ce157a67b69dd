"""validate_file statistics and the validate-data command (output and exit codes)."""

import argparse
import json

import pytest

from pluralign.data.loaders import DataError
from pluralign.data.records import PreferenceRecord
from pluralign.data.validate import (
    add_validate_parser,
    compute_statistics,
    validate_command,
    validate_file,
)

ROWS = [
    {"prompt": "abcd", "responses": ["x", "yy", "zzz"], "ranking": [0, 1, 2], "annotator_id": "a"},
    {"prompt": "abcd", "responses": ["x", "yy", "zzz"], "ranking": [0, 1, 2], "annotator_id": "a"},
    {"prompt": "ab", "responses": ["same", "same"], "ranking": [0], "annotator_id": 2},
    {"prompt": "", "responses": ["p", "q", "r", "s"], "scores": [1, 2, 3, 4]},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_compute_statistics_values():
    records = [PreferenceRecord("abcd", ("x", "yy", "zzz"), (0, 1, 2), "a"),
               PreferenceRecord("abcd", ("x", "yy", "zzz"), (0, 1, 2), "a"),
               PreferenceRecord("ab", ("same", "same"), (0, 1), "2"),
               PreferenceRecord("", ("p", "q", "r", "s"), (3, 2, 1, 0))]
    stats = compute_statistics(records)
    assert stats.num_responses_distribution == {2: 1, 3: 2, 4: 1}
    assert stats.prompt_chars_mean == pytest.approx((4 + 4 + 2 + 0) / 4)
    assert stats.prompt_chars_max == 4
    # responses: 1+2+3, 1+2+3, 4+4, 1+1+1+1 = 24 characters over 12 responses
    assert stats.response_chars_mean == pytest.approx(24 / 12)
    assert stats.response_chars_max == 4
    assert stats.num_annotators == 2
    assert stats.num_duplicate_records == 1
    assert stats.num_records_with_identical_responses == 1
    assert compute_statistics([]).num_annotators == 0


def test_validate_file_counts_and_statistics(tmp_path):
    path = write_jsonl(tmp_path / "ranked.jsonl", ROWS + ['{"broken'])
    report = validate_file(path)
    # row 3 holds two identical responses: skipped as degenerate
    assert report.records_loaded == 3 and report.skipped == 2
    assert report.skipped_by_reason == {"invalid_json": 1, "identical_responses": 1}
    assert report.statistics.num_duplicate_records == 1
    assert report.statistics.num_responses_distribution == {3: 2, 4: 1}
    summary = report.summary()
    assert "responses per record: K=3: 2, K=4: 1" in summary
    assert ("ranked.jsonl row 3, field 'rejected': responses 0 and 1 are identical ('same')"
            in summary)
    assert "ranked.jsonl row 5: invalid JSON" in summary


def test_validate_file_tie_policy(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "scores": [2, 1, 1]}]
    path = write_jsonl(tmp_path / "ties.jsonl", rows)
    assert validate_file(path, ties="truncate").num_partial == 1
    # nothing left to train on is an error for the file, naming the reason and the first problem
    with pytest.raises(DataError, match=r"ties.jsonl: no usable records: all 1 rows were skipped "
                                        r"\(tie: 1\); first: ties.jsonl row 1, field 'scores'"):
        validate_file(path, ties="error")


def parse(argv):
    parser = argparse.ArgumentParser(prog="pluralign")
    add_validate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_parser_defaults_and_func(tmp_path):
    args = parse(["validate-data", str(tmp_path / "x.jsonl")])
    assert args.func is validate_command
    # None: taken from --recipe, else from a run's defaults
    assert (args.path, args.ties, args.max_problems, args.tokenizer, args.recipe) == (
        str(tmp_path / "x.jsonl"), None, 20, None, None)
    assert parse(["validate-data", "f.csv", "--ties", "skip", "--max-problems", "3"]).ties == "skip"
    with pytest.raises(SystemExit):
        parse(["validate-data", "f.csv", "--ties", "average"])


def test_command_exit_codes_and_output(tmp_path, capsys):
    clean_rows = [row for row in ROWS if len(set(row["responses"])) == len(row["responses"])]
    clean = write_jsonl(tmp_path / "clean.jsonl", clean_rows)
    assert validate_command(parse(["validate-data", str(clean)])) == 0
    out = capsys.readouterr().out
    assert "records loaded: 3" in out and "skipped: 0" in out and "duplicate records: 1" in out
    assert ("tokenization (tokenizer tiny, max_length 1024, max_prompt_length 512): 3 tokenized "
            "examples; 0 truncated; 1 with an empty prompt given the EOS stub; 0 skipped" in out)

    bad_rows = clean_rows + [{"prompt": "p", "responses": ["a", "b"], "ranking": [5]}] * 3
    dirty = write_jsonl(tmp_path / "dirty.jsonl", bad_rows)
    assert validate_command(parse(["validate-data", str(dirty), "--max-problems", "1"])) == 1
    out = capsys.readouterr().out
    assert "skipped: 3 (bad_ranking: 3)" in out
    assert "problems (first 1 of 3):" in out
    assert out.count("field 'ranking': index 5 is out of range") == 1

    # args without the optional attributes (built by another CLI) work too
    assert validate_command(argparse.Namespace(path=str(clean))) == 0
    capsys.readouterr()


def test_command_file_error_exit_code(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert validate_command(parse(["validate-data", str(empty)])) == 2
    assert "no data rows" in capsys.readouterr().err


def test_command_renders_conversational_rows_with_a_local_tokenizer(tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="Ā")
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tokenizer.save_pretrained(tmp_path / "tok")
    user = {"role": "user", "content": "Hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Hello"}],
             "rejected": [user, {"role": "assistant", "content": "Bye"}]}]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "plain")
    argv = ["validate-data", str(path), "--tokenizer", str(tmp_path / "plain")]
    assert validate_command(parse(argv)) == 2
    assert "needs a tokenizer with a chat template" in capsys.readouterr().err
    argv = ["validate-data", str(path), "--tokenizer", str(tmp_path / "tok")]
    assert validate_command(parse(argv)) == 0
    out = capsys.readouterr().out
    assert "row format: conversational_implicit_prompt" in out
    # prompt "<|user|>Hi\n<|assistant|>" has 24 characters; responses "Hello\n", "Bye\n"
    assert "prompt characters: mean 24.0, max 24" in out
    assert "response characters: mean 5.0, max 6" in out


def test_command_tokenizes_like_training(tmp_path, capsys):
    """Built-in tokenizer names work offline; lengths come from flags, else the recipe."""
    rows = [{"prompt": "abcdefgh", "chosen": " yes", "rejected": " no"},
            {"prompt": "", "chosen": " yyyyA", "rejected": " yyyyB"}]
    path = write_jsonl(tmp_path / "tok.jsonl", rows)
    argv = ["validate-data", str(path), "--tokenizer", "byte", "--max-length", "6",
            "--max-prompt-length", "2"]
    assert validate_command(parse(argv)) == 1
    out = capsys.readouterr().out
    assert ("tokenization (tokenizer byte, max_length 6, max_prompt_length 2): 1 tokenized "
            "examples; 1 truncated; 0 with an empty prompt given the EOS stub; 1 skipped "
            "(identical_tokens: 1)") in out
    assert "tok.jsonl row 2: responses 0 and 1 are identical after truncation" in out
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {max_length: 64, max_prompt_length: 4}\n")
    assert validate_command(parse(["validate-data", str(path), "--recipe", str(recipe)])) == 0
    assert ("(tokenizer tiny, max_length 64, max_prompt_length 4): 2 tokenized examples; "
            "0 truncated; 1 with an empty prompt") in capsys.readouterr().out
    argv = ["validate-data", str(path), "--recipe", str(recipe), "data.max_lenght=3"]
    assert validate_command(parse(argv)) == 2
    assert "unknown config key(s) ['data.max_lenght']" in capsys.readouterr().err
