"""load_run_data: the opening the offline and reward-model loops share (records, checks, tokens, data report)."""

import json

import pytest

from pluralign.data.loaders import load_preferences
from pluralign.data.tokenize import tokenize_records
from pluralign.models import build_byte_tokenizer
from pluralign.train.config import ConfigError, load_config
from pluralign.train.data import load_records, load_run_data

# Row 1 is dropped by tokenization: its responses are identical once cut to max_length 8.
ROWS = [{"prompt": "p", "chosen": "same-ish a", "rejected": "same-ish b"}] + [
    {"prompt": f"q{i}", "chosen": f" x{i}", "rejected": f" y{i}", "annotator_id": f"g{i % 2}/a{i}"} for i in range(9)]


@pytest.fixture()
def setup(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [f"data.path={path}", "data.max_length=8", "data.max_prompt_length=4",
                             "data.eval_fraction=0.3", "train.seed=3"])
    out = tmp_path / "run"
    out.mkdir()
    return cfg, out, build_byte_tokenizer()


def test_records_are_checked_then_tokenized_and_reported(setup):
    cfg, out, tok = setup
    checked = []
    run = load_run_data(cfg, out, True, tokenizer=tok, check=lambda records, what: checked.append((records, what)))

    records, eval_records = load_records(cfg, tok)  # the same split, read again
    assert (len(records), len(eval_records)) == (7, 3)
    assert checked == [(records, "the training data"), (eval_records, "the evaluation data")]
    data, eval_data = (tokenize_records(part, tok, max_length=8, max_prompt_length=4) for part in (records, eval_records))
    assert run.tokenizer is tok and run.data == data and run.eval_data == eval_data
    assert len(data) + len(eval_data) == 9  # the identical-after-truncation row is counted, not kept
    assert data.num_skipped + eval_data.num_skipped == 1
    summary = load_preferences(cfg.data.path).report.summary()
    assert (out / "data_report.txt").read_text() == f"{summary}\n\ntrain: {data.report()}\n\neval: {eval_data.report()}\n"


def test_given_records_a_failed_check_and_other_processes(setup):
    cfg, out, tok = setup
    given = load_preferences(cfg.data.path).records[1:5]

    def refuse(records, what):
        raise ConfigError(f"{what}: {len(records)} records refused")

    with pytest.raises(ConfigError, match="the training data: 4 records refused"):
        load_run_data(cfg, out, True, tokenizer=tok, records=given, check=refuse)
    assert not (out / "data_report.txt").exists()  # the check runs before anything is written

    run = load_run_data(cfg, out, False, tokenizer=tok, records=given)
    assert run.eval_data is None and run.data == tokenize_records(given, tok, max_length=8, max_prompt_length=4)
    assert not (out / "data_report.txt").exists()  # only the main process writes it
    load_run_data(cfg, out, True, tokenizer=tok, records=given)
    assert (out / "data_report.txt").read_text() == f"train: {run.data.report()}\n"  # no load report: nothing loaded
