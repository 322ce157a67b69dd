"""Load preference data from files and in-memory datasets into :class:`PreferenceRecord` lists.

Sources: ``.jsonl`` / ``.jsonl.gz`` (one object per line), ``.json`` / ``.json.gz`` (a list of
objects or ``{"data": [...]}``), ``.parquet``, ``.csv`` / ``.csv.gz``, a ``datasets.Dataset``-like
object (iterable of dicts with ``column_names``) or a plain list of dicts.

Row formats, detected for every row from its keys; a file must use one format, so a row whose
format differs from the first row's is an error naming both rows (a file that mixes rows with and
without ``prompt`` would otherwise be read two ways):

* ``explicit_prompt`` (TRL standard preference): ``{"prompt": str, "chosen": str, "rejected": str}``.
* ``implicit_prompt`` (TRL, HH-RLHF): ``{"chosen": str, "rejected": str}``; the prompt is their shared
  prefix, split by :func:`split_implicit_prompt` exactly as TRL's ``extract_prompt`` does.
* ``conversational`` / ``conversational_implicit_prompt`` (TRL): the same keys holding lists of
  ``{"role", "content"}`` messages, rendered to text with ``tokenizer.apply_chat_template``; roles
  are non-empty strings and the last message of ``chosen`` and of ``rejected`` is the
  ``assistant``'s (it is the response being judged).
* ``ranked``: ``{"prompt": str, "responses": [str, ...], "ranking": [int, ...]}`` or with
  ``"scores": [float, ...]`` (higher is better) instead of ``"ranking"``.

Every format accepts optional ``"annotator_id"`` (string, or integer converted to a string),
``"weight"`` (number, default 1.0) and ``"preference"`` (P(chosen > rejected) in [0, 1], default 1.0;
pairs only). Other keys are ignored.

CSV encoding: one column per field; ``responses``, ``ranking`` and ``scores`` cells hold JSON lists
(``["a", "b"]``, ``[1, 0]``); in conversational files ``prompt``/``chosen``/``rejected`` cells hold
JSON lists of messages (detected when the first row's ``chosen`` cell is such a list); ``weight`` is
a number; an empty ``annotator_id``, ``weight`` or ``preference`` cell means absent.

Errors. A bad row produces ``"<file> row <n>, field '<field>': <what is wrong>"`` (row numbers are
1-based data rows; for JSONL they are line numbers). ``on_error="raise"`` raises :class:`DataError`
at the first bad row; ``on_error="skip"`` skips it and counts it by reason in the report, keeping the
first 20 messages. Degenerate rows, which carry no preference (two identical responses, reason
``identical_responses``; tied scores under ``ties="skip"``, reason ``tie``), are always skipped and
counted, whatever ``on_error`` says. An unreadable file, an unknown or mixed row format, an empty
source, a load where every row was skipped, and weights that are all 0 are always a
:class:`DataError`.
"""

from __future__ import annotations

from pluralign.errors import PluralignError
import csv
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.data.records import TIE_POLICIES, PreferenceRecord, RecordError

MAX_PROBLEMS = 20

FORMAT_EXPLICIT = "explicit_prompt"
FORMAT_IMPLICIT = "implicit_prompt"
FORMAT_CONVERSATIONAL = "conversational"
FORMAT_CONVERSATIONAL_IMPLICIT = "conversational_implicit_prompt"
FORMAT_RANKED = "ranked"

# Reasons that mean "no preference signal" rather than "malformed": skipped under every on_error.
DEGENERATE_REASONS = ("identical_responses",)
_FORMAT_DESCRIPTIONS = {
    FORMAT_EXPLICIT: "prompt + chosen + rejected strings",
    FORMAT_IMPLICIT: "chosen + rejected strings without a prompt",
    FORMAT_CONVERSATIONAL: "prompt + chosen + rejected message lists",
    FORMAT_CONVERSATIONAL_IMPLICIT: "chosen + rejected message lists without a prompt",
    FORMAT_RANKED: "prompt + responses + ranking or scores",
}

