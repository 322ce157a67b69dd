"""Check a preference data file before training: what loads, what is skipped and why, and shape.

``pluralign validate-data FILE`` loads every row with ``on_error="skip"``, prints the load summary
(counts by record kind, skips by reason, the first problems naming file, row and field) followed by
data set statistics, and exits 0 when every row loaded, 1 when any row was skipped and 2 when the
file cannot be used at all (unreadable, unknown format, empty).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pluralign.data.loaders import MAX_PROBLEMS, DataError, LoadReport, load_preferences
from pluralign.data.records import TIE_POLICIES, PreferenceRecord


@dataclass
class DatasetStatistics:
    """Shape of a loaded data set.

    ``num_responses_distribution`` maps K to the number of records with K responses. Character
    statistics count Python string characters; response statistics run over every response of every
    record. ``num_duplicate_records`` counts records equal in every field to an earlier record;
    ``num_records_with_identical_responses`` counts records holding the same response text twice
    (a preference between identical texts carries no signal).
    """

    num_responses_distribution: dict[int, int] = field(default_factory=dict)
    prompt_chars_mean: float = 0.0
    prompt_chars_max: int = 0
    response_chars_mean: float = 0.0
    response_chars_max: int = 0
    num_annotators: int = 0
    num_duplicate_records: int = 0
    num_records_with_identical_responses: int = 0

    def summary_lines(self) -> list[str]:
        k_distribution = ", ".join(f"K={k}: {n}" for k, n in
                                   sorted(self.num_responses_distribution.items()))
        return [
            "statistics:",
            f"  responses per record: {k_distribution or 'none'}",
            f"  prompt characters: mean {self.prompt_chars_mean:.1f}, max {self.prompt_chars_max}",
            f"  response characters: mean {self.response_chars_mean:.1f}, "
            f"max {self.response_chars_max}",
            f"  annotators: {self.num_annotators}",
            f"  duplicate records: {self.num_duplicate_records}",
            f"  records with identical responses: {self.num_records_with_identical_responses}",
        ]


def compute_statistics(records: list[PreferenceRecord]) -> DatasetStatistics:
    """Statistics of ``records`` (see :class:`DatasetStatistics`); all zero for an empty list."""
    stats = DatasetStatistics()
    if not records:
        return stats
    counts = Counter(r.num_responses for r in records)
    stats.num_responses_distribution = dict(sorted(counts.items()))
    prompt_lengths = [len(r.prompt) for r in records]
    response_lengths = [len(text) for r in records for text in r.responses]
    stats.prompt_chars_mean = sum(prompt_lengths) / len(prompt_lengths)
    stats.prompt_chars_max = max(prompt_lengths)
    stats.response_chars_mean = sum(response_lengths) / len(response_lengths)
    stats.response_chars_max = max(response_lengths)
    stats.num_annotators = len({r.annotator_id for r in records if r.annotator_id is not None})
    stats.num_duplicate_records = len(records) - len(set(records))
    stats.num_records_with_identical_responses = sum(
        len(set(r.responses)) < r.num_responses for r in records)
    return stats


def validate_file(path: Any, *, tokenizer: Any = None, ties: str = "truncate") -> LoadReport:
    """Load ``path`` with ``on_error="skip"`` and return its report with ``statistics`` filled.

    Raises :class:`DataError` only for problems with the file as a whole (unreadable, unknown row
    format, no rows); every row-level problem is counted in the report instead.
    """
    result = load_preferences(path, tokenizer=tokenizer, on_error="skip", ties=ties)
    result.report.statistics = compute_statistics(result.records)
    return result.report


def validate_command(args: argparse.Namespace) -> int:
    """CLI entry: print the validation summary; exit code 0 clean, 1 rows skipped, 2 file error.

    ``args`` has ``path``, ``ties`` and optionally ``max_problems`` (problems listed, default 20)
    and ``tokenizer`` (a name or local path for ``AutoTokenizer.from_pretrained``, needed for
    conversational files).
    """
    max_problems = getattr(args, "max_problems", None)
    max_problems = MAX_PROBLEMS if max_problems is None else max_problems
    tokenizer = None
    tokenizer_name = getattr(args, "tokenizer", None)
    if tokenizer_name:
        from transformers import AutoTokenizer  # heavy import, only when asked for

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
        except (OSError, ValueError) as error:
            print(f"error: cannot load tokenizer {tokenizer_name!r}: {error}", file=sys.stderr)
            return 2
    try:
        report = validate_file(args.path, tokenizer=tokenizer, ties=args.ties)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary(max_problems=max_problems))
    return 1 if report.skipped else 0


def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``validate-data FILE [--ties ...] [--max-problems N] [--tokenizer NAME]``."""
    parser = subparsers.add_parser(
        "validate-data",
        help="check a preference data file: loadable rows, skipped rows by reason, statistics",
        description="Load a preference data file (jsonl, jsonl.gz, json, parquet, csv), report "
                    "every skipped row by reason and the data set's shape. Exit code 0: all rows "
                    "load; 1: some rows were skipped; 2: the file cannot be used.",
    )
    parser.add_argument("path", metavar="FILE", help="preference data file")
    parser.add_argument("--ties", choices=TIE_POLICIES, default="truncate",
                        help="how tied scores become rankings (default: truncate at the first tie)")
    parser.add_argument("--max-problems", type=int, default=MAX_PROBLEMS,
                        help=f"problem messages to list (default: {MAX_PROBLEMS}; at most "
                             f"{MAX_PROBLEMS} are kept)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer name or path whose chat template renders "
                             "conversational rows")
    parser.set_defaults(func=validate_command)
    return parser
