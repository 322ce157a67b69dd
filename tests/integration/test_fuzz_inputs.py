"""Malformed data files through ``pluralign validate-data`` and a 2-step ``pluralign train``.

Every case states its exact outcome, the same for both commands:

* ``file``: the file cannot be used; both commands exit 2 with one line ``error: ...`` naming the
  file (and the row or field where there is one).
* ``row``: one bad row; validate-data exits 1 and lists it as ``<file> row <n>, field '<f>': ...``;
  training with ``data.on_error=raise`` exits 2 with that message as its one-line error; training
  with ``data.on_error=skip`` runs and its ``data_report.txt`` counts the row under its reason.
* ``skipped``: a degenerate row (no preference in it) or example; validate-data exits 1 and
  training (default ``on_error=raise``) runs, both counting it under its reason.
* ``clean``: the file is read correctly (BOM, CRLF, long prompts, empty prompts); both succeed and
  the count shown (truncated examples, prompt stubs) is checked.

Commands run in-process through ``pluralign.cli.main``; two run as real subprocesses to show that
the installed entry point prints no traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest

from pluralign.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "dpo_tiny.yaml")
GOOD = [{"prompt": "Q1:", "chosen": " yes", "rejected": " no"},
        {"prompt": "Q2:", "chosen": " up", "rejected": " down"}]
RANKED = [{"prompt": "Pick:", "responses": [" a", " b", " c"], "ranking": [0, 1, 2]},
          {"prompt": "Pick:", "responses": [" x", " y"], "ranking": [1, 0]}]
PL = ("objective.name=plackett_luce",)  # rankings train with the listwise objective
CONV_GOOD = {"prompt": [{"role": "user", "content": "Hi"}],
             "chosen": [{"role": "assistant", "content": "Hello"}],
             "rejected": [{"role": "assistant", "content": "Go"}]}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def parquet(table: dict) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(table), buffer)
    return buffer.getvalue()


@dataclass
class Case:
    name: str
    filename: str
    content: bytes | None  # None: the path does not exist; b"<dir>": a directory
    kind: str  # file | row | skipped | clean
    message: str  # file/row: the error or problem text; skipped/clean: text in validate's output
    report: str = ""  # text expected in training's data_report.txt
    overrides: tuple[str, ...] = ()


def file_case(name, filename, content, message, overrides=()):
    return Case(name, filename, content, "file", message, overrides=overrides)


def row_case(name, filename, content, message, reason, overrides=()):
    return Case(name, filename, content, "row", message, f"skipped: 1 ({reason}: 1)", overrides)


CASES = [
    # ---- the path itself
    file_case("missing path", "absent.jsonl", None, "absent.jsonl: no such file"),
    file_case("a directory", "folder.jsonl", b"<dir>", "folder.jsonl: is a directory"),
    file_case("unsupported suffix", "data.txt", jsonl(*GOOD), "data.txt: unsupported file type"),
    file_case("empty file", "empty.jsonl", b"", "empty.jsonl: no data rows found"),
    file_case("blank lines only", "blank.jsonl", b"\n  \n\r\n", "blank.jsonl: no data rows found"),
    # ---- JSONL rows
    row_case("truncated last line", "cut.jsonl", jsonl(*GOOD) + b'{"prompt": "Q3", "cho',
             "cut.jsonl row 3: invalid JSON", "invalid_json"),
    row_case("invalid UTF-8 line", "bytes.jsonl",
             jsonl(GOOD[0]) + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n'
             + jsonl(GOOD[1]), "bytes.jsonl row 2: not valid UTF-8 at byte 12", "invalid_utf8"),
    row_case("deeply nested JSON", "deep.jsonl", jsonl(*GOOD, "[" * 100000 + "]" * 100000),
             "deep.jsonl row 3: invalid JSON: nested too deeply", "invalid_json"),
    row_case("row is a list", "list.jsonl", jsonl(*GOOD, [1, 2]),
             "list.jsonl row 3: expected an object, got list", "not_an_object"),
    row_case("chosen is a number", "type.jsonl", jsonl(*GOOD, {**GOOD[0], "chosen": 3}),
             "type.jsonl row 3, field 'chosen': expected a string, got number", "wrong_type"),
    row_case("prompt is null", "null.jsonl", jsonl(*GOOD, {**GOOD[0], "prompt": None}),
             "null.jsonl row 3, field 'prompt': expected a string, got null", "wrong_type"),
    row_case("empty rejected", "emptystr.jsonl", jsonl(*GOOD, {**GOOD[0], "rejected": ""}),
             "emptystr.jsonl row 3, field 'rejected': empty string", "empty_response"),
    row_case("missing rejected", "missing.jsonl",
             jsonl(*GOOD, {"prompt": "Q", "chosen": "a", "extra": 1}),
             "missing.jsonl row 3, field 'rejected': missing", "missing_field"),
    row_case("NUL in prompt", "nul.jsonl", jsonl(*GOOD, {**GOOD[0], "prompt": "a\u0000b"}),
             "nul.jsonl row 3, field 'prompt': contains a NUL character", "bad_characters"),
    row_case("lone surrogate", "surrogate.jsonl",
             jsonl(*GOOD, '{"prompt": "Q", "chosen": "ok \\ud800", "rejected": "no"}'),
             "surrogate.jsonl row 3, field 'responses[0]': contains a lone surrogate",
             "bad_characters"),
    row_case("weight 1e300", "huge.jsonl", jsonl(*GOOD, {**GOOD[0], "weight": 1e300}),
             "huge.jsonl row 3, field 'weight': expected a finite number >= 0", "bad_weight"),
    row_case("weight Infinity", "inf.jsonl", jsonl(*GOOD, '{"prompt": "Q", "chosen": "a", '
                                                    '"rejected": "b", "weight": Infinity}'),
             "inf.jsonl row 3, field 'weight': expected a finite number >= 0", "bad_weight"),
    row_case("negative weight", "neg.jsonl", jsonl(*GOOD, {**GOOD[0], "weight": -1}),
             "neg.jsonl row 3, field 'weight': expected a finite number >= 0", "bad_weight"),
    row_case("weight is a string", "wstr.jsonl", jsonl(*GOOD, {**GOOD[0], "weight": "2"}),
             "wstr.jsonl row 3, field 'weight': expected a number, got string", "bad_weight"),
    file_case("all weights zero", "zero.jsonl",
              jsonl(*({**row, "weight": 0} for row in GOOD)), "zero.jsonl: every record has "
              "weight 0, so there is nothing to learn from; field 'weight' must be > 0"),
    row_case("NaN score", "nan.jsonl",
             jsonl(*RANKED, '{"prompt": "P", "responses": ["a", "b"], "scores": [NaN, 1]}'),
             "nan.jsonl row 3, field 'scores': score 0 is nan, expected a finite number",
             "bad_score", PL),
    row_case("inf score", "infscore.jsonl",
             jsonl(*RANKED, '{"prompt": "P", "responses": ["a", "b"], "scores": [1, -Infinity]}'),
             "infscore.jsonl row 3, field 'scores': score 1 is -inf", "bad_score", PL),
    row_case("tied best scores", "tie.jsonl",
             jsonl(*RANKED, {"prompt": "P", "responses": ["a", "b", "c"], "scores": [2, 2, 1]}),
             "tie.jsonl row 3, field 'scores': the best score is tied", "tie", PL),
    row_case("ranking index out of range", "range.jsonl",
             jsonl(*RANKED, {"prompt": "P", "responses": ["a", "b"], "ranking": [0, 2]}),
             "range.jsonl row 3, field 'ranking': index 2 is out of range", "bad_ranking", PL),
    row_case("duplicated ranking index", "dup.jsonl",
             jsonl(*RANKED, {"prompt": "P", "responses": ["a", "b", "c"], "ranking": [1, 1]}),
             "dup.jsonl row 3, field 'ranking': index 1 appears more than once", "bad_ranking", PL),
    row_case("fractional ranking index", "frac.jsonl",
             jsonl(*RANKED, {"prompt": "P", "responses": ["a", "b"], "ranking": [0.5]}),
             "frac.jsonl row 3, field 'ranking': expected integer indices", "bad_ranking", PL),
    # ---- formats
    file_case("unknown keys", "keys.jsonl", jsonl({"question": "q", "answer": "a"}),
              "keys.jsonl row 1: unrecognised row format: found keys ['answer', 'question']"),
    file_case("implicit then explicit rows", "mixed.jsonl",
              jsonl({"chosen": "H: q A: yes", "rejected": "H: q A: no"}, *GOOD),
              "mixed.jsonl row 2: row format explicit_prompt (prompt + chosen + rejected strings) "
              "differs from implicit_prompt (chosen + rejected strings without a prompt) of row 1"),
    file_case("pairs then rankings", "mixed2.jsonl", jsonl(*GOOD, *RANKED),
              "mixed2.jsonl row 3: row format ranked"),
    # ---- chat messages (rendered with the byte tokenizer's template)
    row_case("chat role not a string", "role.jsonl",
             jsonl(CONV_GOOD, {**CONV_GOOD, "chosen": [{"role": 5, "content": "x"}]}),
             "role.jsonl row 2, field 'chosen[0]': expected a message", "bad_message"),
    row_case("chat response by the user", "userrole.jsonl",
             jsonl(CONV_GOOD, {**CONV_GOOD, "rejected": [{"role": "user", "content": "x"}]}),
             "userrole.jsonl row 2, field 'rejected[0]': the last message is the response being "
             "judged and must have role 'assistant', got 'user'", "bad_role"),
    row_case("chat message without content", "nocontent.jsonl",
             jsonl(CONV_GOOD, {**CONV_GOOD, "chosen": [{"role": "assistant"}]}),
             "nocontent.jsonl row 2, field 'chosen[0]': expected a message", "bad_message"),
    # ---- degenerate examples: skipped and counted under every on_error
    Case("identical chosen and rejected", "same.jsonl", jsonl(*GOOD, {**GOOD[0], "rejected": " yes"}),
         "skipped", "same.jsonl row 3, field 'rejected': responses 0 and 1 are identical",
         "skipped: 1 (identical_responses: 1)"),
    Case("ranking with identical responses", "samerank.jsonl",
         jsonl(*RANKED, {"prompt": "P", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}),
         "skipped", "samerank.jsonl row 3, field 'responses': responses 0 and 2 are identical",
         "skipped: 1 (identical_responses: 1)", PL),
    file_case("every pair identical", "allsame.jsonl",
              jsonl(*({**row, "rejected": row["chosen"]} for row in GOOD)),
              "allsame.jsonl: no usable records: all 2 rows were skipped (identical_responses: 2)"),
    Case("identical after truncation", "cut_same.jsonl",
         jsonl(*GOOD, {"prompt": "Q", "chosen": " " + "x" * 40 + "A", "rejected": " " + "x" * 40 + "B"}),
         "skipped", "cut_same.jsonl row 3: responses 0 and 1 are identical after truncation",
         "1 skipped (identical_tokens: 1)", ("data.max_length=24", "data.max_prompt_length=8")),
    Case("prompt longer than max_length", "longprompt.jsonl",
         jsonl(*GOOD, {"prompt": "P" * 300, "chosen": " a", "rejected": " b"}),
         "clean", "3 tokenized examples; 1 truncated", "3 tokenized examples; 1 truncated",
         ("data.max_length=64", "data.max_prompt_length=16")),
    Case("empty prompt, tokenizer without BOS", "noprompt.jsonl",
         jsonl(*GOOD, {"prompt": "", "chosen": "a", "rejected": "b"}), "clean",
         "1 with an empty prompt given the EOS stub", "1 with an empty prompt given the EOS stub"),
    Case("implicit split with no shared prefix", "noshared.jsonl",
         jsonl({"chosen": "H: q A: yes", "rejected": "H: q A: no"},
               {"chosen": "yes", "rejected": "no"}), "clean",
         "1 with an empty prompt given the EOS stub", "1 with an empty prompt given the EOS stub"),
    Case("BOM and CRLF", "bom.jsonl", b"\xef\xbb\xbf" + jsonl(*GOOD).replace(b"\n", b"\r\n"),
         "clean", "records loaded: 2", "records loaded: 2"),
    # ---- JSON
    file_case("truncated JSON", "cut.json", json.dumps(GOOD).encode()[:-10],
              "cut.json: invalid JSON at line 1"),
    file_case("JSON object instead of a list", "obj.json", json.dumps(GOOD[0]).encode(),
              "obj.json: expected a JSON list of objects"),
    row_case("JSON list with a string", "strrow.json", json.dumps(GOOD + ["text"]).encode(),
             "strrow.json row 3: expected an object, got string", "not_an_object"),
    # ---- CSV
    row_case("CSV row with a missing cell", "short.csv",
             b"prompt,chosen,rejected\r\nQ1,yes,no\r\nQ2,up,down\r\nQ3,only\r\n",
             "short.csv row 3: fewer cells than header columns", "malformed_csv"),
    row_case("CSV cell that is not JSON", "cell.csv",
             b'prompt,responses,ranking\nP,"[""a"", ""b""]","[0, 1]"\nP,not json,"[0]"\n',
             "cell.csv row 2, field 'responses': expected a JSON list in the CSV cell",
             "bad_csv_cell"),
    file_case("CSV with invalid UTF-8", "bytes.csv",
              b"prompt,chosen,rejected\nQ1,yes,no\nQ2,\xff,no\n",
              "bytes.csv: not valid UTF-8 at line 3, byte 36"),
    Case("CSV with BOM and CRLF", "bom.csv", b"\xef\xbb\xbfprompt,chosen,rejected\r\nQ1,yes,no\r\n"
         b"Q2,up,down\r\n", "clean", "records loaded: 2", "records loaded: 2"),
    # ---- Parquet
    row_case("Parquet null cell", "null.parquet",
             parquet({"prompt": ["Q1", "Q2"], "chosen": ["a", "b"], "rejected": ["c", None]}),
             "null.parquet row 2, field 'rejected': expected a string, got null", "wrong_type"),
    file_case("Parquet column of numbers", "num.parquet",
              parquet({"prompt": ["Q1", "Q2"], "chosen": [1, 2], "rejected": ["c", "d"]}),
              "num.parquet: no usable records: all 2 rows were skipped (wrong_type: 2)",
              ("data.on_error=skip",)),
    file_case("Parquet truncated", "cut.parquet",
              parquet({"prompt": ["Q"], "chosen": ["a"], "rejected": ["b"]})[:-30],
              "cut.parquet: cannot read file"),
    # ---- gzip
    file_case("gzip truncated", "cut.jsonl.gz", gzip.compress(jsonl(*GOOD) * 50)[:-20],
              "cut.jsonl.gz: cannot read file (truncated compressed file?)"),
    file_case("not gzip", "plain.jsonl.gz", jsonl(*GOOD), "plain.jsonl.gz: cannot read file"),
    row_case("gzip with a bad row", "bad.jsonl.gz", gzip.compress(jsonl(*GOOD, {"prompt": 1,
             "chosen": "a", "rejected": "b"})),
             "bad.jsonl.gz row 3, field 'prompt': expected a string, got number", "wrong_type"),
]


def write_case(case: Case, folder: Path) -> Path:
    path = folder / case.filename
    if case.content == b"<dir>":
        path.mkdir()
    elif case.content is not None:
        path.write_bytes(case.content)
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def train_argv(path: Path, run: Path, case: Case, *extra: str) -> list[str]:
    return ["train", RECIPE, f"data.path={path}", "train.max_steps=2", "train.batch_size=1",
            "data.eval_fraction=0", "train.eval_every=null", "train.save_every=null",
            "train.progress_bar=false", f"train.output_dir={run}", *case.overrides, *extra]


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], (message, lines[0])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_named_or_counted(case: Case, tmp_path):
    path = write_case(case, tmp_path)
    code, out, err = run_cli(["validate-data", str(path), "--recipe", RECIPE, *case.overrides])
    run = tmp_path / "run"
    if case.kind == "file":
        assert_one_line_error(code, err, case.message)
        code, out, err = run_cli(train_argv(path, run, case))
        assert_one_line_error(code, err, case.message)
        assert not (run / "checkpoints").exists()  # stopped before any training
        return
    expected_validate = {"row": 1, "skipped": 1, "clean": 0}[case.kind]
    assert code == expected_validate, out + err
    assert case.message in out, out
    malformed_note = "note: with data.on_error=raise a run stops at the first of these 1 malformed"
    assert (malformed_note in out) == (case.kind == "row"), out
    if case.kind == "row":
        code, _, err = run_cli(train_argv(path, run, case))
        assert_one_line_error(code, err, case.message)
        # error: <file> row <n>[, field ...]: the row is named exactly as validate-data names it
        assert err.startswith(f"error: {case.message.split(':')[0]}")
        code, out, err = run_cli(train_argv(path, tmp_path / "run_skip", case, "data.on_error=skip"))
        run = tmp_path / "run_skip"
    else:
        code, out, err = run_cli(train_argv(path, run, case))
    assert code == 0, err
    assert out.startswith("done: 2 steps"), out
    assert case.report in (run / "data_report.txt").read_text()


def test_enough_kinds_of_bad_input():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    suffixes = {Path(case.filename).name.split(".", 1)[1] for case in CASES}
    assert {"jsonl", "json", "csv", "parquet", "jsonl.gz"} <= suffixes


@pytest.mark.parametrize("command", ["validate-data", "train"])
def test_installed_command_prints_one_line_without_traceback(command, tmp_path):
    path = write_case(CASES[CASES.index(next(c for c in CASES if c.name == "weight 1e300"))],
                      tmp_path)
    argv = (["validate-data", str(path), "--recipe", RECIPE, "data.on_error=raise"]
            if command == "validate-data" else train_argv(path, tmp_path / "run", CASES[0]))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "pluralign.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert "Traceback" not in proc.stderr
    if command == "validate-data":  # a skipped row: listed, exit 1
        assert proc.returncode == 1
        assert "huge.jsonl row 3, field 'weight'" in proc.stdout
    else:
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: huge.jsonl row 3, field 'weight': expected a finite "
                               "number >= 0"), proc.stderr
        # -v adds the traceback for the same error
        code, _, err = run_cli(["-v", *argv])
        assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1] == last


def test_data_path_on_a_world_recipe_replaces_the_world(tmp_path):
    from pluralign.train.config import load_config

    cfg = load_config(RECIPE, [f"data.path={tmp_path / 'x.jsonl'}"])
    assert cfg.data.path == str(tmp_path / "x.jsonl") and cfg.data.world is None
    # the world stays when it is overridden too, or when data.path is not
    cfg = load_config(RECIPE, ["data.path=x.jsonl", "data.world.seed=3"])
    assert cfg.data.world.seed == 3
    assert load_config(RECIPE, ["train.max_steps=2"]).data.world.name == "default"