_EXPECTED_FORMATS = (
    "{'prompt', 'chosen', 'rejected'} (explicit prompt), {'chosen', 'rejected'} (implicit prompt), "
    "either of those with lists of {'role', 'content'} messages (conversational), or "
    "{'prompt', 'responses', 'ranking' | 'scores'} (ranked)"
)


class DataError(PluralignError):
    """Preference data cannot be loaded: a bad row (under ``on_error="raise"``) or a bad source."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.source, self.row, self.field, self.reason = source, row, field, reason


@dataclass
class LoadReport:
    """What a load did: counts of rows, records by kind, skips by reason and the first problems.

    ``num_pairs + num_rankings + num_partial == records_loaded``: pairs have K = 2, rankings are full
    rankings with K >= 3, partial are top-k rankings with k < K. ``skipped`` equals the sum of
    ``skipped_by_reason``; ``problems`` holds at most the first 20 messages.
    ``statistics`` and ``tokenization`` (a :class:`pluralign.data.tokenize.TokenizedDataset`) are
    filled by :func:`pluralign.data.validate.validate_file`.
    """

    source: str
    source_kind: str
    format: str | None = None
    rows_read: int = 0
    records_loaded: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    num_pairs: int = 0
    num_rankings: int = 0
    num_partial: int = 0
    num_with_annotator: int = 0
    problems: list[str] = field(default_factory=list)
    statistics: Any = None
    tokenization: Any = None
    tokenization_settings: str = ""

    def summary(self, max_problems: int = MAX_PROBLEMS) -> str:
        """A human-readable multi-line summary (listing at most ``max_problems`` problems)."""
        lines = [
            f"source: {self.source} ({self.source_kind}); row format: {self.format or 'unknown'}",
            f"rows read: {self.rows_read}",
            f"records loaded: {self.records_loaded} (pairs: {self.num_pairs}, full rankings: "
            f"{self.num_rankings}, partial rankings: {self.num_partial}; with annotator id: "
            f"{self.num_with_annotator})",
        ]
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_by_reason.items()))
        lines.append(f"skipped: {self.skipped}" + (f" ({reasons})" if reasons else ""))
        shown = self.problems[:max(0, max_problems)]
        if shown:
            lines.append(f"problems (first {len(shown)} of {self.skipped}):")
            lines.extend(f"  {message}" for message in shown)
        tokenized = self.tokenization
        if tokenized is not None:
            lines.append(f"tokenization ({self.tokenization_settings}): {tokenized.report()}")
            shown = tokenized.problems[:max(0, max_problems)]
            if shown:
                lines.append(f"tokenization problems (first {len(shown)} of "
                             f"{tokenized.num_skipped}):")
                lines.extend(f"  {message}" for message in shown)
        if self.statistics is not None:
            lines.extend(self.statistics.summary_lines())
        return "\n".join(lines)


@dataclass
class LoadResult:
    """The loaded records, the source row of each (1-based) and the report describing the load."""

    records: list[PreferenceRecord]
    report: LoadReport
    row_numbers: list[int] = field(default_factory=list)


class _RowError(Exception):
    """A problem with one row; ``field`` is None when the row as a whole is bad."""

    def __init__(self, field: str | None, detail: str, reason: str):
        super().__init__(detail)
        self.field, self.detail, self.reason = field, detail, reason


# ---------------------------------------------------------------------------------------- loading
def load_preferences(source: Any, *, tokenizer: Any = None, on_error: str = "raise",
                     max_records: int | None = None, ties: str = "truncate",
                     allow_empty: bool = False, chat_template: bool = False) -> LoadResult:
    """Load preference records from a file path, a ``datasets.Dataset``-like object or a list.

    Args:
        source: path (str or Path) to .jsonl, .jsonl.gz, .json, .parquet or .csv; an object with
            ``column_names`` that iterates dicts (``datasets.Dataset``); or a list of dicts.
        tokenizer: needed only for conversational rows; must have a ``chat_template``.
        on_error: ``"raise"`` (DataError at the first bad row) or ``"skip"`` (count and continue).
        max_records: stop after this many records have been loaded (None: no limit).
        ties: tie policy for score-ranked rows, see :meth:`PreferenceRecord.from_scores`. Under
            ``"skip"`` a tied row is always skipped (reason ``"tie"``), even with
            ``on_error="raise"``; under ``"error"``/``"truncate"`` a tie is an ordinary row error.
        allow_empty: return a result without records when every row was skipped (for reports);
            by default that is a :class:`DataError`, as are weights that are all 0.
        chat_template: explicit-prompt rows with plain strings are read as one user turn and one
            assistant reply, rendered with the tokenizer's chat template (as conversational rows).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
    if max_records is not None and (isinstance(max_records, bool) or not isinstance(max_records, int)
                                    or max_records < 1):
        raise ValueError(f"max_records must be a positive integer or None, got {max_records!r}")

    name, kind, rows = _open_source(source)
    report = LoadReport(source=name, source_kind=kind)
    records: list[PreferenceRecord] = []
    row_numbers: list[int] = []
    parse_row, format_row = None, None
    try:
        for row_number, row in rows:
            report.rows_read += 1
            where = f"{name} row {row_number}"  # names the row in messages and in record.source
            try:
                if isinstance(row, _RowError):
                    raise row
                if not isinstance(row, Mapping):
                    raise _RowError(None, f"expected an object, got {_type_name(row)}",
                                    "not_an_object")
                row_format = _detect_format(row, kind)
                if report.format is None:
                    if row_format is None:
                        raise DataError(f"{where}: unrecognised row format: found "
                                        f"keys {sorted(str(k) for k in row)}; expected "
                                        f"{_EXPECTED_FORMATS}", source=name, row=row_number)
                    report.format, format_row = row_format, row_number
                    if chat_template and row_format == FORMAT_EXPLICIT:
                        # plain-string prompt and replies read as one user turn and one assistant reply
                        parse_row = _as_chat(_row_parser(FORMAT_CONVERSATIONAL, kind, tokenizer, ties, name), kind)
                    else:
                        parse_row = _row_parser(row_format, kind, tokenizer, ties, name)
                elif row_format is not None and row_format != report.format:
                    raise DataError(
                        f"{where}: row format {row_format} "
                        f"({_FORMAT_DESCRIPTIONS[row_format]}) differs from {report.format} "
                        f"({_FORMAT_DESCRIPTIONS[report.format]}) of row {format_row}; a file "
                        "must use one format", source=name, row=row_number)
                # A row matching no format is parsed as the file's format, which names the
                # missing or ill-typed field.
                record = parse_row(row, where)
                _check_distinct(record)
            except (_RowError, RecordError) as error:
                message = _row_message(where, error.field, error.detail)
                if on_error == "raise" and error.reason not in always_skipped(ties):
                    raise DataError(message, source=name, row=row_number, field=error.field,
                                    reason=error.reason) from None
                _count_skip(report, error.reason, message)
                continue
            records.append(record)
            row_numbers.append(row_number)
            _count_record(report, record)
            if max_records is not None and len(records) >= max_records:
                break
    finally:
        if hasattr(rows, "close"):
            rows.close()  # release the file handle now, also when a row error is raised
    if report.rows_read == 0:
        raise DataError(f"{name}: no data rows found (empty source)", source=name)
    if not allow_empty:
        check_usable(records, report)
    return LoadResult(records=records, report=report, row_numbers=row_numbers)


