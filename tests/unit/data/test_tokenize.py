"""tokenize_records: empty-prompt stub, degenerate examples counted, lengths; the collator's packing."""

import pytest

from pluralign.data.collate import Collator
from pluralign.data.loaders import DataError
from pluralign.data.records import PreferenceRecord
from pluralign.data.tokenize import TokenizedExample, tokenize_records
from pluralign.errors import PluralignError
from pluralign.models import build_byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()  # one id per UTF-8 byte, no BOS, EOS = 256


def test_empty_prompt_gets_the_eos_stub(tok):
    eos = tok.eos_token_id
    assert tok.bos_token_id is None
    data = tokenize_records([PreferenceRecord("", ("a", "bc"), (0, 1)),
                             PreferenceRecord("p", ("a", "b"), (1, 0))], tok)
    assert data.num_prompt_stubs == 1
    assert data[0].prompt_ids == (eos,)
    assert data[0].response_ids == ((ord("a"), eos), (ord("b"), ord("c"), eos))
    assert data[1].prompt_ids == (ord("p"),)
    assert "1 with an empty prompt given the EOS stub" in data.report()


def test_packed_row_never_predicts_a_response_from_the_previous_example(tok):
    """Two examples in one packed row; the second has an empty prompt. Its first response token
    must be predicted from its own prompt (the stub), not from the first example's last token."""
    records = [PreferenceRecord("xy", ("a", "b"), (0, 1)), PreferenceRecord("", ("c", "d"), (0, 1))]
    data = tokenize_records(records, tok)
    batch = Collator(tok.pad_token_id, "shared", max_row_tokens=100)(data.examples)
    assert batch.input_ids.shape[0] == 1  # both examples share the row
    # row: x y | a EOS | b EOS | EOS(stub) | c EOS | d EOS ; the stub sits at offset 6
    stub_offset = 6
    assert int(batch.input_ids[0, stub_offset]) == tok.eos_token_id
    first_tokens = [i for i, seq in enumerate(batch.gather_seq.tolist())
                    if seq >= 2 and (i == 0 or batch.gather_seq[i - 1] != seq)]
    assert [int(batch.gather_pos[i]) for i in first_tokens] == [stub_offset, stub_offset]
    assert [int(batch.gather_target[i]) for i in first_tokens] == [ord("c"), ord("d")]
    # the stub starts a new document (its own block in the mask), at position 0
    assert int(batch.doc_ids[0, stub_offset]) == 1 and int(batch.position_ids[0, stub_offset]) == 0


def test_collator_refuses_an_empty_prompt():
    examples = [TokenizedExample((1,), ((2,), (3,)), (0, 1)), TokenizedExample((), ((2,), (3,)), (0, 1))]
    with pytest.raises(ValueError, match=r"examples \[1\] of the batch have an empty prompt"):
        Collator(0, "shared", max_row_tokens=100)(examples)


def test_identical_after_truncation_is_skipped_and_counted(tok):
    records = [PreferenceRecord("p", ("xxxxA", "xxxxB"), (0, 1), source="f.jsonl row 1"),  # equal in 4 bytes
               PreferenceRecord("p", ("A", "B"), (0, 1), source="f.jsonl row 2")]
    data = tokenize_records(records, tok, max_length=5, max_prompt_length=1)
    assert len(data) == 1 and data.skipped_by_reason == {"identical_tokens": 1}
    assert data.problems == ["f.jsonl row 1: responses 0 and 1 are identical after truncation to "
                             "max_length; a preference needs distinct responses"]
    assert data.num_truncated == 0  # the kept example fits
    kept = tokenize_records(records, tok, max_length=6, max_prompt_length=1)
    assert len(kept) == 2 and kept.num_truncated == 1  # one more byte tells them apart


def test_long_prompt_is_cut_from_the_left_and_counted(tok):
    data = tokenize_records([PreferenceRecord("abcdefgh", ("x", "y"), (0, 1))], tok,
                            max_length=5, max_prompt_length=3)
    assert data[0].prompt_ids == tuple(map(ord, "fgh")) and data.num_truncated == 1


def test_nothing_left_and_bad_lengths_are_errors(tok):
    records = [PreferenceRecord("p", ("xxA", "xxB"), (0, 1))]
    with pytest.raises(DataError, match=r"no usable examples: all 1 records were skipped in "
                                        r"tokenization .*first: record 0: responses 0 and 1"):
        tokenize_records(records, tok, max_length=3, max_prompt_length=1)
    with pytest.raises(PluralignError, match=r"data.max_prompt_length = 4 and data.max_length = 4"):
        tokenize_records(records, tok, max_length=4, max_prompt_length=4)
    with pytest.raises(PluralignError, match=r"expected 0 < max_prompt_length"):
        tokenize_records(records, tok, max_length=4, max_prompt_length=0)
    assert len(tokenize_records([], tok)) == 0  # no records in, none out: not an error


def test_a_response_closed_by_the_template_end_token_gets_no_second_eos(tok):
    eos = tok.eos_token_id
    closed = PreferenceRecord.from_pair("p", "ab" + tok.eos_token + "\n", "c" + tok.eos_token)
    ex = tokenize_records([closed], tok, max_length=64, max_prompt_length=32).examples[0]
    assert ex.response_ids == ((97, 98, eos), (99, eos))
    # EOS inside a response, followed by more text, is content: the response still gets its own EOS
    inner = PreferenceRecord.from_pair("p", "a" + tok.eos_token + "b", "c")
    ex = tokenize_records([inner], tok, max_length=64, max_prompt_length=32).examples[0]
    assert ex.response_ids == ((97, eos, 98, eos), (99, eos))


def test_tokenization_problems_name_the_file_row(tok, tmp_path):
    import json

    from pluralign.data.loaders import load_preferences

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": "same-ish a", "rejected": "same-ish b"},
            {"prompt": "q" * 40, "chosen": "xa", "rejected": "xb"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_preferences(path).records
    assert records[1].source == "pairs.jsonl row 2" and records[1] == PreferenceRecord.from_pair(*rows[1].values())
    data = tokenize_records(records, tok, max_length=8, max_prompt_length=4)
    assert data.skipped_by_reason == {"identical_tokens": 1}
    assert data.problems[0].startswith("pairs.jsonl row 1: responses 0 and 1 are identical")