def always_skipped(ties: str) -> tuple[str, ...]:
    """Skip reasons that never stop a load, whatever ``on_error`` says: rows without a preference."""
    return DEGENERATE_REASONS + (("tie",) if ties == "skip" else ())


def check_usable(records: list[PreferenceRecord], report: LoadReport) -> None:
    """Raise :class:`DataError` when a load left nothing to train on: no records (every row was
    skipped; the message gives the reasons and the first problem) or weights that are all 0."""
    name = report.source
    if not records:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.skipped_by_reason.items()))
        first = f"; first: {report.problems[0]}" if report.problems else ""
        raise DataError(f"{name}: no usable records: all {report.rows_read} rows were skipped "
                        f"({reasons}){first}", source=name)
    if all(record.weight == 0 for record in records):
        raise DataError(f"{name}: every record has weight 0, so there is nothing to learn from; "
                        "field 'weight' must be > 0 for at least one row", source=name,
                        field="weight")


def save_preferences(records: Iterable[PreferenceRecord], path: str | os.PathLike) -> Path:
    """Write records as ranked JSONL (``.jsonl`` or ``.jsonl.gz``); :func:`load_preferences` reads
    them back as equal records. Each line: prompt, responses, ranking, annotator_id, weight, preference."""
    path = Path(path)
    if not path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(f"save_preferences writes .jsonl or .jsonl.gz, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            if not isinstance(record, PreferenceRecord):
                raise TypeError(f"expected PreferenceRecord, got {type(record).__name__}")
            handle.write(json.dumps({
                "prompt": record.prompt, "responses": list(record.responses),
                "ranking": list(record.ranking), "annotator_id": record.annotator_id,
                "weight": record.weight, "preference": record.preference,
            }, ensure_ascii=False) + "\n")
    return path


def split_implicit_prompt(chosen, rejected):
    """Split two full texts (or message lists) into (prompt, chosen_response, rejected_response).

    Follows TRL's ``extract_prompt``: walk the elements until chosen and rejected differ at index
    ``i``; for strings, if ``chosen[i-1]`` is a space step back one so the space starts the
    responses; prompt = ``chosen[:i]``, responses = ``chosen[i:]``, ``rejected[i:]``. When one is a
    prefix of the other TRL's loop ends without diverging at ``i = min(len) - 1``, so the last shared
    element stays with the responses; this is reproduced so rows split identically. One deliberate
    difference: at ``i = 0`` TRL's ``chosen[-1]`` check wraps to the last character; here nothing is
    stepped back and the prompt is empty. Raises ValueError for identical or empty inputs.
    """
    if not chosen or not rejected:
        raise ValueError("chosen and rejected must both be non-empty")
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical")
    shared = _common_prefix_length(chosen, rejected)
    shortest = min(len(chosen), len(rejected))
    if shared < shortest:
        index = shared
        if index > 0 and isinstance(chosen, str) and chosen[index - 1] == " ":
            index -= 1
    else:
        index = shortest - 1
    return chosen[:index], chosen[index:], rejected[index:]


def _common_prefix_length(a, b) -> int:
    # Binary search on slice equality: the comparisons run in C, which matters for long dialogues.
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


# ----------------------------------------------------------------------------------- row formats
def _detect_format(row: Mapping, kind: str) -> str | None:
    """The row's format from its keys, or None when its keys match none."""
    keys = set(row)
    if "responses" in keys:
        return FORMAT_RANKED
    if "chosen" in keys and "rejected" in keys:
        chosen = row["chosen"]
        if kind == "csv" and isinstance(chosen, str):
            chosen = _try_json(chosen)
        # Any list is read as messages, so a malformed message list gets a message-level error;
        # a CSV cell is text unless it decodes to a list of objects (a response may read "[1]").
        conversational = isinstance(chosen, (list, tuple)) and (
            kind != "csv" or not chosen or isinstance(chosen[0], Mapping))
        if "prompt" in keys:
            return FORMAT_CONVERSATIONAL if conversational else FORMAT_EXPLICIT
        return FORMAT_CONVERSATIONAL_IMPLICIT if conversational else FORMAT_IMPLICIT
    return None


def _check_distinct(record: PreferenceRecord) -> None:
    """Two identical responses carry no preference between them: the row is degenerate."""
    seen: dict[str, int] = {}
    for index, response in enumerate(record.responses):
        if response in seen:
            raise _RowError("responses" if record.num_responses > 2 else "rejected",
                            f"responses {seen[response]} and {index} are identical "
                            f"({_short(response, 40)}); a preference needs distinct responses",
                            "identical_responses")
        seen[response] = index


def _row_parser(row_format: str, kind: str, tokenizer: Any, ties: str, name: str):
    if row_format in (FORMAT_CONVERSATIONAL, FORMAT_CONVERSATIONAL_IMPLICIT):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{name}: rows are conversational (lists of messages); rendering them "
                            "needs a tokenizer with a chat template: pass tokenizer=... whose "
                            "chat_template is set", source=name)
    parsers = {
        FORMAT_EXPLICIT: _parse_explicit,
        FORMAT_IMPLICIT: _parse_implicit,
        FORMAT_CONVERSATIONAL: lambda row, source: _parse_conversational(row, source, tokenizer, explicit=True),
        FORMAT_CONVERSATIONAL_IMPLICIT:
            lambda row, source: _parse_conversational(row, source, tokenizer, explicit=False),
        FORMAT_RANKED: lambda row, source: _parse_ranked(row, source, ties),
    }
    parse = parsers[row_format]
    if kind != "csv":
        return parse
    return lambda row, source: parse(_decode_csv_row(row, row_format), source)


def _as_chat(parse_conversational, kind: str):
    """Parse a plain-string explicit row as the conversation user: prompt, assistant: response."""
    def parse(row: Mapping, source: str) -> PreferenceRecord:
        row = dict(row)
        row["prompt"] = [{"role": "user", "content": _text(row, "prompt", allow_empty=True)}]
        for name in ("chosen", "rejected"):
            row[name] = [{"role": "assistant", "content": _text(row, name)}]
        return parse_conversational(row, source)
    if kind == "csv":  # the CSV decoder would read the message lists as JSON text
        raise DataError("data.chat_template applies to JSON/JSONL/Parquet or in-memory rows, not CSV")
    return parse


def _parse_explicit(row: Mapping, source: str) -> PreferenceRecord:
    prompt = _text(row, "prompt", allow_empty=True)
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    return PreferenceRecord.from_pair(prompt, chosen, rejected, *_metadata(row), source=source)


def _parse_implicit(row: Mapping, source: str) -> PreferenceRecord:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    if chosen == rejected:
        raise _RowError("rejected", "chosen and rejected are identical", "identical_responses")
    prompt, chosen_response, rejected_response = split_implicit_prompt(chosen, rejected)
    return PreferenceRecord.from_pair(prompt, chosen_response, rejected_response, *_metadata(row), source=source)


def _parse_conversational(row: Mapping, source: str, tokenizer: Any, *, explicit: bool) -> PreferenceRecord:
    if explicit:
        prompt = _messages(row, "prompt")
        chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    else:
        full_chosen, full_rejected = _messages(row, "chosen"), _messages(row, "rejected")
        if full_chosen == full_rejected:
            raise _RowError("rejected", "chosen and rejected are identical", "identical_responses")
        prompt, chosen, rejected = split_implicit_prompt(full_chosen, full_rejected)
        if not prompt:
            detail = ("one conversation is a prefix of the other, which leaves no prompt"
                      if full_chosen[0] == full_rejected[0] else
                      "chosen and rejected share no leading messages, so there is no prompt")
            raise _RowError("chosen", detail, "no_shared_prompt")
    prompt_text = _render(tokenizer, prompt, "prompt", add_generation_prompt=True)
    responses = []
    for field_name, messages in (("chosen", chosen), ("rejected", rejected)):
        full_text = _render(tokenizer, prompt + messages, field_name, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise _RowError(field_name, "the chat template's rendering of prompt + response does "
                            "not start with its rendering of the prompt alone (with the generation "
                            "prompt), so the response text cannot be separated", "chat_template")
        response = full_text[len(prompt_text):]
        if not response:
            raise _RowError(field_name, "response renders to an empty string", "empty_response")
        responses.append(response)
    return PreferenceRecord.from_pair(prompt_text, responses[0], responses[1], *_metadata(row), source=source)


def _parse_ranked(row: Mapping, source: str, ties: str) -> PreferenceRecord:
    prompt = _text(row, "prompt", allow_empty=True)
    responses = _required(row, "responses")
    if not isinstance(responses, (list, tuple)):
        raise _RowError("responses", f"expected a list of strings, got {_type_name(responses)}",
                        "wrong_type")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise _RowError(f"responses[{i}]", f"expected a string, got {_type_name(response)}",
                            "wrong_type")
        if not response:
            raise _RowError(f"responses[{i}]", "empty string; responses must be non-empty",
                            "empty_response")
    ranking, scores = row.get("ranking"), row.get("scores")
    if ranking is not None and scores is not None:
        raise _RowError("ranking", "give either 'ranking' or 'scores', not both",
                        "ambiguous_ranking")
    annotator_id, weight, preference = _metadata(row)
    if scores is not None:
        if not isinstance(scores, (list, tuple)):
            raise _RowError("scores", f"expected a list of numbers, got {_type_name(scores)}",
                            "wrong_type")
        return PreferenceRecord.from_scores(prompt, responses, scores, ties=ties,
                                            annotator_id=annotator_id, weight=weight,
                                            preference=preference, source=source)
    if ranking is None:
        raise _RowError("ranking", "missing (a ranked row needs 'ranking' or 'scores')",
                        "missing_field")
    if not isinstance(ranking, (list, tuple)):
        raise _RowError("ranking", f"expected a list of indices, got {_type_name(ranking)}",
                        "wrong_type")
    return PreferenceRecord(prompt, tuple(responses), tuple(ranking), annotator_id, weight, preference, source)


# ------------------------------------------------------------------------------- field helpers
def _required(row: Mapping, name: str) -> Any:
    if name not in row:
        raise _RowError(name, "missing", "missing_field")
    return row[name]


def _text(row: Mapping, name: str, *, allow_empty: bool = False) -> str:
    value = _required(row, name)
    if not isinstance(value, str):
        raise _RowError(name, f"expected a string, got {_type_name(value)}", "wrong_type")
    if not value and not allow_empty:
        raise _RowError(name, "empty string; responses must be non-empty", "empty_response")
    return value


def _messages(row: Mapping, name: str) -> list:
    value = _required(row, name)
    if not isinstance(value, (list, tuple)):
        raise _RowError(name, f"expected a list of messages, got {_type_name(value)}", "wrong_type")
    if not value:
        raise _RowError(name, "expected a non-empty list of messages, got []", "empty_response")
    for i, message in enumerate(value):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and message["role"] and isinstance(message.get("content"), str)):
            raise _RowError(f"{name}[{i}]", "expected a message {'role': non-empty str, "
                            f"'content': str}}, got {_short(message)}", "bad_message")
    if name != "prompt" and value[-1]["role"] != "assistant":
        raise _RowError(f"{name}[{len(value) - 1}]", "the last message is the response being "
                        f"judged and must have role 'assistant', got {value[-1]['role']!r}",
                        "bad_role")
    return [dict(message) for message in value]


def _render(tokenizer: Any, messages: list, field_name: str, *, add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as error:  # template errors come from jinja and vary by tokenizer
        raise _RowError(field_name, f"chat template failed: {type(error).__name__}: {error}",
                        "chat_template") from None
    if not isinstance(text, str):
        raise _RowError(field_name, f"chat template returned {_type_name(text)}, expected text",
                        "chat_template")
    return text


def _metadata(row: Mapping) -> tuple[str | None, float, float]:
    annotator_id = row.get("annotator_id")
    if annotator_id is not None:
        if isinstance(annotator_id, bool):
            raise _RowError("annotator_id", "expected a string or integer, got boolean",
                            "wrong_type")
        if isinstance(annotator_id, float) and annotator_id.is_integer():
            annotator_id = int(annotator_id)  # integer ids stored as floats by some writers
        if isinstance(annotator_id, int):
            annotator_id = str(annotator_id)
        if not isinstance(annotator_id, str) or not annotator_id:
            raise _RowError("annotator_id", "expected a non-empty string or an integer, got "
                            f"{_short(annotator_id)}", "wrong_type")
    weight = row.get("weight")
    if weight is None:
        weight = 1.0
    elif isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise _RowError("weight", f"expected a number, got {_type_name(weight)}", "bad_weight")
    preference = row.get("preference")
    if preference is None:
        preference = 1.0
    elif isinstance(preference, bool) or not isinstance(preference, (int, float)):
        raise _RowError("preference", f"expected a number in [0, 1], got {_type_name(preference)}",
                        "bad_preference")
    return annotator_id, weight, preference


def _decode_csv_row(row: Mapping, row_format: str) -> dict:
    """CSV cells are strings: decode JSON list cells and numbers, map empty optional cells to None."""
    if None in row:
        raise _RowError(None, "more cells than header columns", "malformed_csv")
    if any(value is None for value in row.values()):
        raise _RowError(None, "fewer cells than header columns", "malformed_csv")
    decoded = dict(row)
    json_fields = {FORMAT_RANKED: ("responses", "ranking", "scores"),
                   FORMAT_CONVERSATIONAL: ("prompt", "chosen", "rejected"),
                   FORMAT_CONVERSATIONAL_IMPLICIT: ("chosen", "rejected")}.get(row_format, ())
    optional = {"annotator_id", "weight", "preference", "ranking", "scores"}
    for name in decoded.keys() & optional:
        if decoded[name].strip() == "":
            decoded[name] = None
    for name in json_fields:
        if isinstance(decoded.get(name), str):
            try:
                decoded[name] = json.loads(decoded[name])
            except json.JSONDecodeError as error:
                raise _RowError(name, f"expected a JSON list in the CSV cell ({error.msg}), got "
                                f"{_short(decoded[name])}", "bad_csv_cell") from None
    for name in ("weight", "preference"):
        if decoded.get(name) is not None:
            try:
                decoded[name] = float(decoded[name])
            except ValueError:
                raise _RowError(name, f"expected a number, got {_short(decoded[name])}",
                                f"bad_{name}") from None
    return decoded


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string" if value else "empty string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _row_message(where: str, field_name: str | None, detail: str) -> str:
    return f"{where}, field '{field_name}': {detail}" if field_name else f"{where}: {detail}"


def _count_skip(report: LoadReport, reason: str, message: str) -> None:
    report.skipped += 1
    report.skipped_by_reason[reason] = report.skipped_by_reason.get(reason, 0) + 1
    if len(report.problems) < MAX_PROBLEMS:
        report.problems.append(message)


def _count_record(report: LoadReport, record: PreferenceRecord) -> None:
    report.records_loaded += 1
    if record.is_pair:
        report.num_pairs += 1
    elif record.is_full_ranking:
        report.num_rankings += 1
    else:
        report.num_partial += 1
    if record.annotator_id is not None:
        report.num_with_annotator += 1


# ---------------------------------------------------------------------------------------- sources
_SUFFIX_KINDS = ((".jsonl.gz", "jsonl.gz"), (".jsonl", "jsonl"), (".json.gz", "json"),
                 (".json", "json"), (".parquet", "parquet"), (".csv.gz", "csv"), (".csv", "csv"))


def _open_source(source: Any) -> tuple[str, str, Iterator[tuple[int, Any]]]:
    """Return (display name, source kind, iterator of (1-based row number, row or _RowError))."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise DataError(f"{path}: is a directory; expected a data file", source=path.name)
        if not path.is_file():
            raise DataError(f"{path}: no such file", source=path.name)
        lower = path.name.lower()
        kind = next((k for suffix, k in _SUFFIX_KINDS if lower.endswith(suffix)), None)
        if kind is None:
            raise DataError(f"{path.name}: unsupported file type; expected one of "
                            f"{[s for s, _ in _SUFFIX_KINDS]}", source=path.name)
        readers = {"jsonl": _jsonl_rows, "jsonl.gz": _jsonl_rows, "json": _json_rows,
                   "parquet": _parquet_rows, "csv": _csv_rows}
        return path.name, kind, readers[kind](path)
    if isinstance(source, (list, tuple)):
        return "list", "list", enumerate(source, start=1)
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):
        if isinstance(source.column_names, Mapping):
            raise TypeError("got a dataset dictionary (several splits); pass one split, e.g. "
                            "dataset['train']")
        return "dataset", "dataset", enumerate(source, start=1)
    raise TypeError("source must be a path, a datasets.Dataset-like object (iterable of dicts with "
                    f"column_names) or a list of dicts, got {type(source).__name__}")


def _open_text(path: Path):
    # utf-8-sig also reads plain UTF-8 and drops the byte-order mark spreadsheet exports add.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _file_error(path: Path, error: Exception) -> DataError:
    if isinstance(error, UnicodeDecodeError):
        return DataError(f"{path.name}: not valid UTF-8 {_utf8_error_location(path)}: "
                         f"{error.reason}", source=path.name)
    hint = " (truncated compressed file?)" if isinstance(error, EOFError) else ""
    return DataError(f"{path.name}: cannot read file{hint}: {type(error).__name__}: {error}",
                     source=path.name)


def _utf8_error_location(path: Path) -> str:
    """'at line L, byte B' of the first invalid UTF-8 byte (text readers decode whole chunks, so
    the position their error reports is not the file's)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"at line {line}, byte {error.start}"
    return "somewhere in the file"


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    # Lines are decoded one by one so that a line of invalid UTF-8 is a row error, not a file error.
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # the byte-order mark spreadsheet exports add
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield line_number, _RowError(None, f"not valid UTF-8 at byte {error.start} of "
                                                 f"the line: {error.reason}", "invalid_utf8")
                    continue
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are not rows
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield line_number, _RowError(None, f"invalid JSON: {error.msg} at column "
                                                 f"{error.colno}", "invalid_json")
                except RecursionError:
                    yield line_number, _RowError(None, "invalid JSON: nested too deeply",
                                                 "invalid_json")
    except (OSError, EOFError) as error:
        raise _file_error(path, error) from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with _open_text(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name}: invalid JSON at line {error.lineno} column {error.colno}: "
                        f"{error.msg}", source=path.name) from None
    except RecursionError:
        raise DataError(f"{path.name}: invalid JSON: nested too deeply", source=path.name) from None
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise _file_error(path, error) from None
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a JSON list of objects or {{\"data\": [...]}}, got "
                        f"{_type_name(data)}", source=path.name)
    return enumerate(data, start=1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as parquet  # imported lazily: only parquet users pay for it

    try:
        parquet_file = parquet.ParquetFile(path)
        row_number = 0
        for batch in parquet_file.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row_number += 1
                yield row_number, row
    except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
        raise _file_error(path, error) from None


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long dialogues exceed the 128 KiB default
    try:
        with _open_text(path) as handle:
            for row_number, row in enumerate(csv.DictReader(handle), start=1):
                yield row_number, row
    except csv.Error as error:
        raise DataError(f"{path.name}: malformed CSV: {error}", source=path.name) from None
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise _file_error(path, error) from None
    finally:
        csv.field_size_limit(previous_limit)
